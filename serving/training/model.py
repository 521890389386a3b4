"""The detector: a small ResNet / VGG style backbone, a light feature pyramid to stride 4, CenterNet heads.

Why CenterNet (objects as points): the defects are small to medium, rarely overlapping boxes of four
classes; a per-class centre heatmap at stride 4 finds 8-pixel pits on a 256 image, needs no anchors to
tune, and its decoding (3 x 3 max-pool peaks, top-k) is a few lines of numpy with no box NMS -- which is
what lets the served app (ONNX network + numpy decode) reproduce the trainer's detections exactly.

Outputs, all at stride 4 (:data:`serving.training.detector_ops.STRIDE`):

- ``heatmap``: N x C x H/4 x W/4 class probabilities (sigmoid inside the network),
- ``size``: N x 2 x H/4 x W/4, log(box width / 4) and log(box height / 4),
- ``offset``: N x 2 x H/4 x W/4, the centre's position inside its cell.

``net_model`` picks the block type and depth ratios (res18/res34 basic blocks, res50/res101 bottlenecks,
vgg16 plain 3 x 3 convs, "resnet" = res18); ``model_scope`` picks width and depth multipliers. SMALL
keeps one block per stage at a quarter of ResNet's width, which is what trains in minutes on 2 CPU cores.
"""
import math

import torch
from torch import nn

# Blocks per stage (stages at strides 4, 8, 16, 32) and block kind of each net_model.
_FAMILIES = {
    "res18": ("basic", (2, 2, 2, 2)),
    "res34": ("basic", (3, 4, 6, 3)),
    "res50": ("bottleneck", (3, 4, 6, 3)),
    "res101": ("bottleneck", (3, 4, 23, 3)),
    "vgg16": ("plain", (2, 3, 3, 3)),  # VGG16's 13 convs: 2 in the stem, then 2-3-3-3 (last stage 3 + extra)
}
_FAMILIES["resnet"] = _FAMILIES["res18"]

# Stage widths at scope 1.0, and (width multiplier, depth multiplier) per scope.
_BASE_WIDTHS = (64, 96, 128, 192)
_SCOPES = {"SMALL": (0.5, 0.0), "NORMAL": (1.0, 0.5), "BIG": (1.5, 1.0)}
# Feature channels of the pyramid and heads, per scope.
_NECK_WIDTH = {"SMALL": 32, "NORMAL": 64, "BIG": 96}
# Initial heatmap bias: sigmoid(-2.19) = 0.1, the CenterNet prior that keeps the focal loss stable early on.
_HEATMAP_PRIOR_BIAS = -math.log((1 - 0.1) / 0.1)


def _conv_bn_relu(in_channels, out_channels, kernel=3, stride=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3 x 3 convs and a shortcut (1 x 1 projection when the shape changes)."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, out_channels, 3, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1 x 1 reduce to a quarter, 3 x 3, 1 x 1 expand, plus the shortcut."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        mid = max(8, out_channels // 4)
        self.body = nn.Sequential(
            _conv_bn_relu(in_channels, mid, 1),
            _conv_bn_relu(mid, mid, 3, stride),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class PlainBlock(nn.Module):
    """VGG style: one 3 x 3 conv (strided instead of a max-pool when it starts a stage)."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.body = _conv_bn_relu(in_channels, out_channels, 3, stride)

    def forward(self, x):
        return self.body(x)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck, "plain": PlainBlock}


def architecture(net_model, model_scope):
    """(block kind, blocks per stage, stage widths, neck width) of a net_model / model_scope pair."""
    kind, depths = _FAMILIES[net_model]
    width_mult, depth_mult = _SCOPES[model_scope]
    # Depth multiplier 0 means one block per stage; otherwise scale the family's depths (at least 1).
    stage_depths = tuple(1 if depth_mult == 0 else max(1, round(d * depth_mult)) for d in depths)
    widths = tuple(max(16, int(round(w * width_mult / 8)) * 8) for w in _BASE_WIDTHS)
    if kind == "bottleneck":
        widths = tuple(w * 2 for w in widths)  # bottlenecks are thin inside; widen the outside to compensate
    return kind, stage_depths, widths, _NECK_WIDTH[model_scope]


class CenterNet(nn.Module):
    """Backbone (stem to stride 4, four stages to stride 32), top-down pyramid back to stride 4, heads."""

    def __init__(self, n_classes, net_model="res18", model_scope="SMALL"):
        super().__init__()
        kind, depths, widths, neck = architecture(net_model, model_scope)
        block = _BLOCKS[kind]
        stem_width = max(16, widths[0] // 2)
        # Two strided 3 x 3 convs reach stride 4 cheaply; a 7 x 7 conv + max-pool costs more on a CPU.
        self.stem = nn.Sequential(_conv_bn_relu(3, stem_width, 3, 2), _conv_bn_relu(stem_width, widths[0], 3, 2))
        stages = []
        in_channels = widths[0]
        for index, (depth, width) in enumerate(zip(depths, widths)):
            layers = []
            for layer in range(depth):
                stride = 2 if layer == 0 and index > 0 else 1
                layers.append(block(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.laterals = nn.ModuleList(nn.Conv2d(w, neck, 1) for w in widths)
        self.smooth = _conv_bn_relu(neck, neck, 3)
        self.head_features = _conv_bn_relu(neck, neck, 3)
        # Image-wide context for the heads: the mean of the head features, mapped to a per-channel bias. A line
        # that is one of many across the surface (weave, grain, veins) and a line that is alone (a crack) look
        # the same locally; the context lets the heads tell them apart.
        self.context = nn.Sequential(nn.Conv2d(neck, neck, 1), nn.ReLU(inplace=True), nn.Conv2d(neck, neck, 1))
        self.heatmap = nn.Conv2d(neck, n_classes, 1)
        self.regression = nn.Conv2d(neck, 4, 1)  # log width, log height, offset x, offset y
        nn.init.constant_(self.heatmap.bias, _HEATMAP_PRIOR_BIAS)
        nn.init.normal_(self.regression.weight, std=0.01)
        nn.init.zeros_(self.regression.bias)
        self.n_classes = n_classes

    def forward(self, image, logits=False):
        """(heatmap, size, offset); the heatmap as probabilities, or as logits when ``logits`` is true.

        Training asks for logits (the focal loss wants a numerically stable log-sigmoid); export and
        evaluation use probabilities. A flag rather than a second method, so a DDP wrapper (which only
        synchronises through ``forward``) works for both.
        """
        x = self.stem(image)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        top = self.laterals[-1](features[-1])
        for feature, lateral in zip(reversed(features[:-1]), list(self.laterals)[-2::-1]):
            # Nearest upsampling by exactly 2 exports to a plain ONNX Resize and is cheap on a CPU.
            top = lateral(feature) + nn.functional.interpolate(top, scale_factor=2.0, mode="nearest")
        x = self.head_features(self.smooth(top))
        x = x + self.context(x.mean(dim=(2, 3), keepdim=True))
        heatmap = self.heatmap(x)
        regression = self.regression(x)
        return (heatmap if logits else torch.sigmoid(heatmap)), regression[:, :2], regression[:, 2:]


def build_model(params, n_classes):
    """The :class:`CenterNet` of a :class:`~serving.training.params.TrainParams`."""
    return CenterNet(n_classes, params.net_model, params.model_scope)
