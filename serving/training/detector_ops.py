"""Preprocessing and detection decoding in numpy: the one copy used by training, evaluation and serving.

The trainer evaluates its checkpoints with these functions, and :mod:`serving.training.export` copies this
very file next to the generated app's ``eval.py``. The network (and so the ONNX graph) stops at its raw
outputs -- a per-class centre heatmap, a log box size and a sub-cell centre offset, all at ``STRIDE`` --
and everything after that happens here, which is what makes the served detections equal the trainer's.

This module is copied into app folders, so it imports only numpy, OpenCV and the eval API (``evals.utils``),
which every served app has.
"""
import cv2
import numpy as np

from evals.utils.image import square_bgr

#: Output stride of the network: one heatmap cell per STRIDE x STRIDE input pixels.
STRIDE = 4
DEFAULT_SCORE_THRESHOLD = 0.05
DEFAULT_TOP_K = 100

# Floor for the per-image standard deviation, so a flat image is not blown up into noise.
_MIN_STD = 8.0
# Box sizes are predicted as log(size / STRIDE); clipping keeps exp() finite on a wild output.
_MAX_LOG_SIZE = 8.0


def preprocess(image_bgr, input_size):
    """One BGR uint8 image (H x W x 3) as the float32 3 x S x S network input, and its (sx, sy) scale.

    Steps: resize to S x S (area when shrinking, linear otherwise), BGR -> RGB, then per-image, per-channel
    standardisation. Standardising each image on its own (rather than with fixed dataset statistics) takes
    away the overall brightness and contrast of the surface, which is what changes most between the
    training surfaces and unseen ones. ``(sx, sy)`` map network-input pixels back to image pixels.
    """
    shape = np.shape(image_bgr)
    image = square_bgr(image_bgr, input_size)  # raises on a malformed image before the shape is read
    height, width = shape[:2]
    mean, std = cv2.meanStdDev(image)  # per BGR channel, float64; one fast pass over the uint8 pixels
    out = np.empty((3, input_size, input_size), np.float32)
    # Channel by channel straight into the CHW output (RGB order): no float HWC temporaries, no transpose.
    for channel, plane in enumerate(reversed(cv2.split(image))):
        bgr_index = 2 - channel
        inverse = np.float32(1.0 / max(float(std[bgr_index, 0]), _MIN_STD))
        np.multiply(plane, inverse, out=out[channel], casting="unsafe")
        out[channel] -= np.float32(float(mean[bgr_index, 0]) * inverse)
    return out, (width / input_size, height / input_size)


def _max_pool3(heat):
    """3 x 3 max filter (stride 1, edge cells see only their in-range neighbours) over the last two axes."""
    padded = np.pad(heat, [(0, 0)] * (heat.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    height, width = heat.shape[-2:]
    out = padded[..., 0:height, 0:width].copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, padded[..., dy:dy + height, dx:dx + width], out=out)
    return out


def decode(heatmap, size, offset, scale=(1.0, 1.0), score_threshold=DEFAULT_SCORE_THRESHOLD,
           top_k=DEFAULT_TOP_K, image_size=None):
    """Detections of one image from its network outputs.

    ``heatmap`` is C x H x W class probabilities (sigmoid already applied in the network), ``size`` 2 x H x W
    log(width / STRIDE), log(height / STRIDE), ``offset`` 2 x H x W the centre's sub-cell position. A peak is
    a cell equal to the 3 x 3 maximum around it (the max-pool "NMS" of CenterNet); the ``top_k`` best peaks
    scoring at least ``score_threshold`` become boxes, scaled by ``scale`` (sx, sy) to image pixels and
    clipped to ``image_size`` (width, height) when given.

    Returns (boxes float32 K x 4 as x1, y1, x2, y2; scores float32 K; class indices int64 K), best first.
    Ties are broken by cell order (a stable sort), so equal inputs always give the same list.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    n_classes, height, width = heatmap.shape
    peaks = (heatmap == _max_pool3(heatmap)) & (heatmap >= score_threshold)
    flat = np.flatnonzero(peaks)
    scores = heatmap.reshape(-1)[flat]
    order = np.argsort(-scores, kind="stable")[:top_k]
    flat, scores = flat[order], scores[order]
    classes, rest = np.divmod(flat, height * width)
    ys, xs = np.divmod(rest, width)
    size = np.clip(np.asarray(size, dtype=np.float32), -_MAX_LOG_SIZE, _MAX_LOG_SIZE)
    offset = np.asarray(offset, dtype=np.float32)
    centre_x = (xs + offset[0, ys, xs]) * STRIDE
    centre_y = (ys + offset[1, ys, xs]) * STRIDE
    half_w = np.exp(size[0, ys, xs]) * (STRIDE / 2.0)
    half_h = np.exp(size[1, ys, xs]) * (STRIDE / 2.0)
    sx, sy = scale
    boxes = np.stack([(centre_x - half_w) * sx, (centre_y - half_h) * sy,
                      (centre_x + half_w) * sx, (centre_y + half_h) * sy], axis=1).astype(np.float32)
    if image_size is not None:
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, image_size[0])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, image_size[1])
    return boxes.reshape(-1, 4), scores.astype(np.float32), classes.astype(np.int64)


def _hflip(a):
    return a[..., ::-1]


def _vflip(a):
    return a[..., ::-1, :]


def _rot180(a):
    return a[..., ::-1, ::-1]


def _rot90(a):
    return np.rot90(a, 1, axes=(-2, -1))


def _rot270(a):
    return np.rot90(a, -1, axes=(-2, -1))


#: Test-time augmentation (``custom_params.tta``): transforms of the square network input, each with the inverse
#: that maps its heatmap back onto the original's cells exactly (over the last two axes; S is a multiple of
#: STRIDE, so a flipped or turned input flips or turns the cell grid).
TTA_TRANSFORMS = {"hflip": (_hflip, _hflip), "vflip": (_vflip, _vflip), "rot180": (_rot180, _rot180),
                  "rot90": (_rot90, _rot270), "rot270": (_rot270, _rot90)}


def forward(session, input_name, output_names, tensors, tta=()):
    """(heatmap, size, offset) of a list of 3 x S x S inputs, from one ONNX Runtime call.

    With ``tta`` (names from :data:`TTA_TRANSFORMS`) the same call also runs each transform of every input, and
    an input's heatmap is the mean of its own and of its transforms' mapped back: a defect must look like one
    from several directions, which damps responses to one-sided texture. Sizes and offsets stay the plain
    input's (an offset is not invariant under a flip, and the heatmap alone chooses the peaks).
    """
    batch = np.stack(tensors)
    if tta:
        batch = np.concatenate([batch] + [np.ascontiguousarray(TTA_TRANSFORMS[name][0](batch)) for name in tta])
    heatmap, size, offset = session.run(output_names, {input_name: batch})
    if tta:
        n = len(tensors)
        merged = heatmap[:n].copy()
        for k, name in enumerate(tta, start=1):
            merged += TTA_TRANSFORMS[name][1](heatmap[k * n:(k + 1) * n])
        heatmap, size, offset = merged / np.float32(1 + len(tta)), size[:n], offset[:n]
    return heatmap, size, offset


def check_tta(value, where):
    """``value`` as a tuple of distinct :data:`TTA_TRANSFORMS` names; ValueError naming ``where`` otherwise."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"{where} must be a list of transform names, got {value!r}")
    unknown = [name for name in value if name not in TTA_TRANSFORMS]
    if unknown:
        raise ValueError(f"{where}: unknown transform {unknown[0]!r}; use some of {sorted(TTA_TRANSFORMS)}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} names a transform twice: {value!r}")
    return tuple(value)


def check_fraction(value, where):
    """`value` as a float in [0, 1] (a score threshold); ValueError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{where} must be a number in [0, 1], got {value!r}")
    return float(value)


def app_settings(custom_params):
    """The detector settings of an app's ``custom_params``, checked: ``{"classes", "input_size",
    "score_threshold", "top_k", "tta"}`` (defaults DEFAULT_SCORE_THRESHOLD, DEFAULT_TOP_K and no test-time
    augmentation). ValueError names the bad key; the apps answer it as 400 at load."""
    classes = custom_params.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"custom_params.classes must be a list of class names, got {classes!r}")
    input_size = custom_params.get("input_size")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
        raise ValueError(f"custom_params.input_size must be an integer >= 32, got {input_size!r}")
    top_k = custom_params.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"custom_params.top_k must be a positive integer, got {top_k!r}")
    score_threshold = check_fraction(custom_params.get("score_threshold", DEFAULT_SCORE_THRESHOLD),
                                     "custom_params.score_threshold")
    tta = check_tta(custom_params.get("tta", []), "custom_params.tta")
    return {"classes": list(classes), "input_size": input_size, "score_threshold": score_threshold, "top_k": top_k,
            "tta": tta}


def check_model_input(session, input_size, n_classes):
    """ValueError unless an ONNX Runtime session of this detector takes 3 x input_size x input_size images and
    predicts n_classes heatmaps (a model rebuilt with other settings fails at load, not on a request)."""
    model_input = session.get_inputs()[0]
    if list(model_input.shape[1:]) != [3, input_size, input_size]:
        raise ValueError(f"model input has shape {model_input.shape}, custom_params.input_size is {input_size}")
    heatmap = session.get_outputs()[0]
    if isinstance(heatmap.shape[1], int) and heatmap.shape[1] != n_classes:
        raise ValueError(f"the model detects {heatmap.shape[1]} classes, custom_params.classes lists {n_classes}")


def to_detections(boxes, scores, classes, class_names):
    """The app's result list: ``[{"box": [x1, y1, x2, y2], "score": float, "class": name}, ...]``."""
    return [
        {"box": [float(v) for v in box], "score": float(score), "class": class_names[int(index)]}
        for box, score, index in zip(boxes, scores, classes)
    ]
