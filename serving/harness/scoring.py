"""Scoring a harness run against labels: pure functions over (file name -> result) maps.

Label formats (`load_labels` / `parse_labels`):

- A JSON object ``{"file_name": "value", ...}`` (values strings; integers are read as strings). It scores
  either *text* or *class* results; which one is decided from the results (see `detect_task`).
- A COCO JSON file (an object with "images", "annotations" and "categories"): scores *detection* results.
  Annotation boxes are COCO ``[x, y, width, height]``; "area", "iscrowd" and "id" are filled in when absent.

File names are matched exactly (after turning backslashes into "/" and dropping a leading "./"), and failing
that by base name, when the base name is unique both among the run's files and among the labels. So labels
keyed ``img_001.png`` score a run over ``lot7/img_001.png``.

Tasks and what the app's result must hold:

- text: the string under ``code_str`` (else ``text``). Scores: exact match (sequence accuracy) and character
  error rate = total Levenshtein edits / total reference characters. When results also carry a confidence
  (``score``, else ``confidence``: a number), a precision-recall curve as the threshold on it moves: at a
  threshold, the *accepted* images are those whose confidence reaches it and whose text is not empty; precision
  = correct accepted / accepted, recall = correct accepted / images whose label is not empty. It shows what a
  line that rejects low-confidence reads (and sends them to a person) buys.
- class: the class under ``class`` (else ``label``). Scores: top-1 accuracy, per-class accuracy, and a
  confusion matrix ``confusion[expected][predicted] = count``.
- detection: a list under ``detections`` (else ``boxes``) of ``{"box" or "bbox": [x1, y1, x2, y2] in pixels,
  "score": float, "class": category name or "category_id": int}``. Note the box is corner-to-corner (x1y1x2y2),
  not COCO's xywh; it is converted. Scores: COCO mAP@[.5:.95], mAP@.5 and per-class AP, computed by
  pycocotools' COCOeval, and COCO's precision-recall curve at IoU .5, per class and averaged.

Auto-detection (``task=None``): COCO labels mean detection. For a name->string mapping, the first successful
result holding any of ``code_str``/``text``/``class``/``label`` decides: a text key means text, else a class key
means class. Text keys are checked first because a decoder often also reports its symbology under
``class``/``label``, while a classifier seldom emits ``code_str``/``text``. Pass ``task=`` to override.

Files without a label are counted as unlabelled and not scored. A failed instance (its result is None here)
counts as wrong for text and class, and as an image with no detections for detection.
"""
import contextlib
import io
import json
import math
import posixpath
from collections import Counter
from dataclasses import dataclass

import numpy as np
from rapidfuzz.distance import Levenshtein

from serving.store.datasets import is_finite_number  # the store's rule for a JSON number

TASK_TEXT = "text"
TASK_CLASS = "class"
TASK_DETECTION = "detection"
TASKS = (TASK_TEXT, TASK_CLASS, TASK_DETECTION)

TEXT_KEYS = ("code_str", "text")
TEXT_SCORE_KEYS = ("score", "confidence")
CLASS_KEYS = ("class", "label")
DETECTION_KEYS = ("detections", "boxes")

LABELS_MAPPING = "mapping"
LABELS_COCO = "coco"

# Pseudo-classes in the confusion matrix: they cannot clash with real class names in practice, and keeping
# failures visible there (rather than dropping them) makes the matrix add up to the number of scored files.
ERROR_PREDICTION = "(error)"
NO_PREDICTION = "(none)"

MAX_MISMATCHES = 50
# Points kept of a text precision-recall curve (one per distinct confidence otherwise): enough to draw it.
MAX_CURVE_POINTS = 201
# Confidence thresholds the text scores report precision and recall at.
OPERATING_THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.99)
DEFAULT_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Labels:
    """Parsed labels. ``kind`` is LABELS_MAPPING (``data``: {name: str}) or LABELS_COCO (``data``: a COCO dict)."""

    kind: str
    data: dict
    source: str = "<memory>"


# ---------------------------------------------------------------------------------------------- labels


def load_labels(path):
    """Read a label file (JSON) and detect its kind; see the module docstring for the formats.

    Raises ValueError (with the path) when the file is not one of the accepted formats, OSError when it cannot
    be read.
    """
    # utf-8-sig: label files exported from Excel or saved by Windows editors start with a BOM, which json.load
    # refuses ("Unexpected UTF-8 BOM"); without one it reads plain UTF-8 the same.
    with open(path, encoding="utf-8-sig") as handle:
        try:
            obj = json.load(handle)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON file: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a JSON file (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    return parse_labels(obj, source=str(path))


def parse_labels(obj, source="<memory>"):
    """Labels from an already-decoded JSON value: a COCO dict or a {file name: string} mapping.

    Raises ValueError when ``obj`` is neither.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: labels must be a JSON object, not {type(obj).__name__}")
    if {"images", "annotations", "categories"} <= obj.keys():
        return Labels(kind=LABELS_COCO, data=normalize_coco(obj, source=source), source=source)
    mapping, spelled = {}, {}
    for name, value in obj.items():
        # bool is an int subclass; a true/false label is almost surely a wrong file, so refuse it.
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError(
                f"{source}: expected a COCO file or an object of file name -> string label; "
                f"the label of {name!r} is {type(value).__name__}"
            )
        key = normalize_name(name)
        if key in mapping and mapping[key] != str(value):
            raise ValueError(f"{source}: {spelled[key]!r} and {name!r} name the same file with different labels "
                             f"({mapping[key]!r}, {str(value)!r})")
        mapping[key], spelled[key] = str(value), name
    return Labels(kind=LABELS_MAPPING, data=mapping, source=source)


def normalize_name(name):
    """A file name as matched against labels: forward slashes, no leading "./"."""
    name = str(name).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def normalize_coco(dataset, source="<memory>"):
    """A checked copy of a COCO ground-truth dict, with the fields COCOeval needs filled in.

    Hand-made COCO files often lack annotation "id", "area" and "iscrowd", which pycocotools reads without
    defaults; they are added here (area = box width * height, iscrowd = 0, ids after the largest given one).
    Image file names are normalised like `normalize_name`. Raises ValueError on a malformed file.
    """
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: COCO '{key}' must be a list")
    images, spelled = [], {}
    for image in dataset["images"]:
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{source}: every COCO image needs 'id' and 'file_name': {image!r}")
        _check_coco_id(image["id"], "image", source)
        file_name = normalize_name(image["file_name"])
        if file_name in spelled:  # one file's predictions would be scored against two images' boxes
            raise ValueError(f"{source}: COCO images {spelled[file_name]!r} and {image['file_name']!r} name the "
                             "same file")
        spelled[file_name] = image["file_name"]
        images.append({**image, "file_name": file_name})
    categories = []
    for category in dataset["categories"]:
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise ValueError(f"{source}: every COCO category needs 'id' and 'name': {category!r}")
        _check_coco_id(category["id"], "category", source)
        categories.append(dict(category))
    given_ids = [a["id"] for a in dataset["annotations"] if isinstance(a, dict) and "id" in a]
    next_id = max((i for i in given_ids if isinstance(i, int)), default=0) + 1
    annotations = []
    for annotation in dataset["annotations"]:
        if not isinstance(annotation, dict) or "image_id" not in annotation or "category_id" not in annotation:
            raise ValueError(f"{source}: every COCO annotation needs 'image_id' and 'category_id': {annotation!r}")
        bbox = annotation.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{source}: COCO annotation bbox must be [x, y, width, height]: {annotation!r}")
        if not all(is_finite_number(v) for v in bbox):
            raise ValueError(f"{source}: COCO annotation bbox must hold four finite numbers: {annotation!r}")
        _check_coco_id(annotation["image_id"], "annotation image_id", source)
        _check_coco_id(annotation["category_id"], "annotation category_id", source)
        filled = {**annotation, "bbox": [float(v) for v in bbox]}
        filled.setdefault("iscrowd", 0)
        filled.setdefault("area", filled["bbox"][2] * filled["bbox"][3])
        if "id" not in filled:
            filled["id"] = next_id
            next_id += 1
        annotations.append(filled)
    return {**dataset, "images": images, "annotations": annotations, "categories": categories}


def _check_coco_id(value, what, source):
    """COCO ids are integers (pycocotools indexes and sorts them); anything else fails later, after the run."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: a COCO {what} id must be an integer, not {value!r}")


def match_names(run_names, label_names):
    """Map each run file name to its label name: exact match, else a base name unique on both sides."""
    label_names = list(label_names)
    label_set = set(label_names)
    run_names = [normalize_name(n) for n in run_names]
    label_bases = Counter(posixpath.basename(n) for n in label_names)
    run_bases = Counter(posixpath.basename(n) for n in run_names)
    by_base = {posixpath.basename(n): n for n in label_names if label_bases[posixpath.basename(n)] == 1}
    matched = {}
    for name in run_names:
        if name in label_set:
            matched[name] = name
            continue
        base = posixpath.basename(name)
        if run_bases[base] == 1 and base in by_base:
            matched[name] = by_base[base]
    return matched


# ---------------------------------------------------------------------------------------------- tasks


def detect_task(labels, predictions, task=None):
    """The task to score: ``task`` when given (checked against the labels), else auto-detected.

    See the module docstring for the rule. Raises ValueError when the task cannot be decided or does not fit.
    """
    if task is not None and task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if labels.kind == LABELS_COCO:
        if task not in (None, TASK_DETECTION):
            raise ValueError(f"{labels.source} is a COCO file: it scores detection, not {task}")
        return TASK_DETECTION
    if task == TASK_DETECTION:
        raise ValueError(f"{labels.source} maps file names to strings; detection needs a COCO file")
    if task is not None:
        return task
    for result in predictions.values():
        if not result:
            continue
        if any(key in result for key in TEXT_KEYS):
            return TASK_TEXT
        if any(key in result for key in CLASS_KEYS):
            return TASK_CLASS
    raise ValueError(
        "cannot tell whether to score text or class: no successful result holds any of "
        f"{', '.join(TEXT_KEYS + CLASS_KEYS)}; pass task='text' or task='class'"
    )


def score_results(labels, predictions, *, task=None, text_key=None, max_detections=DEFAULT_MAX_DETECTIONS):
    """Score ``predictions`` ({file name: result dict, or None for a failed instance}) against ``labels``.

    Returns the scores of `score_text`, `score_class` or `score_detection`, with "task" and "labels" (the
    label source) added.
    """
    chosen = detect_task(labels, predictions, task)
    if chosen == TASK_TEXT:
        scores = score_text(labels.data, predictions, text_key=text_key)
    elif chosen == TASK_CLASS:
        scores = score_class(labels.data, predictions)
    else:
        scores = score_detection(labels.data, predictions, max_detections=max_detections)
    return {"task": chosen, "labels": labels.source, **scores}


# ---------------------------------------------------------------------------------------------- text


def text_prediction(result, key=None):
    """The text a result reports under ``key`` (default: the first of TEXT_KEYS present), or None."""
    if result is None:
        return None
    keys = (key,) if key else TEXT_KEYS
    for candidate in keys:
        if candidate in result and result[candidate] is not None:
            value = result[candidate]
            return value if isinstance(value, str) else str(value)
    return None


def character_error_rate(references, hypotheses):
    """Total Levenshtein edits over total reference characters; None when the references are all empty."""
    edits = sum(Levenshtein.distance(r, h) for r, h in zip(references, hypotheses, strict=True))
    chars = sum(len(r) for r in references)
    return edits / chars if chars else None


def _labelled(labels, predictions, matched):
    """(file name, expected label, result) of every prediction whose file has a label, in prediction order."""
    for name, result in predictions.items():
        label_name = matched.get(normalize_name(name))
        if label_name is not None:
            yield name, labels[label_name], result


def score_text(labels, predictions, *, text_key=None, max_mismatches=MAX_MISMATCHES):
    """Exact-match accuracy, CER and the confidence precision-recall curve of text results against {file name:
    expected string}.

    A successful result without text reads as "" (so an empty label, "nothing to read", can be right); a
    failed instance is wrong and all its reference characters count as edits. "pr_curve" is None when no result
    carries a confidence (see `text_pr_curve`).
    """
    matched = match_names(predictions.keys(), labels.keys())
    n_scored = n_correct = total_edits = total_chars = 0
    mismatches = []
    n_mismatches = 0
    reads = []  # (confidence, predicted text, correct, label not empty) of every scored image
    for name, expected, result in _labelled(labels, predictions, matched):
        predicted = text_prediction(result, text_key)
        edits = Levenshtein.distance(expected, predicted or "")
        correct = result is not None and (predicted or "") == expected
        n_scored += 1
        n_correct += correct
        total_edits += edits
        total_chars += len(expected)
        reads.append((text_confidence(result), predicted or "", correct, bool(expected)))
        if not correct:
            n_mismatches += 1
            if len(mismatches) < max_mismatches:
                mismatches.append(
                    {"file": name, "expected": expected, "predicted": predicted, "edits": edits,
                     "failed": result is None}
                )
    return {
        "text_key": text_key or _first_key_used(predictions, TEXT_KEYS),
        **_coverage(predictions, labels, matched, n_scored),
        "n_correct": n_correct,
        "exact_match": n_correct / n_scored if n_scored else None,
        "cer": total_edits / total_chars if total_chars else None,
        "total_edits": total_edits,
        "total_reference_chars": total_chars,
        "n_mismatches": n_mismatches,
        "mismatches": mismatches,
        "score_key": _first_key_used(predictions, TEXT_SCORE_KEYS),
        "pr_curve": text_pr_curve(reads),
    }


def text_confidence(result):
    """The confidence a text result reports (``score``, else ``confidence``) as a float, or None."""
    if not result:
        return None
    for key in TEXT_SCORE_KEYS:
        value = result.get(key)
        if is_finite_number(value):
            return float(value)
    return None


def text_pr_curve(reads):
    """Precision and recall of text reads as the confidence threshold moves; None without any confidence.

    ``reads`` holds one ``(confidence or None, predicted text, correct, label not empty)`` per scored image. At
    threshold t the accepted reads are those with a confidence >= t and a non-empty text. Returns thresholds
    (descending), precision and recall (at most MAX_CURVE_POINTS of them), "ap" (the area under the curve as a
    step function, as scikit-learn's average precision) and "operating_points": precision, recall and the
    accepted count at each of OPERATING_THRESHOLDS.
    """
    if not any(confidence is not None for confidence, _, _, _ in reads):
        return None
    n_positive = sum(1 for *_, has_label in reads if has_label)
    candidates = sorted(((confidence, correct) for confidence, text, correct, _ in reads
                         if confidence is not None and text), key=lambda read: -read[0])
    thresholds, precision, recall, accepted_counts = [], [], [], []
    accepted = correct_accepted = 0
    for index, (confidence, correct) in enumerate(candidates):
        accepted += 1
        correct_accepted += correct
        if index + 1 < len(candidates) and candidates[index + 1][0] == confidence:
            continue  # one point per distinct threshold, after all reads at it
        thresholds.append(confidence)
        precision.append(correct_accepted / accepted)
        recall.append(correct_accepted / n_positive if n_positive else 0.0)
        accepted_counts.append(accepted)
    ap = sum((r - r_before) * p for r, r_before, p in zip(recall, [0.0] + recall[:-1], precision))
    operating_points = []
    for threshold in OPERATING_THRESHOLDS:
        # The lowest threshold at or above the asked one is where the curve stands there.
        at = [i for i, t in enumerate(thresholds) if t >= threshold]
        i = at[-1] if at else None
        operating_points.append({
            "threshold": threshold,
            "precision": precision[i] if i is not None else None,
            "recall": recall[i] if i is not None else 0.0,
            "accepted": accepted_counts[i] if i is not None else 0,
        })
    keep = _spread(len(thresholds), MAX_CURVE_POINTS)
    return {
        "threshold": [thresholds[i] for i in keep],
        "precision": [precision[i] for i in keep],
        "recall": [recall[i] for i in keep],
        "ap": ap if candidates else 0.0,
        "operating_points": operating_points,
    }


def _spread(n, limit):
    """At most ``limit`` indices of range(n), evenly spread, first and last included."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (limit - 1))) for i in range(limit)})


# ---------------------------------------------------------------------------------------------- class


def class_prediction(result):
    """The class a result reports (``class``, else ``label``), as a string; the pseudo-classes otherwise."""
    if result is None:
        return ERROR_PREDICTION
    for key in CLASS_KEYS:
        if key in result and result[key] is not None:
            return str(result[key])
    return NO_PREDICTION


def score_class(labels, predictions, *, max_mismatches=MAX_MISMATCHES):
    """Top-1 accuracy, per-class accuracy and confusion matrix against {file name: expected class}.

    ``confusion[expected][predicted]`` counts files; its rows are the expected classes seen, its columns
    (``classes``) every class seen on either side, plus ERROR_PREDICTION / NO_PREDICTION when they occur.
    """
    matched = match_names(predictions.keys(), labels.keys())
    pairs = []
    mismatches = []
    n_mismatches = 0
    for name, expected, result in _labelled(labels, predictions, matched):
        predicted = class_prediction(result)
        pairs.append((expected, predicted))
        if expected != predicted:
            n_mismatches += 1
            if len(mismatches) < max_mismatches:
                mismatches.append({"file": name, "expected": expected, "predicted": predicted})
    expected_classes = sorted({e for e, _ in pairs})
    pseudo = [p for p in (ERROR_PREDICTION, NO_PREDICTION) if any(pred == p for _, pred in pairs)]
    real_predicted = {p for _, p in pairs if p not in (ERROR_PREDICTION, NO_PREDICTION)}
    columns = sorted(set(expected_classes) | real_predicted) + pseudo
    confusion = {e: dict.fromkeys(columns, 0) for e in expected_classes}
    for expected, predicted in pairs:
        confusion[expected][predicted] += 1
    per_class = {}
    for cls in expected_classes:
        n = sum(confusion[cls].values())
        correct = confusion[cls].get(cls, 0)
        per_class[cls] = {"n": n, "correct": correct, "accuracy": correct / n}
    n_correct = sum(1 for e, p in pairs if e == p)
    return {
        **_coverage(predictions, labels, matched, len(pairs)),
        "n_correct": n_correct,
        "accuracy": n_correct / len(pairs) if pairs else None,
        "per_class": per_class,
        "classes": columns,
        "confusion": confusion,
        "n_mismatches": n_mismatches,
        "mismatches": mismatches,
    }


# ---------------------------------------------------------------------------------------------- detection


def xyxy_to_xywh(box):
    """A corner box [x1, y1, x2, y2] as COCO [x, y, width, height] (corners may come in either order).

    Raises ValueError when ``box`` does not hold four numbers.
    """
    if not isinstance(box, (list, tuple, np.ndarray)) or len(box) != 4:
        raise ValueError(f"a box must be [x1, y1, x2, y2], not {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    return [min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)]


def detections_of(result):
    """The detection list of a result (``detections``, else ``boxes``); [] for a failed or empty result."""
    if not result:
        return []
    for key in DETECTION_KEYS:
        value = result.get(key)
        if isinstance(value, (list, tuple)):
            return list(value)
    return []


def to_coco_detection(detection, image_id, category_ids_by_name, category_ids):
    """One app detection as a COCO result dict, or None when its box or category cannot be read.

    The category is ``class`` looked up by category name, else ``category_id`` when it is a known id; the
    score is ``score`` (else ``confidence``, else 1.0).
    """
    if not isinstance(detection, dict):
        return None
    box = detection.get("box", detection.get("bbox"))
    try:
        bbox = xyxy_to_xywh(box)
        score = float(detection.get("score", detection.get("confidence", 1.0)))
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer too large for a float
        return None
    if not all(math.isfinite(v) for v in bbox + [score]):
        return None
    category_id = None
    if detection.get("class") is not None:
        category_id = category_ids_by_name.get(str(detection["class"]))
    if category_id is None and detection.get("category_id") in category_ids:
        category_id = detection["category_id"]
    if category_id is None:
        return None
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def score_detection(coco, predictions, *, max_detections=DEFAULT_MAX_DETECTIONS):
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP of detection results against a COCO ground truth dict.

    Only the labelled images of the run are evaluated (images of the label file that were not run are not
    counted as misses). Per-class AP is None for a category without ground truth boxes in those images
    (COCO's convention); with no detections at all every AP is 0.0 (None without any ground truth).
    "pr_curve" holds COCO's interpolated precision at IoU .5 per recall threshold, averaged over the categories
    with ground truth ("precision") and per category ("per_class": {name: precision list}).
    """
    gt = normalize_coco(coco)
    image_ids_by_name = {image["file_name"]: image["id"] for image in gt["images"]}
    matched = match_names(predictions.keys(), image_ids_by_name.keys())
    category_ids_by_name = {str(c["name"]): c["id"] for c in gt["categories"]}
    category_ids = {c["id"] for c in gt["categories"]}

    image_ids, detections = [], []
    n_dropped = 0
    for name, result in predictions.items():
        label_name = matched.get(normalize_name(name))
        if label_name is None:
            continue
        image_id = image_ids_by_name[label_name]
        image_ids.append(image_id)
        for raw in detections_of(result):
            converted = to_coco_detection(raw, image_id, category_ids_by_name, category_ids)
            if converted is None:
                n_dropped += 1
            else:
                detections.append(converted)

    evaluated = set(image_ids)
    n_gt = Counter(
        a["category_id"] for a in gt["annotations"] if a["image_id"] in evaluated and not a.get("iscrowd")
    )
    n_det = Counter(d["category_id"] for d in detections)
    names = {c["id"]: str(c["name"]) for c in gt["categories"]}
    scores = {
        **_coverage(predictions, image_ids_by_name, matched, len(image_ids)),
        "n_detections": len(detections),
        "n_detections_dropped": n_dropped,
        "max_detections": max_detections,
    }
    if not detections or not image_ids:
        # pycocotools' loadRes indexes the first result and so cannot take an empty list; the answer is
        # known anyway: nothing detected means zero precision wherever there is something to find.
        any_gt = sum(n_gt.values()) > 0
        zero = 0.0 if any_gt else None
        per_class = {
            names[cid]: {"ap50": 0.0 if n_gt[cid] else None, "ap": 0.0 if n_gt[cid] else None,
                         "n_gt": n_gt[cid], "n_det": 0}
            for cid in sorted(category_ids)
        }
        return {**scores, "map": zero, "map50": zero, "per_class": per_class, "pr_curve": None}

    precision, stats, category_order, recall_thresholds = _run_cocoeval(gt, detections, sorted(evaluated),
                                                                        max_detections)
    per_class = {}
    for k, cid in enumerate(category_order):
        per_class[names[cid]] = {
            "ap50": _mean_valid(precision[0, :, k, 0, -1]),
            "ap": _mean_valid(precision[:, :, k, 0, -1]),
            "n_gt": n_gt[cid],
            "n_det": n_det[cid],
        }
    return {
        **scores,
        "map": _valid_stat(stats[0]),
        "map50": _valid_stat(stats[1]),
        "per_class": per_class,
        "pr_curve": _pr_curve(precision, recall_thresholds, [names[cid] for cid in category_order]),
    }


def _run_cocoeval(gt, detections, image_ids, max_detections):
    # Imported here so that importing the harness (e.g. for `serving --help`) does not load pycocotools.
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # pycocotools prints progress on every step; the harness has its own output.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [iou threshold, recall threshold, category, area range, max dets]; -1 where undefined.
    return (evaluator.eval["precision"], evaluator.stats, list(evaluator.params.catIds),
            list(evaluator.params.recThrs))


def _mean_valid(values):
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def _valid_stat(value):
    return float(value) if value > -1 else None


def _pr_curve(precision, recall_thresholds, category_names):
    at_iou50 = precision[0, :, :, 0, -1]  # [recall threshold, category]
    with_gt = [k for k in range(at_iou50.shape[1]) if np.all(at_iou50[:, k] > -1)]
    if not with_gt:
        return None
    return {
        "iou": 0.5,
        "recall": [float(r) for r in recall_thresholds],
        "precision": [float(p) for p in at_iou50[:, with_gt].mean(axis=1)],
        "per_class": {category_names[k]: [float(p) for p in at_iou50[:, k]] for k in with_gt},
    }


# ---------------------------------------------------------------------------------------------- shared


def _coverage(predictions, labels, matched, n_scored):
    used = set(matched.values())
    return {
        "n_scored": n_scored,
        "n_unlabelled": len(predictions) - len(matched),
        "n_labels_without_image": sum(1 for name in labels if name not in used),
    }


def _first_key_used(predictions, keys):
    for result in predictions.values():
        for key in keys:
            if result and key in result:
                return key
    return None


def latency_stats(latencies_ms):
    """p50, p90, p99 (linear interpolation), mean and max of latencies in ms; all None when there are none."""
    if len(latencies_ms) == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(latencies_ms, dtype=float)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(values.mean()),
        "max": float(values.max()),
    }
