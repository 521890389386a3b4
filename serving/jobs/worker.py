"""The worker process of one task attempt: `python -m serving.jobs.worker --data-dir D --evals E --task-id T
--interface-id I --attempt N --parent-pid P`, started by serving.jobs.manager.JobManager.

It imports the task's app (as the server does, inside the `evals` namespace), builds the `Job` handed to the
app's `train(job)` or `test(job)` hook, and writes everything itself: progress rows, snapshots (store documents
of kind "model"), test results, and the task's final state, all guarded by its attempt number (a worker whose
task was taken over writes nothing). The progress log `DATA/jobs/<task_id>_<interface_id>/progress.jsonl`
gets seed 001's START, PROGRESS and END messages.

Exit status: 0 after writing DONE / STOPPED / PAUSED / INTERRUPTED, 1 after writing FAILED with the error (the
exception's last line and the app frame that raised it); anything else (killed) is for the manager to record.

Stopping: the hook polls `job.should_stop()`, true once the task's `requested` flag is set (stop, pause,
server shutdown), on SIGTERM, or when the server process that started the worker is gone (killed with
SIGKILL: the worker then checkpoints and ends INTERRUPTED instead of running on unsupervised).
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from serving.jobs import db as jobdb
from serving.jobs.codes import NO_TRAINER, JobError

# How often should_stop() reads the database at most: cheap enough per iteration, quick enough for "stop
# within seconds".
POLL_INTERVAL_S = 0.2
# Workers run at a lower CPU priority than the server (os.nice increment), so inference keeps its latency.
DEFAULT_NICE = 10
# Lines of the traceback kept in a task's error text.
ERROR_TAIL_LINES = 6


def child_environment():
    """os.environ for a child `python -m serving....` process: the serving package importable in it whatever
    the server's working directory is."""
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def task_dir(data_dir, key):
    return Path(data_dir) / "jobs" / f"{key[0]}_{key[1]}"


def append_log(path, message_type, **fields):
    """Append one seed-001 message (START / PROGRESS / END) to a progress.jsonl file, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"type": message_type, "time": time.time(), **fields}, ensure_ascii=False)
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


class Job:
    """What a train/test hook gets (the contract is in serving.jobs). Built by the worker, not by apps."""

    def __init__(self, jobs, store, task, attempt, data_dir, app_dir, parent_pid):
        self._jobs = jobs
        self.store = store
        self.key = jobdb.key_of(task["task_id"], task["interface_id"])
        self.task_id, self.interface_id = task["task_id"], task["interface_id"]
        self.kind = task["kind"]
        self.app = task["app"]
        self.app_dir = Path(app_dir)
        self.attempt = attempt
        self.params = dict(task["params"])
        self.work_dir = task_dir(data_dir, self.key) / "work"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = task_dir(data_dir, self.key) / "progress.jsonl"
        self._parent_pid = parent_pid
        self._terminated = False
        self._request = None
        self._next_poll = 0.0
        self.model_ids = [m["store_id"] for m in jobs.models(self.key)]
        self.resume_state, self.resume_iter = None, 0
        if self.kind == jobdb.TRAIN and self.model_ids:
            # A resumed task (PAUSED / INTERRUPTED before): continue from its last snapshot.
            last = jobs.models(self.key)[-1]
            self.resume_state, self.resume_iter = store.read_blob(last["store_id"]), int(last["iter"])
        model_id = self.params.get("trained_model_id") or ""
        # TRAIN: the model to start from (fine-tuning); TEST: the model under test.
        self.initial_model = store.read_blob(model_id) if model_id else None
        self.initial_model_meta = store.get(model_id).meta if model_id else {}

    # ---- data -----------------------------------------------------------------------------------------------

    def load_dataset(self, dataset_id):
        """(COCO dict, [BGR uint8 numpy image per COCO image, in order]) of a stored dataset."""
        import cv2
        import numpy as np

        from serving.store.datasets import load_dataset

        coco = load_dataset(self.store, dataset_id)
        images = []
        for image in coco["images"]:
            data = np.frombuffer(self.store.read_blob(image["store_id"]), np.uint8)
            decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
            if decoded is None:
                raise ValueError(f"image {image['store_id']} of dataset {dataset_id} does not decode")
            images.append(decoded)
        return coco, images

    def train_dataset(self):
        """The training set (json_mongodb_id); for a TEST task, the test set."""
        return self.load_dataset(self.params["json_mongodb_id"])

    def val_dataset(self):
        """The validation set (json_val_id), or None when the task has none."""
        val_id = self.params.get("json_val_id") or ""
        return self.load_dataset(val_id) if val_id else None

    # ---- reporting ------------------------------------------------------------------------------------------

    def progress(self, cur_iter, loss, lr, max_iter=None, mAP=None):
        """Record one TrainRecord (and a PROGRESS line). `mAP` None: not measured at this point (0 on the wire)."""
        max_iter = int(max_iter if max_iter is not None else self.params.get("max_num_iters", 0))
        self._jobs.add_record(self.key, self.attempt, cur_iter, loss, lr, max_iter, mAP or 0.0)
        append_log(self.log_path, "PROGRESS", progress=(cur_iter / max_iter if max_iter else 0.0),
                   iter=int(cur_iter), loss=float(loss), lr=float(lr), mAP=mAP, max_iter=max_iter)

    def model_name(self, cur_iter):
        """The file name of a snapshot, e.g. resnet_1000.ckpt (net_model, else the app name)."""
        return f"{self.params.get('net_model') or self.app}_{int(cur_iter)}.ckpt"

    def checkpoint(self, cur_iter, state_bytes, metrics=None):
        """Save a snapshot as a store document of kind "model"; its store id (appended to model_id_lst)."""
        name = self.model_name(cur_iter)
        meta = {"task_id": self.task_id, "interface_id": self.interface_id, "iter": int(cur_iter),
                "model_name": name, "app": self.app, "net_model": self.params.get("net_model", ""),
                "metrics": metrics or {}}
        store_id = self.store.put_blob(state_bytes, kind="model", meta=meta)
        self._jobs.add_model(self.key, self.attempt, store_id, cur_iter, name)
        self.model_ids.append(store_id)
        return store_id

    def should_stop(self):
        """True once the task should end now (stop, pause, server shutdown or gone): checkpoint and return."""
        if self._request is not None:
            return True
        if self._terminated or os.getppid() != self._parent_pid:
            # SIGTERM is also how a stop or pause the hook did not honour in time is escalated: keep its meaning.
            self._request = self._jobs.requested_of(self.key, self.attempt) or jobdb.SHUTDOWN
            return True
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + POLL_INTERVAL_S
            self._request = self._jobs.requested_of(self.key, self.attempt)
        return self._request is not None

    def test_progress(self, done, total):
        """Record how many test images are done (test_progress_query)."""
        self._jobs.set_test_progress(self.key, self.attempt, done, total)

    @staticmethod
    def evaluate(coco, detections):
        """pycocotools evaluation of COCO detections (serving.jobs.evaluation.evaluate)."""
        from serving.jobs.evaluation import evaluate

        return evaluate(coco, detections)

    def _on_sigterm(self, signum, frame):
        self._terminated = True


def _error_text(exc):
    """The exception's own line plus the innermost frames: enough to act on, short enough for a reply."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    tail = "".join(lines[-ERROR_TAIL_LINES:]).strip()
    return f"{type(exc).__name__}: {exc}\n{tail}"


def import_app(evals_dir, app, classic_name):
    """(app folder, imported eval module) of app `app` of an evals dir, imported as the server imports it."""
    from serving.apps import _add_to_evals_path, discover, import_eval_module

    for name, folder, package in discover(evals_dir, classic_name):
        if name == app:
            _add_to_evals_path(Path(evals_dir).resolve())
            return folder, import_eval_module(folder, package)
    # No path: this message reaches callers (model_export of a "model" document whose meta names no app).
    raise JobError(NO_TRAINER, f"no app folder {app!r} in the server's evals dir")


def _finish_test(job, detections):
    """Store the TEST task's results: the result JSON, one rendered image per test image, the evaluation."""
    import cv2

    from serving.jobs.evaluation import evaluate, render

    if not isinstance(detections, list):
        raise TypeError(f"test() must return a list of COCO detections, got {type(detections).__name__}")
    coco, images = job.train_dataset()
    by_image = {}
    for det in detections:
        by_image.setdefault(det["image_id"], []).append(det)
    entries, image_ids = [], []
    with job.store.transaction():
        for meta, image in zip(coco["images"], images):
            dets = by_image.get(meta["id"], [])
            ok, png = cv2.imencode(".png", render(image, dets, coco.get("categories")))
            if not ok:
                raise ValueError(f"cannot encode the rendered image {meta['id']}")
            rendered_id = job.store.put_image(png.tobytes(), meta={"task_id": job.task_id, "source": meta["store_id"]})
            image_ids.append(rendered_id)
            entries.append({"image_id": meta["id"], "file_name": meta.get("file_name", ""),
                            "store_id": meta["store_id"], "rendered_id": rendered_id, "detections": dets})
        common = {"task_id": job.task_id, "interface_id": job.interface_id,
                  "dataset_id": job.params["json_mongodb_id"], "model_id": job.params.get("trained_model_id", "")}
        result_id = job.store.put_json({**common, "images": entries}, kind="result", meta=common)
        evaluation = {**common, **evaluate(coco, detections)}
        eval_id = job.store.put_json(evaluation, kind="evaluation", meta={**common, "mAP": evaluation["mAP"]},
                                     refs=[result_id])
    job._jobs.set_test_results(job.key, job.attempt, result_id, image_ids, eval_id)


def run(args):
    """Run one attempt; the exit status."""
    from serving.store import Store

    if args.nice:
        # Training yields the CPU to the serving process it shares the machine with.
        with contextlib.suppress(OSError):
            os.nice(args.nice)

    jobs = jobdb.JobDB(args.data_dir)
    key = jobdb.key_of(args.task_id, args.interface_id)
    task = jobs.get_task(key)
    if task["attempt"] != args.attempt or task["state"] != jobdb.RUNNING:
        return 0  # taken over or ended before this worker started: nothing is ours to write
    log_path = task_dir(args.data_dir, key) / "progress.jsonl"
    append_log(log_path, "START", task_id=task["task_id"], interface_id=task["interface_id"], kind=task["kind"],
               attempt=args.attempt, app=task["app"])
    # Snapshots, results and whatever the hook stores belong to the task's owner (serving.ownership).
    store = Store(args.data_dir, owner=task["owner"])
    job = None
    try:
        app_dir, module = import_app(args.evals, task["app"], args.app_name)
        hook_name = "train" if task["kind"] == jobdb.TRAIN else "test"
        hook = getattr(module, hook_name, None)
        if not callable(hook):
            raise JobError(NO_TRAINER, f"app {task['app']} defines no {hook_name}(job)")
        job = Job(jobs, store, task, args.attempt, args.data_dir, app_dir, args.parent_pid)
        signal.signal(signal.SIGTERM, job._on_sigterm)
        if task["kind"] == jobdb.TEST:
            total = int(store.get(task["params"]["json_mongodb_id"]).meta.get("images", 0))
            job.test_progress(0, total)
        output = hook(job)
        stopped = job.should_stop()
        if task["kind"] == jobdb.TEST and not stopped:
            _finish_test(job, output)
            job.test_progress(total, total)
    except BaseException as exc:  # the app's code can raise anything; KeyboardInterrupt too is a failure here
        error = exc.message if isinstance(exc, JobError) else _error_text(exc)
        jobs.finish(key, args.attempt, jobdb.FAILED, error)
        append_log(log_path, "END", state=jobdb.FAILED, error=error)
        print(error, file=sys.stderr, flush=True)
        return 1
    # A request written after the hook's last poll still decides how the stopped task ends.
    state = jobdb.STATE_AFTER_REQUEST[jobs.requested_of(key, args.attempt) or job._request] if stopped \
        else jobdb.DONE
    jobs.finish(key, args.attempt, state)
    append_log(log_path, "END", state=state, model_files=job.model_ids)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.jobs.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--evals", required=True)
    parser.add_argument("--app-name", default=None, help="the app name of a classic evals/eval.py layout")
    parser.add_argument("--task-id", type=int, required=True)
    parser.add_argument("--interface-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--nice", type=int, default=DEFAULT_NICE, help="niceness increment of the worker")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
