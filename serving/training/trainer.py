"""Train the detector: :func:`train` with a reporter, validation mAP per snapshot, stop/pause/resume, DDP.

Interface. ``train(params, train_coco, train_images, val_coco, val_images, reporter, init_state=...)``.
Images are BGR uint8 numpy arrays in the order of their COCO dict's ``images`` list, so the caller decides
where data lives (a dataset store, a folder, :mod:`serving.synth` in memory). The reporter is any object
with three methods:

- ``progress(record)``: a :class:`TrainRecord` every ``snapshot_interval`` iterations and at the end;
- ``checkpoint(iteration, state_bytes, metrics)``: a checkpoint (bytes of everything needed to resume or
  export) and its validation metrics (``map50``, ``map``, ``per_class``, ...; ``evaluated`` False for the
  quick checkpoint taken on a stop); validation is scored by :func:`serving.jobs.evaluation.evaluate`, the
  evaluation of TEST tasks, so the two report the same mAP for the same model and images;
- ``should_stop()``: polled every iteration; truthy stops training within one iteration after a final,
  unscored checkpoint. Pause is a stop followed later by a resume from that checkpoint.

Determinism and resume. The sample order of iteration ``i`` comes from per-epoch permutations seeded by
``(seed, epoch)``, and each sample's augmentation from ``(seed, i, position in batch)``; nothing depends on
earlier iterations, so a checkpoint only has to hold the model, the optimizer and the iteration number
(plus torch's RNG state for completeness). The learning rate is a pure function of the iteration.

Several processes (``device_num > 1``): the calling process is rank 0 (it talks to the reporter and
evaluates); ranks 1.. are spawned and join over torch.distributed (gloo on CPU, NCCL on GPU). Each rank
takes an equal slice of the same global batch and the losses are normalised by the global object count,
so the gradient equals the single-process one up to batch-norm statistics (per-rank batches) and
floating-point summation order.
"""
import io
import math
import os
import socket
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from evals.utils.image import as_bgr
from serving.jobs.evaluation import evaluate as evaluate_detections
from serving.training import augment, detector_ops
from serving.training.model import build_model
from serving.training.params import TrainParams

CHECKPOINT_FORMAT = "serving.training.checkpoint/2"  # 2: the network has the image-context block
# Evaluation: a lower threshold than serving would use costs little and lets mAP see the whole PR curve.
EVAL_SCORE_THRESHOLD = 0.01
EVAL_BATCH = 32
# Gaussian spread of the centre heatmap relative to the box side (TTFNet's elliptical Gaussian, alpha 0.54):
# sigma = alpha * side / 6, so long thin scratches get long thin peaks.
_GAUSSIAN_ALPHA = 0.54
# Focal loss exponents of CenterNet: alpha on the prediction, beta on the penalty reduction near centres.
_FOCAL_ALPHA = 2.0
_FOCAL_BETA = 4.0
_SIZE_LOSS_WEIGHT = 1.0
_OFFSET_LOSS_WEIGHT = 1.0
_GRAD_CLIP_NORM = 10.0
# Final learning rate of the cosine schedule as a fraction of the initial one.
_FINAL_LR_FRACTION = 0.02


@dataclass
class TrainRecord:
    """One progress report: the platform's fields (record_time, cur_iter_num, loss, mAP, lr, max_iter_num,
    model_name) plus elapsed time and throughput."""

    record_time: float
    cur_iter_num: int
    loss: float
    map50: float | None
    lr: float
    max_iter_num: int
    model_name: str
    map: float | None = None
    elapsed_s: float = 0.0
    images_per_s: float = 0.0


@dataclass
class TrainResult:
    """What :func:`train` returns: the last iteration done, whether it stopped early, the last metrics."""

    iteration: int
    stopped: bool
    metrics: dict = field(default_factory=dict)
    state: bytes = b""


def model_name(params, iteration):
    """The checkpoint's model file name, e.g. ``resnet_1000.ckpt`` / ``res18_500.ckpt``."""
    return f"{params.net_model}_{iteration}.ckpt"


def class_names(coco):
    """Category names ordered by category id: class index k of the network is the k-th of these."""
    return [str(c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"])]


def _category_ids(coco):
    """Category ids in class-index order (the order of :func:`class_names`)."""
    return [c["id"] for c in sorted(coco["categories"], key=lambda c: c["id"])]


def check_categories(coco, which):
    """ValueError when two categories share a name or an id: a model's classes are matched to a dataset's
    categories by name (TEST tasks, fine-tuning), so a repeated name would send one class's detections to
    the other category. The store refuses such datasets; this guards data handed to train() directly."""
    names, ids = class_names(coco), _category_ids(coco)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{which} categories repeat the name(s) {repeated}: each class needs a name of its own")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{which} categories repeat an id: {ids}")


def learning_rate(params, iteration):
    """Linear warm-up to ``params.lr``, then cosine decay to a small fraction of it at ``max_iters``."""
    warmup = params.warmup
    if iteration < warmup:
        return params.lr * (iteration + 1) / warmup
    progress = (iteration - warmup) / max(1, params.max_iters - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return params.lr * (_FINAL_LR_FRACTION + (1 - _FINAL_LR_FRACTION) * cosine)


# ---------------------------------------------------------------------------------------------- data


def _as_bgr(image, index):
    """A training image as the augmentations take it: H x W x 3 BGR uint8. Grey (H x W) and BGRA images are
    converted, as the served app's preprocessing converts them; anything else is a ValueError naming the image."""
    try:
        return as_bgr(image)
    except ValueError as error:
        raise ValueError(f"training image {index}: {error}") from None


class _Samples:
    """Training images with their boxes (x1, y1, x2, y2 float32) and class indices, in COCO image order."""

    def __init__(self, coco, images):
        if len(coco["images"]) != len(images):
            raise ValueError(f"COCO lists {len(coco['images'])} images but {len(images)} images were given")
        index_of_category = {c["id"]: k for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))}
        by_image = {image["id"]: [] for image in coco["images"]}
        for annotation in coco["annotations"]:
            if annotation.get("iscrowd"):
                continue
            by_image[annotation["image_id"]].append(annotation)
        self.images = [_as_bgr(image, k) for k, image in enumerate(images)]
        self.boxes, self.labels = [], []
        self.defect_free = []  # indices of images without a box: the textures augment.texture_mix lays over others
        for meta in coco["images"]:
            annotations = by_image[meta["id"]]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in annotations], dtype=np.float32).reshape(-1, 4)
            if not len(boxes):
                self.defect_free.append(len(self.boxes))
            self.boxes.append(boxes)
            self.labels.append(np.array([index_of_category[a["category_id"]] for a in annotations], np.int64))

    def __len__(self):
        return len(self.images)


def _batch_indices(n_samples, batch_size, iteration, seed):
    """Dataset indices of the global batch of ``iteration``: a stream of per-epoch permutations."""
    start = iteration * batch_size
    indices = []
    while len(indices) < batch_size:
        epoch, offset = divmod(start + len(indices), n_samples)
        permutation = np.random.default_rng([seed, epoch]).permutation(n_samples)
        take = min(batch_size - len(indices), n_samples - offset)
        indices.extend(permutation[offset:offset + take].tolist())
    return indices


def _targets(boxes, labels, n_classes, out_size):
    """CenterNet targets of one sample whose boxes are in network-input pixels.

    Returns (heatmap C x H x W, centre cell flat indices K, size targets K x 2 log(side / STRIDE),
    offset targets K x 2). Each object's elliptical Gaussian is max-merged into its class channel, and its
    centre cell is set to exactly 1 (the focal loss's positive).
    """
    stride = detector_ops.STRIDE
    heatmap = np.zeros((n_classes, out_size, out_size), np.float32)
    cells, sizes, offsets = [], [], []
    grid = np.arange(out_size, dtype=np.float32)
    for (x1, y1, x2, y2), label in zip(boxes, labels):
        width, height = x2 - x1, y2 - y1
        if width <= 0 or height <= 0:
            continue
        cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
        ix, iy = min(int(cx), out_size - 1), min(int(cy), out_size - 1)
        sigma_x = max(_GAUSSIAN_ALPHA * width / stride / 6, 0.5)
        sigma_y = max(_GAUSSIAN_ALPHA * height / stride / 6, 0.5)
        gx = np.exp(-((grid - ix) ** 2) / (2 * sigma_x ** 2))
        gy = np.exp(-((grid - iy) ** 2) / (2 * sigma_y ** 2))
        np.maximum(heatmap[label], gy[:, None] * gx[None, :], out=heatmap[label])
        heatmap[label, iy, ix] = 1.0
        cells.append(iy * out_size + ix)
        sizes.append((math.log(width / stride), math.log(height / stride)))
        offsets.append((cx - ix, cy - iy))
    return (heatmap, np.array(cells, np.int64), np.array(sizes, np.float32).reshape(-1, 2),
            np.array(offsets, np.float32).reshape(-1, 2))


def _make_batch(samples, indices, positions, params, n_classes, iteration):
    """Augmented, preprocessed inputs and targets for the samples at ``positions`` of the global batch."""
    size = params.input_size
    out_size = size // detector_ops.STRIDE
    inputs = np.empty((len(positions), 3, size, size), np.float32)
    heatmaps = np.empty((len(positions), n_classes, out_size, out_size), np.float32)
    batch_ids, cells, sizes, offsets = [], [], [], []
    for slot, position in enumerate(positions):
        index = indices[position]
        rng = np.random.default_rng([params.seed, iteration, position])
        image, boxes = augment.expand(samples.images[index], samples.boxes[index], params.expansions, rng)
        if samples.defect_free and rng.random() < params.texture_mix:
            texture = samples.images[samples.defect_free[int(rng.integers(len(samples.defect_free)))]]
            image = augment.texture_mix(image, texture, rng)
        if rng.random() < params.photometric:
            image = augment.photometric(image, rng)
        inputs[slot], (sx, sy) = detector_ops.preprocess(image, size)
        scaled = boxes / np.array([sx, sy, sx, sy], np.float32)
        heatmaps[slot], cell, box_size, offset = _targets(scaled, samples.labels[index], n_classes, out_size)
        batch_ids.append(np.full(len(cell), slot, np.int64))
        cells.append(cell)
        sizes.append(box_size)
        offsets.append(offset)
    return (torch.from_numpy(inputs), torch.from_numpy(heatmaps), torch.from_numpy(np.concatenate(batch_ids)),
            torch.from_numpy(np.concatenate(cells)), torch.from_numpy(np.concatenate(sizes)),
            torch.from_numpy(np.concatenate(offsets)))


# ---------------------------------------------------------------------------------------------- loss


def _losses(outputs, heatmap_target, batch_ids, cells, size_target, offset_target):
    """Summed (not averaged) focal, size and offset losses; the caller divides by the object count."""
    logits, size, offset = outputs
    probability = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    log_p = nn.functional.logsigmoid(logits).clamp(min=math.log(1e-4))
    log_not_p = nn.functional.logsigmoid(-logits).clamp(min=math.log(1e-4))
    positive = heatmap_target.eq(1).float()
    negative_weight = (1 - heatmap_target).pow(_FOCAL_BETA)
    focal = -(positive * (1 - probability).pow(_FOCAL_ALPHA) * log_p
              + (1 - positive) * negative_weight * probability.pow(_FOCAL_ALPHA) * log_not_p).sum()
    if len(cells):
        n, _, height, width = size.shape
        flat_size = size.permute(0, 2, 3, 1).reshape(n * height * width, 2)
        flat_offset = offset.permute(0, 2, 3, 1).reshape(n * height * width, 2)
        rows = batch_ids * (height * width) + cells
        size_loss = nn.functional.l1_loss(flat_size[rows], size_target, reduction="sum")
        offset_loss = nn.functional.l1_loss(flat_offset[rows], offset_target, reduction="sum")
    else:
        size_loss = offset_loss = size.sum() * 0  # keeps the graph (and DDP's gradient hooks) intact
    return focal, _SIZE_LOSS_WEIGHT * size_loss + _OFFSET_LOSS_WEIGHT * offset_loss


# ---------------------------------------------------------------------------------------------- evaluation


def coco_detections(image_id, boxes, scores, labels, category_ids):
    """One image's `predict` output as COCO detections (bbox [x, y, w, h]); `category_ids[label]` is the
    category id of class index `label`."""
    return [{"image_id": image_id, "category_id": category_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": score}
            for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]


def predict(model, images, input_size, score_threshold=EVAL_SCORE_THRESHOLD, top_k=detector_ops.DEFAULT_TOP_K,
            device="cpu"):
    """Decoded detections of each image: a list of (boxes, scores, class indices), via detector_ops."""
    was_training = model.training
    model.eval()
    results = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), EVAL_BATCH):
                chunk = images[start:start + EVAL_BATCH]
                prepared = [detector_ops.preprocess(image, input_size) for image in chunk]
                batch = torch.from_numpy(np.stack([tensor for tensor, _ in prepared])).to(device)
                heatmap, size, offset = (t.cpu().numpy() for t in model(batch))
                for k, (image, (_, scale)) in enumerate(zip(chunk, prepared)):
                    results.append(detector_ops.decode(
                        heatmap[k], size[k], offset[k], scale, score_threshold, top_k,
                        image_size=(image.shape[1], image.shape[0])))
    finally:
        model.train(was_training)
    return results


def evaluate(model, params, coco, images, device="cpu"):
    """Validation metrics of ``model`` on (coco, images), scored by serving.jobs.evaluation.evaluate -- the
    evaluation of TEST tasks -- on detections keyed by COCO image id, so images need no (or no unique)
    ``file_name`` and training's mAP is the mAP a TEST task of the same checkpoint reports on the same data.

    Returns ``map50`` and ``map`` (None when the set holds no ground-truth box: there is nothing to measure),
    ``per_class`` ({name: {"ap50", "ap", "n_gt", "n_det"}}; AP None for a class without ground truth),
    ``evaluation`` (the whole evaluation dict), ``detections`` (the COCO detections scored) and
    ``predictions``: app-format results keyed by file name, to compare with what an exported app serves
    (images without a file name are left out; they are still scored).
    """
    names, category_ids = class_names(coco), _category_ids(coco)
    detections, predictions = [], {}
    for meta, (boxes, scores, classes) in zip(coco["images"], predict(model, images, params.input_size,
                                                                        device=device)):
        detections += coco_detections(meta["id"], boxes, scores, classes, category_ids)
        if meta.get("file_name"):
            predictions[meta["file_name"]] = {"detections": detector_ops.to_detections(boxes, scores, classes,
                                                                                       names)}
    evaluation = evaluate_detections(coco, detections)
    measured = evaluation["num_gt"] > 0
    detected = {category_id: 0 for category_id in category_ids}
    for detection in detections:
        detected[detection["category_id"]] += 1
    per_class = {c["name"]: {"ap50": c["AP_50"], "ap": c["AP"], "n_gt": c["gt"], "n_det": detected[c["category_id"]]}
                 for c in evaluation["per_class"]}
    return {"map50": evaluation["mAP_50"] if measured else None, "map": evaluation["mAP"] if measured else None,
            "per_class": per_class, "evaluation": evaluation, "detections": detections, "predictions": predictions}


# ---------------------------------------------------------------------------------------------- checkpoints


def _state_bytes(model, optimizer, params, classes, iteration, metrics):
    state = {
        "format": CHECKPOINT_FORMAT,
        "params": params.to_dict(),
        "classes": list(classes),
        "iteration": int(iteration),
        "model": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "metrics": {k: v for k, v in (metrics or {}).items() if k in ("map50", "map", "loss", "evaluated")},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(state_bytes):
    """A checkpoint's dict (format, params, classes, iteration, model, optimizer, torch_rng, metrics).

    ValueError "not a serving.training checkpoint: ..." for anything else: bytes torch cannot read, or can
    read only by unpickling arbitrary objects, or a torch file without this trainer's format tag. A dict this
    function returned is taken as it is, so a caller that reads a checkpoint once can pass the dict on
    (:func:`model_from_state`, :func:`serving.training.export.export_app`) instead of reading the bytes again.
    """
    if isinstance(state_bytes, dict):
        if state_bytes.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a serving.training checkpoint: a dict without this trainer's format tag "
                             f"{CHECKPOINT_FORMAT!r}")
        return state_bytes
    if not isinstance(state_bytes, (bytes, bytearray, memoryview)):
        raise ValueError(f"not a serving.training checkpoint: expected bytes, got {type(state_bytes).__name__}")
    try:
        state = torch.load(io.BytesIO(state_bytes), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:
        # torch's own message advises re-running with weights_only=False, i.e. executing whatever the file
        # holds: never pass that on. A checkpoint of this trainer is tensors and plain data, which a
        # weights-only load always reads, so a refusal means the document is something else.
        raise ValueError(f"not a serving.training checkpoint: torch cannot read these {len(state_bytes)} bytes "
                         f"as tensors and plain data ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not a serving.training checkpoint: a torch file without this trainer's format tag "
                         f"{CHECKPOINT_FORMAT!r}")
    return state


def architecture(params):
    """How messages name a detector's architecture, e.g. ``res18/SMALL``."""
    if isinstance(params, TrainParams):
        params = params.to_dict()
    return f"{params.get('net_model')}/{params.get('model_scope')}"


def model_from_state(state_bytes, params=None):
    """The detector of a checkpoint (bytes, or the dict :func:`load_state` made of them), in eval mode, and its
    class names. ``params`` default to the saved ones."""
    state = load_state(state_bytes)
    params = params or TrainParams.from_dict(state["params"])
    model = build_model(params, len(state["classes"]))
    _load_weights(model, state, params)
    return model.eval(), state["classes"]


def _load_weights(model, state, params):
    """Load a checkpoint's weights into ``model`` (built from ``params``); ValueError naming both architectures
    when they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        # torch lists every mismatched tensor (kilobytes); what to change is the architecture. Trying the load
        # rather than comparing names lets aliases ("resnet" = res18) through.
        raise ValueError(f"the checkpoint is a {architecture(state['params'])} detector and this task trains a "
                         f"{architecture(params)} one: its weights do not fit; fine-tune with the checkpoint's "
                         "net_model and model_scope") from None


def _unwrap(model):
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------------------------------------- reporters


class ConsoleReporter:
    """A reporter for scripts and benchmarks: prints each record, keeps every checkpoint in memory, and asks
    for a stop once ``budget_s`` seconds of wall time have passed (None: never)."""

    def __init__(self, budget_s=None, out=None):
        self.deadline = None if budget_s is None else time.perf_counter() + budget_s
        self.checkpoints = []
        self.records = []
        self.out = out

    def progress(self, record):
        self.records.append(record)
        print(f"iter {record.cur_iter_num:5d}/{record.max_iter_num}  loss {record.loss:.3f}  lr {record.lr:.2e}  "
              f"val mAP@.5 {_score(record.map50)}  mAP {_score(record.map)}  {record.images_per_s:.1f} img/s  "
              f"{record.elapsed_s:.0f} s  {record.model_name}", file=self.out, flush=True)

    def checkpoint(self, iteration, state, metrics):
        self.checkpoints.append((iteration, state, metrics))

    def should_stop(self):
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def best(self):
        """(iteration, state, metrics) of the checkpoint with the best validation mAP@.5 (the last one when none
        was scored)."""
        scored = [c for c in self.checkpoints if c[2].get("map50") is not None]
        return max(scored, key=lambda c: (c[2]["map50"], c[0])) if scored else self.checkpoints[-1]


def _score(value):
    # None: a validation set without ground-truth boxes has no mAP to show.
    return "n/a" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------- training


def train(params, train_coco, train_images, val_coco, val_images, reporter, *, init_state=None, resume=True):
    """Train a detector; returns a :class:`TrainResult`.

    ``init_state``: checkpoint bytes from an earlier run. With ``resume`` (default) training continues from
    the checkpoint's iteration with its optimizer state (pause/resume); with ``resume=False`` only the
    weights are taken and training starts at iteration 0 (fine-tuning from a trained model). Raises
    ValueError on inconsistent inputs (image count vs COCO, categories sharing a name, a checkpoint with other
    classes or another architecture: its net_model / model_scope must give weights of the same shapes).
    """
    if not isinstance(params, TrainParams):
        raise ValueError(f"params must be a TrainParams, got {type(params).__name__}")
    if not train_images:
        raise ValueError("no training images")
    check_categories(train_coco, "train")
    check_categories(val_coco, "val")
    if class_names(train_coco) != class_names(val_coco):
        raise ValueError(f"train and val categories differ: {class_names(train_coco)} vs {class_names(val_coco)}")
    if params.device_num == 1:
        return _run(0, 1, params, train_coco, train_images, val_coco, val_images, reporter, init_state, resume,
                    None)
    return _train_distributed(params, train_coco, train_images, val_coco, val_images, reporter, init_state,
                              resume)


def _train_distributed(params, train_coco, train_images, val_coco, val_images, reporter, init_state, resume):
    """Rank 0 here (it owns the reporter), ranks 1.. in spawned processes, joined over a local TCP store."""
    import torch.multiprocessing as mp  # only the distributed path needs it

    with socket.socket() as probe:  # a free port for the rendezvous; the tiny race is acceptable locally
        probe.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    context = mp.get_context("spawn")
    workers = [
        context.Process(target=_worker, name=f"train-rank{rank}", daemon=True,
                        args=(rank, params.device_num, params, train_coco, train_images, init_state, resume,
                              address))
        for rank in range(1, params.device_num)
    ]
    for worker in workers:
        worker.start()
    try:
        return _run(0, params.device_num, params, train_coco, train_images, val_coco, val_images, reporter,
                    init_state, resume, address)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.terminate()


def _worker(rank, world_size, params, train_coco, train_images, init_state, resume, address):
    """Entry point of a spawned rank: trains its share; evaluation and reporting stay with rank 0."""
    _run(rank, world_size, params, train_coco, train_images, None, None, None, init_state, resume, address)


def _run(rank, world_size, params, train_coco, train_images, val_coco, val_images, reporter, init_state, resume,
         address):
    distributed = world_size > 1
    gpu = params.device == "GPU"
    device = torch.device(f"cuda:{rank}" if gpu else "cpu")
    threads = torch.get_num_threads()
    if distributed:
        # Share the cores between the ranks rather than oversubscribing them.
        torch.set_num_threads(max(1, torch.get_num_threads() // world_size) if rank == 0 else
                              max(1, (os.cpu_count() or 1) // world_size))
        torch.distributed.init_process_group("nccl" if gpu else "gloo", init_method=address, rank=rank,
                                             world_size=world_size)
    try:
        return _loop(rank, world_size, params, train_coco, train_images, val_coco, val_images, reporter,
                     init_state, resume, device)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
            torch.set_num_threads(threads)  # rank 0 is the caller's process: give its threads back


def _loop(rank, world_size, params, train_coco, train_images, val_coco, val_images, reporter, init_state,
          resume, device):
    distributed = world_size > 1
    classes = class_names(train_coco)
    samples = _Samples(train_coco, train_images)
    torch.manual_seed(params.seed)
    model = build_model(params, len(classes)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    start_iteration = 0
    if init_state is not None:
        state = load_state(init_state)
        if state["classes"] != classes:
            raise ValueError(f"checkpoint classes {state['classes']} differ from the dataset's {classes}")
        # Raises on another architecture. Every rank fails here alike, before any collective, so a distributed
        # run ends too.
        _load_weights(model, state, params)
        if resume:
            optimizer.load_state_dict(state["optimizer"])
            start_iteration = state["iteration"]
            torch.set_rng_state(state["torch_rng"])
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[rank] if device.type == "cuda" else None)
    model.train()

    share = params.batch_size // world_size
    positions = list(range(rank * share, (rank + 1) * share))
    started = time.perf_counter()
    interval_loss, interval_steps, images_done = 0.0, 0, 0
    train_seconds = 0.0  # time in training steps only, for an images/s that evaluation does not dilute
    last_metrics = {}
    iteration = start_iteration
    stopped = False
    while iteration < params.max_iters:
        if _stop_requested(reporter, distributed, device):
            stopped = True
            break
        step_started = time.perf_counter()
        lr = learning_rate(params, iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        indices = _batch_indices(len(samples), params.batch_size, iteration, params.seed)
        inputs, heatmaps, batch_ids, cells, sizes, offsets = (
            t.to(device) for t in _make_batch(samples, indices, positions, params, len(classes), iteration))
        outputs = model(inputs, logits=True)
        focal, regression = _losses(outputs, heatmaps, batch_ids, cells, sizes, offsets)
        # Normalise by the objects of the whole global batch (at least 1), so every rank's gradient is its
        # part of the single-process gradient; DDP averages over ranks, hence the world_size factor.
        count = torch.tensor([float(len(cells))], device=device)
        if distributed:
            torch.distributed.all_reduce(count)
        loss = (focal + regression) * world_size / count.clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), _GRAD_CLIP_NORM)
        optimizer.step()
        iteration += 1
        train_seconds += time.perf_counter() - step_started
        reported = loss.detach()
        if distributed:
            # Each rank holds its share of the global loss times world_size: the mean over ranks is that loss.
            torch.distributed.all_reduce(reported)
            reported = reported / world_size
        interval_loss += float(reported)
        interval_steps += 1
        images_done += params.batch_size
        if iteration % params.snapshot_interval == 0 or iteration == params.max_iters:
            metrics = _snapshot(rank, model, optimizer, params, classes, iteration, val_coco, val_images, reporter,
                                interval_loss / max(1, interval_steps), lr, started, images_done, train_seconds,
                                device)
            last_metrics = metrics or last_metrics
            interval_loss, interval_steps = 0.0, 0
    if stopped and rank == 0:
        # Stop/pause: a quick, unscored checkpoint of exactly where training is, so resume loses nothing.
        metrics = {"evaluated": False, "loss": interval_loss / max(1, interval_steps), "map50": None, "map": None}
        state = _state_bytes(model, optimizer, params, classes, iteration, metrics)
        reporter.checkpoint(iteration, state, {**metrics, "model_name": model_name(params, iteration)})
        return TrainResult(iteration, True, metrics, state)
    if rank == 0:
        state = last_metrics.pop("state", b"")
        return TrainResult(iteration, stopped, last_metrics, state)
    return None


def _stop_requested(reporter, distributed, device):
    """Rank 0 asks the reporter; with several ranks its answer is broadcast so all stop at the same step."""
    flag = bool(reporter.should_stop()) if reporter is not None else False
    if not distributed:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(tensor, src=0)
    return bool(tensor.item())


def _snapshot(rank, model, optimizer, params, classes, iteration, val_coco, val_images, reporter, loss, lr,
              started, images_done, train_seconds, device):
    """Rank 0: score the model on val, hand the checkpoint and a progress record to the reporter."""
    if rank != 0:
        return None
    scores = evaluate(_unwrap(model), params, val_coco, val_images, device=device)
    metrics = {"evaluated": True, "loss": loss, "map50": scores["map50"], "map": scores["map"],
               "per_class": scores["per_class"], "model_name": model_name(params, iteration)}
    state = _state_bytes(model, optimizer, params, classes, iteration, metrics)
    reporter.checkpoint(iteration, state, dict(metrics))
    elapsed = time.perf_counter() - started
    reporter.progress(TrainRecord(
        record_time=time.time(), cur_iter_num=iteration, loss=loss, map50=scores["map50"], lr=lr,
        max_iter_num=params.max_iters, model_name=model_name(params, iteration), map=scores["map"],
        elapsed_s=elapsed, images_per_s=images_done / train_seconds if train_seconds > 0 else 0.0))
    return {**metrics, "state": state}
