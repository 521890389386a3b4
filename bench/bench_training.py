"""Train the SMALL detector on synthetic defects within a time budget and check the exported app.

    python bench/bench_training.py [--n 4000] [--budget-s 600] [--max-iters 2000] [--net-model res18]

Data: ``serving.synth.make_splits(n, seed)``: train and val on the training surfaces, test on the
held-out surfaces that training never sees (generated once, kept in memory). Prints training images/s,
the validation mAP@.5 per checkpoint, per-class AP on the test split, and the exported app's test mAP
through onnxruntime (the generated eval.py, run by the real runtime in-process) against the trainer's
own evaluation of the same checkpoint -- they must match. Training stops at ``--budget-s`` seconds of
wall time even if ``--max-iters`` is not reached (the last checkpoint is then the stop checkpoint).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from serving.codec import Failure
from serving.harness.scoring import score_detection
from serving.training.export import export_app
from serving.training.recipe import add_training_options, load_splits, train_params
from serving.training.trainer import EVAL_SCORE_THRESHOLD, ConsoleReporter, evaluate, model_from_state, train


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_options(parser, n=4000, max_iters=2000, snapshot=400,
                         max_iters_help="sized so the cosine schedule ends at about the budget at ~56 images/s")
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-time budget")
    parser.add_argument("--device-num", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    (train_images, train_coco), (val_images, val_coco), (test_images, test_coco) = load_splits(args.n, args.seed)
    params = train_params(args, device_num=args.device_num)
    reporter = ConsoleReporter(args.budget_s)
    train_started = time.perf_counter()
    result = train(params, train_coco, train_images, val_coco, val_images, reporter)
    train_s = time.perf_counter() - train_started
    # The last checkpoint: the final one, or the stop checkpoint when the time budget ran out first.
    iteration, state, _ = reporter.checkpoints[-1]
    model, classes = model_from_state(state)
    test = evaluate(model, params, test_coco, test_images)
    speed = reporter.records[-1].images_per_s if reporter.records else float("nan")
    print(f"\ntrained {result.iteration} iterations in {train_s:.0f} s (stopped early: {result.stopped}); "
          f"training {speed:.1f} images/s")
    print(f"test (held-out surfaces), checkpoint {iteration}: mAP@.5 {test['map50']:.3f}  mAP {test['map']:.3f}")
    for name, ap in test["per_class"].items():
        print(f"  {name:8s} AP@.5 {ap['ap50']:.3f}  AP {ap['ap']:.3f}  (gt {ap['n_gt']}, det {ap['n_det']})")

    app_match = _check_app(state, params, classes, test_coco, test_images, test)
    figures = {
        "params": params.to_dict(), "train_s": train_s, "iterations": result.iteration, "images_per_s": speed,
        "curve": [{"iter": r.cur_iter_num, "val_map50": r.map50, "val_map": r.map, "loss": r.loss,
                   "elapsed_s": r.elapsed_s} for r in reporter.records],
        "test": {"map50": test["map50"], "map": test["map"],
                 "per_class": {k: {"ap50": v["ap50"], "ap": v["ap"]} for k, v in test["per_class"].items()}},
        "app": app_match,
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if app_match["match"] else 1


def _check_app(state, params, classes, coco, images, trainer_scores):
    """Export the app, serve it in-process, score its test detections, compare with the trainer's."""
    from serving.inprocess import InProcessRunner

    evals_dir = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        # The trainer's evaluation threshold, so both sides decode the very same candidate set.
        export_app(state, params, evals_dir / "defects", classes, score_threshold=EVAL_SCORE_THRESHOLD)
        predictions = {}
        with InProcessRunner(str(evals_dir), "defects") as runner:
            for start in range(0, len(images), 8):
                metas = coco["images"][start:start + 8]
                bodies = [cv2.imencode(".png", image)[1].tobytes() for image in images[start:start + 8]]
                for meta, served in zip(metas, runner.infer([{"body": body} for body in bodies])):
                    if isinstance(served, Failure):
                        raise RuntimeError(f"the app failed on {meta['file_name']}: {served['error']}")
                    predictions[meta["file_name"]] = served
        served = score_detection(coco, {k: _result(v) for k, v in predictions.items()})
        max_diff = 0.0
        count_mismatch = 0
        for name, result in predictions.items():
            ours = trainer_scores["predictions"][name]["detections"]
            theirs = _result(result)["detections"]
            if len(ours) != len(theirs):
                count_mismatch += 1
                continue
            # Compare as sets: scores that differ in the 7th digit between torch and onnxruntime may swap
            # the order of two near-tied detections, which changes nothing else.
            for a, b in zip(_canonical(ours), _canonical(theirs)):
                max_diff = max(max_diff, max(abs(x - y) for x, y in zip(a["box"], b["box"])))
        match = (abs(served["map50"] - trainer_scores["map50"]) < 1e-3
                 and abs(served["map"] - trainer_scores["map"]) < 1e-3)
        print(f"exported app (onnxruntime, served in-process): test mAP@.5 {served['map50']:.4f} "
              f"mAP {served['map']:.4f} vs trainer {trainer_scores['map50']:.4f} / {trainer_scores['map']:.4f}; "
              f"max box diff {max_diff:.2e} px; images with a different detection count {count_mismatch} "
              f"-> {'MATCH' if match else 'MISMATCH'}")
        return {"map50": served["map50"], "map": served["map"], "max_box_diff": max_diff,
                "count_mismatch": count_mismatch, "match": match}
    finally:
        shutil.rmtree(evals_dir, ignore_errors=True)


def _canonical(detections):
    """Detections in an order that does not depend on near-tied scores: by class, then box."""
    return sorted(detections, key=lambda d: (d["class"], [round(v, 2) for v in d["box"]]))


def _result(served):
    # The runner returns the result dict (or an error dict); only detections matter here.
    if isinstance(served, dict) and "detections" in served:
        return served
    return {"detections": []}


if __name__ == "__main__":
    sys.exit(main())
