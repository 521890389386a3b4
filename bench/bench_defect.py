"""Quality of the mvi_defect app on surfaces its training never saw: box mAP and product-level NG verdicts.

    python bench/bench_defect.py [--images 2000] [--products 1000] [--views 4] [--seed 1000] [--json FILE]

Everything goes through the app as served (serving.inprocess: the runtime's loader, batcher and codec):

- boxes: ``--images`` images of the held-out surface variants (``serving.synth.make_split(..., "held_out")``,
  a seed the model was not built with), one request each at score threshold 0.01, scored with pycocotools
  (mAP@.5, mAP@[.5:.95], per class);
- products: ``--products`` products of ``--views`` views on held-out surfaces (``serving.synth.products``, half
  of them NG), one multi-image request each; recall and precision of the NG verdict at the app's own NG
  threshold, and the best recall reachable at precision >= 0.95 as the threshold moves (max defect score of a
  product's views).

Goals (issue 5): mAP@.5 >= 0.85, NG recall >= 0.98 at precision >= 0.95.

The defaults take about 5 minutes on 2 cores. They are this large because 600 images and 400 products gave
figures that moved by more than the margins in question from one seed to the next (mAP@.5 0.842 at seed 1000,
0.870 at seed 2000, same model).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2

from serving.codec import Failure
from serving.harness.scoring import score_detection
from serving.inprocess import InProcessRunner
from serving.synth import make_split
from serving.synth.products import make_products

REPO = Path(__file__).resolve().parent.parent
CHUNK = 8
MIN_PRECISION = 0.95


def _png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def score_boxes(runner, n, seed):
    images, coco = make_split(n, seed, surfaces="held_out")
    predictions = {}
    for start in range(0, n, CHUNK):
        metas = coco["images"][start:start + CHUNK]
        results = runner.infer([{"body": _png(image)} for image in images[start:start + CHUNK]],
                               params={"score_threshold": 0.01})
        for meta, result in zip(metas, results):
            if isinstance(result, Failure):
                raise RuntimeError(f"{meta['file_name']}: {result['error']}")
            predictions[meta["file_name"]] = result
    return score_detection(coco, predictions)


def score_products(runner, n, views, seed):
    """(rows, seconds): a row (is NG, verdict NG at the app's threshold, product score) per product, and the
    time the calls took (one caller, one product at a time: the latency of a product's verdict)."""
    products = make_products(n, seed, views=views)
    rows = []
    elapsed = 0.0
    for product in products:
        instance = [{"body": _png(image), "attribute": {"view_id": view_id}} for view_id, image, _ in product.views]
        called = time.perf_counter()
        result = runner.infer([instance], params={"score_threshold": 0.01})[0]
        elapsed += time.perf_counter() - called
        if isinstance(result, Failure):
            raise RuntimeError(f"product {product.product_id}: {result['error']}")
        score = max((d["score"] for view in result["views"] for d in view["defects"]), default=0.0)
        rows.append((product.ng, result["verdict"] == "NG", score))
    return rows, elapsed


def recall_precision(rows, flagged):
    tp = sum(1 for (ng, _, _), flag in zip(rows, flagged) if ng and flag)
    fp = sum(1 for (ng, _, _), flag in zip(rows, flagged) if not ng and flag)
    positives = sum(1 for ng, _, _ in rows if ng)
    return (tp / positives if positives else 0.0), (tp / (tp + fp) if tp + fp else 1.0)


def best_recall_at_precision(rows, min_precision):
    """(recall, precision, threshold) with the most recall among thresholds whose precision >= min_precision."""
    best = (0.0, 1.0, 1.0)
    for threshold in sorted({score for _, _, score in rows}, reverse=True):
        recall, precision = recall_precision(rows, [score >= threshold for _, _, score in rows])
        if precision >= min_precision and recall > best[0]:
            best = (recall, precision, threshold)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evals", type=Path, default=REPO / "evals")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with InProcessRunner(str(args.evals), "mvi_defect", timeout=120) as runner:
        boxes = score_boxes(runner, args.images, args.seed)
        rows, products_s = score_products(runner, args.products, args.views, args.seed + 1)
    recall, precision = recall_precision(rows, [flag for _, flag, _ in rows])
    best = best_recall_at_precision(rows, MIN_PRECISION)
    print(f"boxes, {args.images} images of held-out surfaces: mAP@.5 {boxes['map50']:.3f}  "
          f"mAP@[.5:.95] {boxes['map']:.3f}")
    for name, ap in boxes["per_class"].items():
        print(f"  {name:8s} AP@.5 {ap['ap50']:.3f}  AP {ap['ap']:.3f}  (gt {ap['n_gt']}, det {ap['n_det']})")
    n_ng = sum(1 for ng, _, _ in rows if ng)
    print(f"products, {len(rows)} of {args.views} views ({n_ng} NG): at the app's NG threshold recall {recall:.3f} "
          f"precision {precision:.3f}; best recall at precision >= {MIN_PRECISION}: {best[0]:.3f} "
          f"(precision {best[1]:.3f}, threshold {best[2]:.3f})")
    print(f"speed: {1000 * products_s / len(rows):.0f} ms per product of {args.views} views, one caller "
          f"({len(rows) * args.views / products_s:.0f} views/s), PNG in, through the runtime")
    print(f"goals: mAP@.5 >= 0.85 {'met' if boxes['map50'] >= 0.85 else 'NOT met'}; NG recall >= 0.98 at "
          f"precision >= 0.95 {'met' if recall >= 0.98 and precision >= 0.95 else 'NOT met'} "
          f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({
            "map50": boxes["map50"], "map": boxes["map"],
            "per_class": {k: {"ap50": v["ap50"], "ap": v["ap"]} for k, v in boxes["per_class"].items()},
            "products": len(rows), "ng_products": n_ng, "recall": recall, "precision": precision,
            "best_recall_at_precision": {"recall": best[0], "precision": best[1], "threshold": best[2]},
            "ms_per_product": 1000 * products_s / len(rows),
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
