"""`serving test`: run a folder of images through an app, score the results against labels, and report.

    from serving.harness import run_harness, format_summary
    summary = run_harness(infer, "images/", "out/", app="ocr", labels_path="labels.json")
    print(format_summary(summary))

``infer(instance, params) -> dict`` does one call: ``instance`` is ``{"body": <image bytes>, "attribute":
{"filename": <name>}}`` and the answer is the app's result dict, or for a failure a ``serving.client.Failure``
or a plain dict of exactly the keys "error" and "code" (``{"error": message, "code": code}``). The
CLI wires it to ``Client(host, port, app).infer([instance], params)[0]`` or to an in-process app.

A run writes, into its output folder:

- results.jsonl: one line per image, in input order: ``{"file", "code", "latency_ms", "result"}`` or, for a
  failure, ``"error"`` instead of ``"result"``.
- summary.json: counts, errors by code, latency percentiles, throughput, and "scores" when labelled.
- report.html: a self-contained page with the same, a latency histogram and the score tables.

Modules:
    serving.harness.inputs   collecting images from a folder, a list file or a single image
    serving.harness.scoring  label formats and scores (text CER/exact match, class accuracy, COCO mAP)
    serving.harness.report   the HTML report
    serving.harness.runner   run_harness and format_summary
"""
from serving.harness.inputs import IMAGE_EXTENSIONS, InputImage, collect_images, read_list_file
from serving.harness.runner import format_summary, run_harness
from serving.harness.scoring import Labels, load_labels, score_results

__all__ = [
    "IMAGE_EXTENSIONS",
    "InputImage",
    "Labels",
    "collect_images",
    "format_summary",
    "load_labels",
    "read_list_file",
    "run_harness",
    "score_results",
]
