"""Detection evaluation (pycocotools) and result rendering, shared by TEST tasks and by trainers' validation.

`evaluate(coco, detections)` scores COCO detections ({"image_id", "category_id", "bbox": [x, y, w, h],
"score"}) against a COCO ground truth dict and returns a JSON-able dict:

    {"mAP": AP@[.5:.95], "mAP_50": AP@.5, "mAP_75": AP@.75,
     "precision": P, "recall": R,                      # at IoU .5 and score >= score_threshold, all classes
     "score_threshold": 0.5,
     "per_class": [{"category_id", "name", "AP", "AP_50", "precision", "recall", "gt", "detections"}, ...],
     "num_images", "num_gt", "num_detections", "coco_stats": [the 12 numbers of COCOeval.summarize]}

AP of a class without ground truth is reported as null (pycocotools' -1), not 0, so it does not pass for a
failure; the overall numbers are pycocotools' own (which skip such classes).
"""
import contextlib
import copy
import io
from collections import Counter

import numpy as np

DEFAULT_SCORE_THRESHOLD = 0.5
# BGR colours of the rendered boxes, one per category id modulo the list.
_COLOURS = ((0, 0, 255), (0, 200, 0), (255, 0, 0), (0, 200, 200), (200, 0, 200), (200, 200, 0))


def _ground_truth(coco):
    """A copy of a COCO dict with what pycocotools needs that datasets may omit (area, iscrowd, info)."""
    gt = copy.deepcopy({key: coco.get(key, []) for key in ("images", "annotations", "categories")})
    for index, ann in enumerate(gt["annotations"]):
        ann.setdefault("id", index + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    gt["info"] = coco.get("info", {})
    return gt


def _nan_to_none(value):
    value = float(value)
    return None if value < 0 or value != value else value


def evaluate(coco, detections, score_threshold=DEFAULT_SCORE_THRESHOLD):
    """The evaluation dict above. `detections` may be empty: mAP 0, and AP 0 for each class with ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_dict = _ground_truth(coco)
    categories = gt_dict["categories"]
    num_gt = len(gt_dict["annotations"])
    result = {"num_images": len(gt_dict["images"]), "num_gt": num_gt, "num_detections": len(detections),
              "score_threshold": score_threshold}
    if not detections or not num_gt:
        # pycocotools' loadRes cannot take an empty list (it indexes the first result), and the answer is known:
        # nothing found scores AP 0 for every class with something to find, a class without ground truth has no
        # AP (null, as below). Counts as pycocotools' path gives them: crowd boxes are not ground truth to
        # find, detections count from score_threshold up.
        gt_of = Counter(a["category_id"] for a in gt_dict["annotations"] if not a.get("iscrowd"))
        detected_of = Counter(d["category_id"] for d in detections if d.get("score", 0) >= score_threshold)
        per_class = [{"category_id": c["id"], "name": c.get("name", ""),
                      "AP": 0.0 if gt_of[c["id"]] else None, "AP_50": 0.0 if gt_of[c["id"]] else None,
                      "precision": 0.0, "recall": 0.0, "gt": gt_of[c["id"]], "detections": detected_of[c["id"]]}
                     for c in categories]
        result.update({"mAP": 0.0, "mAP_50": 0.0, "mAP_75": 0.0, "precision": 0.0, "recall": 0.0,
                       "coco_stats": [], "per_class": per_class})
        return result
    # pycocotools prints its progress on stdout: keep it out of the worker's output.
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        dt = gt.loadRes([dict(d) for d in detections])
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats]
    result.update({"mAP": max(stats[0], 0.0), "mAP_50": max(stats[1], 0.0), "mAP_75": max(stats[2], 0.0),
                   "coco_stats": stats})
    # precision[T, R, K, A, M]: IoU thresholds x recall points x classes x areas x max dets; area "all" is 0,
    # maxDets 100 is the last.
    precision = evaluator.eval["precision"]
    counts = _counts_at_iou50(evaluator, score_threshold)
    per_class = []
    for k, category_id in enumerate(evaluator.params.catIds):
        ap_all = precision[:, :, k, 0, -1]
        ap_50 = precision[0, :, k, 0, -1]
        tp, n_det, n_gt = counts.get(category_id, (0, 0, 0))
        name = next((c.get("name", "") for c in categories if c["id"] == category_id), "")
        per_class.append({
            "category_id": int(category_id), "name": name,
            "AP": _nan_to_none(np.mean(ap_all[ap_all > -1])) if (ap_all > -1).any() else None,
            "AP_50": _nan_to_none(np.mean(ap_50[ap_50 > -1])) if (ap_50 > -1).any() else None,
            "precision": tp / n_det if n_det else 0.0, "recall": tp / n_gt if n_gt else 0.0,
            "gt": n_gt, "detections": n_det})
    tp = sum(c[0] for c in counts.values())
    n_det = sum(c[1] for c in counts.values())
    n_gt = sum(c[2] for c in counts.values())
    result.update({"precision": tp / n_det if n_det else 0.0, "recall": tp / n_gt if n_gt else 0.0,
                   "per_class": per_class})
    return result


def _counts_at_iou50(evaluator, score_threshold):
    """{category id: (true positives, detections, ground truths)} at IoU .5, area "all", max dets 100, counting
    only detections scoring at least `score_threshold` (an operating point, where AP is threshold-free)."""
    counts = {}
    area_all = evaluator.params.areaRng[0]
    max_det = evaluator.params.maxDets[-1]
    for entry in evaluator.evalImgs:
        if entry is None or entry["aRng"] != area_all or entry["maxDet"] != max_det:
            continue
        scores = np.asarray(entry["dtScores"])
        matched = np.asarray(entry["dtMatches"][0]) > 0 if len(scores) else np.zeros(0, bool)
        ignored = np.asarray(entry["dtIgnore"][0]).astype(bool) if len(scores) else np.zeros(0, bool)
        keep = (scores >= score_threshold) & ~ignored
        n_gt = int((~np.asarray(entry["gtIgnore"]).astype(bool)).sum()) if len(entry["gtIgnore"]) else 0
        tp, n_det, gts = counts.get(entry["category_id"], (0, 0, 0))
        counts[entry["category_id"]] = (tp + int((matched & keep).sum()), n_det + int(keep.sum()), gts + n_gt)
    return counts


def render(image, detections, categories=None):
    """A copy of BGR `image` with `detections` (COCO dicts) drawn as boxes labelled with class and score."""
    import cv2

    names = {c["id"]: c.get("name", str(c["id"])) for c in categories or ()}
    out = image.copy()
    for det in detections:
        x, y, w, h = (int(round(v)) for v in det["bbox"])
        colour = _COLOURS[int(det.get("category_id", 0)) % len(_COLOURS)]
        cv2.rectangle(out, (x, y), (x + max(w, 1), y + max(h, 1)), colour, 1)
        label = f"{names.get(det.get('category_id'), det.get('category_id'))} {float(det.get('score', 0)):.2f}"
        cv2.putText(out, label, (x, max(y - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour, 1, cv2.LINE_AA)
    return out
