"""A tiny but real trainer for the job tests: it fits, by gradient steps on mini-batches, the mean 16x16 grey
thumbnail of the training images and the mean box (relative x, y, w, h) of each category.

Training: `max_num_iters` iterations of `batch_size` images (augmented as dataset_expansion_lst says: flips,
rotation, blur), each a step of `lr` towards the batch means; loss is the squared distance before the step.
Every iteration sleeps ITER_SLEEP_S so that the tests can stop and pause it mid-run. Snapshots every
`snap_shot_ivterval` iterations and at the end (or when asked to stop); a resumed task continues from its
last snapshot's iteration and weights. net_model "crash" raises after two iterations (the failure test);
net_model "linger" trains as usual, but its worker process lives on for LINGER_S after it has written the task's
end (an exit hook), so that a test can act on the task while its previous attempt's process is still exiting.

Test: predicts each image's ground truth boxes (score 0.9) plus the learned mean box of every category (score
0.1), so that the evaluation plumbing has something non-trivial to score.
"""
import atexit
import io
import os
import time

import numpy as np

from evals.utils import create_net_handler, net_inference_handler

ITER_SLEEP_S = 0.05
LINGER_S = 1.5
PROGRESS_EVERY = 5
THUMB = 16
TRAIN_NET_MODELS = ("counter", "res101", "resnet", "crash", "linger")


@create_net_handler
def create_net(configs):
    return {"name": "counter"}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    # The serving process's pid (which worker answered, with --workers); params {"sleep_s": n}: a slow call.
    time.sleep(max(r["params"].get("sleep_s", 0) for r in requests))
    return [{"code": 0, "message": "", "result": {"model": model["name"], "pid": os.getpid()}}
            for _ in requests], 0, ""


def _thumbnail(image):
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _augment(thumb, expansions, rng):
    """One of the requested augmentations (ExpansionDataClass values), or none, at random."""
    import cv2

    choice = rng.choice(list(expansions) + [None]) if expansions else None
    if choice == 0:
        return thumb[:, ::-1]
    if choice == 1:
        return thumb[::-1, :]
    if choice == 2:
        return np.rot90(thumb).copy()
    if choice == 3:
        return cv2.GaussianBlur(thumb, (3, 3), 0)
    return thumb


def _relative_boxes(coco):
    """{category id: array of (x, y, w, h) relative to the image size}."""
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    boxes = {}
    for ann in coco["annotations"]:
        width, height = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        boxes.setdefault(ann["category_id"], []).append((x / width, y / height, w / width, h / height))
    return {category: np.asarray(rows, np.float32) for category, rows in boxes.items()}


def _save(weights):
    buffer = io.BytesIO()
    np.savez(buffer, **{str(key): value for key, value in weights.items()})
    return buffer.getvalue()


def _load(data):
    with np.load(io.BytesIO(data)) as archive:
        return {key: archive[key] for key in archive.files}


def train(job):
    params = job.params
    if params["net_model"] == "linger":
        atexit.register(time.sleep, LINGER_S)  # runs after the worker has written the end and returned
    coco, images = job.train_dataset()
    thumbs = np.stack([_thumbnail(image) for image in images])
    boxes = _relative_boxes(coco)
    rng = np.random.default_rng(int(params["task_id"]) % 2**32)
    state = job.resume_state or job.initial_model
    weights = _load(state) if state else {"mean": np.zeros((THUMB, THUMB), np.float32)}
    for category in boxes:
        weights.setdefault(str(category), np.zeros(4, np.float32))
    start = job.resume_iter
    max_iters, batch, base_lr = params["max_num_iters"], params["batch_size"], params["inital_learning_rate"]
    snap = params["snap_shot_ivterval"]
    last_saved = start
    loss = 0.0
    for it in range(start + 1, max_iters + 1):
        if job.should_stop():
            break
        if params["net_model"] == "crash" and it > start + 2:
            raise RuntimeError("counter: crash requested by net_model 'crash'")
        lr = base_lr * 0.5 ** (it / max_iters)
        picks = rng.integers(0, len(thumbs), size=batch)
        target = np.mean([_augment(thumbs[i], params["dataset_expansion_lst"], rng) for i in picks], axis=0)
        loss = float(np.mean((weights["mean"] - target) ** 2))
        weights["mean"] = weights["mean"] - min(lr, 1.0) * (weights["mean"] - target)
        for category, rows in boxes.items():
            sample = rows[rng.integers(0, len(rows), size=min(batch, len(rows)))].mean(axis=0)
            loss += float(np.mean((weights[str(category)] - sample) ** 2))
            weights[str(category)] = weights[str(category)] - min(lr, 1.0) * (weights[str(category)] - sample)
        time.sleep(ITER_SLEEP_S)
        # Snapshot first, so that the record of a snapshot's iteration names that snapshot.
        if snap and it % snap == 0:
            job.checkpoint(it, _save(weights), {"loss": loss})
            last_saved = it
        if it % PROGRESS_EVERY == 0 or it == max_iters:
            job.progress(it, loss, lr)
    else:
        it = max_iters + 1
    finished_at = it - 1  # the last iteration completed
    if finished_at > last_saved or not job.model_ids:
        job.checkpoint(finished_at, _save(weights), {"loss": loss})


def test(job):
    weights = _load(job.initial_model)
    coco, images = job.train_dataset()
    sizes = {image["id"]: (image["width"], image["height"]) for image in coco["images"]}
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    detections = []
    for done, meta in enumerate(coco["images"], start=1):
        if job.should_stop():
            return detections
        for ann in by_image.get(meta["id"], []):
            detections.append({"image_id": meta["id"], "category_id": ann["category_id"],
                               "bbox": [float(v) for v in ann["bbox"]], "score": 0.9})
        width, height = sizes[meta["id"]]
        for category in coco["categories"]:
            box = weights.get(str(category["id"]))
            if box is not None and box[2] > 0 and box[3] > 0:
                detections.append({"image_id": meta["id"], "category_id": category["id"], "score": 0.1,
                                   "bbox": [float(box[0] * width), float(box[1] * height),
                                            float(box[2] * width), float(box[3] * height)]})
        job.test_progress(done, len(coco["images"]))
        time.sleep(ITER_SLEEP_S)
    return detections


_EXPORTED_APP = '''"""Exported by the counter trainer: answers with the snapshot it was made from."""
from evals.utils import create_net_handler, net_inference_handler

SNAPSHOT = {snapshot!r}


@create_net_handler
def create_net(configs):
    return {{}}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{{"code": 0, "message": "", "result": {{"snapshot": SNAPSHOT}}}} for _ in requests], 0, ""
'''


def export(model_bytes, meta, out_dir):
    """A servable app of a snapshot: it answers with the snapshot's bytes as text, so tests tell exports apart."""
    (out_dir / "eval.py").write_text(_EXPORTED_APP.format(snapshot=model_bytes.decode("utf-8", "replace")[:200]))
