"""Train the mvi_defect detector with the project's own training pipeline and export it next to this file.

Run from the repository root (CPU; see model.json for how long the committed model took):

    python -m evals.mvi_defect.build_model [--n 4000] [--max-iters 4000] [--seed 0] [--min-map50 0.85]

Steps: ``serving.synth.make_splits(n, seed)`` (train and val on the training surfaces, test on the held-out
surfaces training never sees); :func:`serving.training.trainer.train` with the settings below, a validation
snapshot every ``--snapshot`` iterations; the snapshot with the best validation mAP@.5 is scored on the test
split and exported with :func:`serving.training.export.export_onnx` as ``model.onnx``. Then the exported
model is scored as the app runs it (ONNX Runtime, ``detector_ops``, with the test-time augmentation of ``--tta``):
the NG threshold (a view fails when one of its defects scores at least this) is chosen on the validation split,
the highest threshold that still flags ``--ng-recall`` of the defective validation images, and the test split
gives the figures. ``app.json`` gets the classes, input size, TTA and thresholds, ``model.json`` the provenance
(command, parameters, figures). Files are only replaced when the test mAP@.5 reaches ``--min-map50``.

``--retune`` skips training: it scores the ``model.onnx`` already in ``--out`` again on the data its
``model.json`` names (to change ``--tta`` or ``--ng-recall`` without training again).
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from serving.harness.scoring import score_detection
from serving.training import detector_ops
from serving.training.export import export_onnx
from serving.training.params import TrainParams
from serving.training.recipe import add_training_options, load_splits, train_params
from serving.training.trainer import EVAL_SCORE_THRESHOLD, ConsoleReporter, evaluate, model_from_state, train

HERE = Path(__file__).resolve().parent
DEFAULT_SCORE_THRESHOLD = 0.3
# Every transform: +0.02 mAP@.5 on held-out surfaces (bench_defect, 600 images: 0.820 -> 0.842), at 6x the
# compute per view.
DEFAULT_TTA = ",".join(detector_ops.TTA_TRANSFORMS)


def _image_scores(coco, predictions):
    """(max detection score, has a defect) of every image."""
    defective = {a["image_id"] for a in coco["annotations"]}
    rows = []
    for meta in coco["images"]:
        detections = predictions[meta["file_name"]]["detections"]
        rows.append((max((d["score"] for d in detections), default=0.0), meta["id"] in defective))
    return rows


def ng_threshold(coco, predictions, recall):
    """The highest score threshold that flags at least `recall` of the defective images."""
    scores = sorted((score for score, bad in _image_scores(coco, predictions) if bad), reverse=True)
    if not scores:
        return DEFAULT_SCORE_THRESHOLD
    keep = max(1, int(np.ceil(recall * len(scores))))
    return float(scores[keep - 1])


def predict_onnx(model_path, coco, images, input_size, classes, tta, chunk=8):
    """The app's detections (app-format results keyed by file name) of ``images``: ONNX Runtime and
    detector_ops as eval.py runs them, decoded down to the trainer's evaluation threshold."""
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_name, output_names = session.get_inputs()[0].name, [o.name for o in session.get_outputs()]
    predictions = {}
    for start in range(0, len(images), chunk):
        prepared = [detector_ops.preprocess(image, input_size) for image in images[start:start + chunk]]
        heatmap, size, offset = detector_ops.forward(session, input_name, output_names,
                                                     [tensor for tensor, _ in prepared], tta)
        for k, (meta, image) in enumerate(zip(coco["images"][start:start + chunk], images[start:start + chunk])):
            boxes, scores, labels = detector_ops.decode(heatmap[k], size[k], offset[k], prepared[k][1],
                                                        EVAL_SCORE_THRESHOLD, 100,
                                                        image_size=(image.shape[1], image.shape[0]))
            predictions[meta["file_name"]] = {"detections": detector_ops.to_detections(boxes, scores, labels,
                                                                                       classes)}
    return predictions


def _figures(scores):
    return {"map50": scores["map50"], "map": scores["map"],
            "per_class": {k: {"ap50": v["ap50"], "ap": v["ap"]} for k, v in scores["per_class"].items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_options(parser, n=4000, max_iters=4000, snapshot=500)
    parser.add_argument("--tta", default=DEFAULT_TTA, help="comma-separated detector_ops.TTA_TRANSFORMS, or ''")
    parser.add_argument("--ng-recall", type=float, default=0.99)
    parser.add_argument("--min-map50", type=float, default=0.85)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--retune", action="store_true", help="score the model in --out again; no training")
    args = parser.parse_args(argv)
    try:
        tta = detector_ops.check_tta([name for name in args.tta.split(",") if name], "--tta")
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(2)
    command = "python -m evals.mvi_defect.build_model " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.retune:
        card = json.loads((args.out / "model.json").read_text())
        card["tune_command"] = command
        params = TrainParams.from_dict(card["params"])
        args.n, args.seed = card["data"]["n"], card["data"]["seed"]
        classes = json.loads((args.out / "app.json").read_text())["custom_params"]["classes"]

    (train_images, train_coco), (val_images, val_coco), (test_images, test_coco) = load_splits(args.n, args.seed)
    work = Path(tempfile.mkdtemp(prefix="mvi_defect_"))
    try:
        if args.retune:
            model_path = work / "model.onnx"
            shutil.copyfile(args.out / "model.onnx", model_path)
        else:
            params = train_params(args)
            reporter = ConsoleReporter()
            train_started = time.perf_counter()
            train(params, train_coco, train_images, val_coco, val_images, reporter)
            train_s = time.perf_counter() - train_started
            iteration, state, _ = reporter.best()
            model, classes = model_from_state(state)
            val = evaluate(model, params, val_coco, val_images)
            card = {"command": command, "params": params.to_dict(), "data": {"n": args.n, "seed": args.seed},
                    "snapshot": iteration, "train_s": round(train_s), "val_map50": val["map50"]}
            print(f"best snapshot {iteration}: val mAP@.5 {val['map50']:.3f}; trained {train_s:.0f} s")
            model_path = export_onnx(state, params, work / "model.onnx")

        def served(coco, images, transforms):
            return predict_onnx(model_path, coco, images, params.input_size, classes, transforms)

        val_predictions = served(val_coco, val_images, tta)
        threshold = ng_threshold(val_coco, val_predictions, args.ng_recall)
        test = score_detection(test_coco, served(test_coco, test_images, tta))
        plain = test if not tta else score_detection(test_coco, served(test_coco, test_images, ()))
        print(f"test (held-out surfaces), as served (TTA {','.join(tta) or 'none'}): mAP@.5 {test['map50']:.3f} "
              f"mAP {test['map']:.3f} (without TTA: {plain['map50']:.3f}); NG threshold {threshold:.3f}")
        for name, ap in test["per_class"].items():
            print(f"  {name:8s} AP@.5 {ap['ap50']:.3f}  AP {ap['ap']:.3f}")
        if test["map50"] < args.min_map50:
            print(f"test mAP@.5 {test['map50']:.3f} < --min-map50 {args.min_map50}: files left as they were")
            return 1
        shutil.copyfile(model_path, args.out / "model.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    app = {
        "batch_size": 8,
        "use_device": "CPU",
        "model_files": {"model": "model.onnx"},
        "model_params": {"intra_op_threads": 1},
        "custom_params": {"classes": classes, "input_size": params.input_size,
                          "score_threshold": DEFAULT_SCORE_THRESHOLD, "ng_threshold": round(threshold, 4),
                          "top_k": 100, "tta": list(tta)},
        "batch_window_ms": 2,
    }
    (args.out / "app.json").write_text(json.dumps(app, indent=2) + "\n")
    for stale in ("test_map50", "test_map", "test_per_class"):  # the figures of cards written before TTA
        card.pop(stale, None)
    card.update(tta=list(tta), ng_threshold=threshold, eval_score_threshold=EVAL_SCORE_THRESHOLD,
                test=_figures(test), test_without_tta=_figures(plain))
    (args.out / "model.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out / 'model.onnx'}, app.json, model.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
