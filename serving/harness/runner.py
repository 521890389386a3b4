"""run_harness: send every image of a run through an app and write results, summary and report."""
import base64
import datetime
import json
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serving import errors
from serving.harness import scoring
from serving.harness.inputs import as_input_images, display_name
from serving.harness.report import write_report

RESULTS_FILE = "results.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"


def run_harness(infer, images, out_dir, *, app, labels_path=None, concurrency=4, params=None, progress=True,
                task=None, labels=None):
    """Run ``images`` through ``infer`` and write results.jsonl, summary.json and report.html to ``out_dir``.

    ``infer(instance, params) -> dict`` is called once per image, from ``concurrency`` threads at a time, with
    ``instance = {"body": <file bytes>, "attribute": {"filename": <image name>}}``. It returns the app's result
    dict, or for a failed instance a ``serving.client.Failure``, or a plain dict of exactly the keys "error" and
    "code" (``{"error": message, "code": code}``). An exception it raises is recorded as a
    failure with code 599 (reading the image fails with 400) and the run goes on.

    ``images`` is a folder or list-file path, or a sequence of InputImage / (path, name) / paths (see
    `serving.harness.inputs`). ``labels_path`` names a label file (see `serving.harness.scoring`); it is read
    before the first call, so a bad label file fails fast; ``labels`` passes labels already loaded with
    `scoring.load_labels` instead (the CLI reads them before it starts the app). ``task`` forces "text", "class"
    or "detection".

    Returns the summary dict, the same as summary.json: app, n_images, n_ok, n_errors, errors_by_code
    ({"<code>": count}; string keys, as JSON has them), latency_ms {p50, p90, p99, mean, max} over every call,
    images_per_s, wall_s, concurrency, started_at, and "scores" when labels are given. If scoring itself fails
    (say the results hold no key to score), "scores" is ``{"task": ..., "error": message}`` rather than losing
    the run.

    Raises ValueError when there are no images or ``concurrency`` < 1; FileNotFoundError / ValueError for
    missing inputs or a bad label file.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    inputs = as_input_images(images)
    if not inputs:
        raise ValueError(f"no images to run in {images!r}")
    if labels is not None and labels_path is not None:
        raise ValueError("pass labels_path or labels, not both")
    if labels_path is not None:
        labels = scoring.load_labels(labels_path)
    if labels is not None and task is not None:
        scoring.detect_task(labels, {}, task)  # only checks that the forced task fits the labels
    params = {} if params is None else params
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    records = [None] * len(inputs)
    wall_start = time.perf_counter()
    # errors="backslashreplace": names and messages are made valid Unicode (inputs.display_name), but an app's
    # result may still hold a lone surrogate; written as "\udcNN", JSON reads it back, and one odd string never
    # ends a run of thousands with nothing written.
    with open(out_dir / RESULTS_FILE, "w", encoding="utf-8", errors="backslashreplace") as results_file:
        writer = _OrderedWriter(results_file, records)
        _run_all(infer, inputs, params, concurrency, progress, app, writer)
    wall_s = time.perf_counter() - wall_start

    summary = summarize(records, app=app, wall_s=wall_s, concurrency=concurrency)
    summary["started_at"] = started_at
    if labels is not None:
        summary["scores"] = _score(labels, records, task)
    with open(out_dir / SUMMARY_FILE, "w", encoding="utf-8", errors="backslashreplace") as handle:
        json.dump(summary, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    write_report(out_dir / REPORT_FILE, summary, records)
    return summary


def _run_all(infer, inputs, params, concurrency, progress, app, writer):
    """Keep at most ``2 * concurrency`` calls in flight, so a huge folder does not queue a future per image."""
    pending = set()
    index_of = {}
    next_index = 0
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="harness")
    try:
        with tqdm(total=len(inputs), disable=not progress, unit="img", desc=app) as bar:
            while next_index < len(inputs) or pending:
                while next_index < len(inputs) and len(pending) < 2 * concurrency:
                    future = executor.submit(_call_one, infer, inputs[next_index], params)
                    index_of[future] = next_index
                    pending.add(future)
                    next_index += 1
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    writer.put(index_of.pop(future), future.result())
                    bar.update(1)
    finally:
        # On Ctrl-C (or a bug) drop the queued calls instead of waiting for the whole folder.
        executor.shutdown(wait=True, cancel_futures=True)


def _call_one(infer, image, params):
    """One image through ``infer``: the results.jsonl record, with the parsed result kept for scoring."""
    try:
        body = image.path.read_bytes()
    except OSError as exc:
        # No call was made, so there is no latency to count.
        return _failure(image.name, errors.BAD_REQUEST, f"cannot read {display_name(str(image.path))}: {exc}",
                        None)
    instance = {"body": body, "attribute": {"filename": image.name}}
    start = time.perf_counter()
    try:
        result = infer(instance, params)
    except Exception as exc:  # noqa: BLE001 - one failing call must not end a run of thousands
        latency_ms = (time.perf_counter() - start) * 1000.0
        return _failure(image.name, errors.EXCEPTION, f"{type(exc).__name__}: {exc}", latency_ms)
    latency_ms = (time.perf_counter() - start) * 1000.0
    if not isinstance(result, dict):
        return _failure(image.name, errors.EXCEPTION, f"infer returned {type(result).__name__}, not dict",
                        latency_ms)
    if result.keys() == {"error", "code"}:  # a Failure, or a plain dict of the two keys
        code = result.get("code")
        if not isinstance(code, int) or isinstance(code, bool) or errors.is_ok(code):
            code = errors.INTERNAL  # an error reported with no usable code is still an error
        return _failure(image.name, code, str(result["error"]), latency_ms)
    return {"file": image.name, "code": errors.OK, "latency_ms": latency_ms, "result": to_jsonable(result)}


def _failure(name, code, message, latency_ms):
    return {"file": name, "code": code, "latency_ms": latency_ms, "error": message}


class _OrderedWriter:
    """Writes records to results.jsonl in input order as they complete out of order.

    Lines go out as soon as every earlier image is done, so an interrupted run leaves a usable prefix.
    """

    def __init__(self, handle, records):
        self._handle = handle
        self._records = records
        self._next = 0

    def put(self, index, record):
        """Store ``record`` at ``index`` and write every record now ready (called from one thread only)."""
        self._records[index] = record
        while self._next < len(self._records) and self._records[self._next] is not None:
            self._handle.write(json.dumps(self._records[self._next], ensure_ascii=False) + "\n")
            self._next += 1
        self._handle.flush()


def to_jsonable(value):
    """A JSON-ready copy of a result: numpy arrays to lists, numpy scalars to Python, bytes to base64.

    Tuples and sets become lists, dict keys strings; anything else unknown is written as ``str(value)`` so
    one odd value never loses a whole record. Bytes become ``{"base64": ...}`` to stay lossless.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def summarize(records, *, app, wall_s, concurrency):
    """The summary of finished records (without scores); see `run_harness` for the keys."""
    n_images = len(records)
    failures = [r for r in records if "error" in r]
    by_code = {}
    for record in sorted(failures, key=lambda r: r["code"]):
        key = str(record["code"])
        by_code[key] = by_code.get(key, 0) + 1
    return {
        "app": app,
        "n_images": n_images,
        "n_ok": n_images - len(failures),
        "n_errors": len(failures),
        "errors_by_code": by_code,
        "latency_ms": scoring.latency_stats(latencies_of(records)),
        "images_per_s": n_images / wall_s if wall_s > 0 else None,
        "wall_s": wall_s,
        "concurrency": concurrency,
    }


def latencies_of(records):
    """The measured call latencies (ms) of records; images that could not be read have none."""
    return [r["latency_ms"] for r in records if r.get("latency_ms") is not None]


def _score(labels, records, task):
    predictions = {r["file"]: (None if "error" in r else r["result"]) for r in records}
    try:
        return scoring.score_results(labels, predictions, task=task)
    except ValueError as exc:
        return {"task": task, "labels": labels.source, "error": str(exc)}


def format_summary(summary):
    """A few lines for a terminal: counts, errors by code, latency, throughput, and the headline scores."""
    lines = [
        f"app {summary['app']}: {summary['n_images']} images, {summary['n_ok']} ok, {summary['n_errors']} errors"
    ]
    if summary.get("errors_by_code"):
        lines.append("errors by code: " + ", ".join(f"{c}: {n}" for c, n in summary["errors_by_code"].items()))
    latency = summary.get("latency_ms") or {}
    if latency.get("p50") is not None:
        lines.append(
            "latency ms: " + "  ".join(f"{k} {_number(latency[k], 1)}" for k in ("p50", "p90", "p99", "mean", "max"))
        )
    lines.append(
        f"throughput: {_number(summary.get('images_per_s'), 1)} images/s over {_number(summary.get('wall_s'), 2)} s"
        f" (concurrency {summary.get('concurrency')})"
    )
    scores = summary.get("scores")
    if scores:
        lines.append(format_scores(scores))
    return "\n".join(lines)


def format_scores(scores):
    """One or two lines with the headline numbers of a scores dict."""
    task = scores.get("task")
    if "error" in scores:
        return f"scores ({task or 'unknown task'}): not computed: {scores['error']}"
    coverage = f"{scores['n_scored']} scored, {scores['n_unlabelled']} unlabelled"
    if task == scoring.TASK_TEXT:
        head = f"exact match {_percent(scores['exact_match'])}, CER {_percent(scores['cer'])}"
        if scores.get("pr_curve"):
            head += f", precision-recall AP {_number(scores['pr_curve']['ap'], 3)}"
    elif task == scoring.TASK_CLASS:
        head = f"accuracy {_percent(scores['accuracy'])}"
    else:
        head = f"mAP@[.5:.95] {_number(scores['map'], 3)}, mAP@.5 {_number(scores['map50'], 3)}"
    return f"scores ({task}): {head} ({coverage})"


def _number(value, digits):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _percent(value):
    return "n/a" if value is None else f"{100.0 * value:.2f}%"
