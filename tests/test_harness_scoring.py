"""The batch test harness: inputs, scoring (text, class, COCO detection), latency stats, and a full run."""
import json
import os
import re

import cv2
import numpy as np
import pytest

from serving.codec import Failure
from serving.harness import collect_images, format_summary, load_labels, read_list_file, run_harness
from serving.harness.inputs import display_name
from serving.harness.report import latency_histogram_svg, pr_curve_svg, render_report
from serving.harness.runner import to_jsonable
from serving.harness.scoring import (
    ERROR_PREDICTION,
    LABELS_COCO,
    LABELS_MAPPING,
    character_error_rate,
    detect_task,
    latency_stats,
    match_names,
    parse_labels,
    score_class,
    score_detection,
    score_results,
    score_text,
    xyxy_to_xywh,
)


def write_png(path, value, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), np.full(size, value, dtype=np.uint8))
    if not ok:
        raise OSError(f"cv2 could not write {path}")
    return path


# ---------------------------------------------------------------------------------------------- text


def test_cer_of_one_substitution_in_six_chars():
    assert character_error_rate(["ABC123"], ["A8C123"]) == pytest.approx(1 / 6)
    assert character_error_rate([""], [""]) is None


def test_score_text_exact_match_cer_and_mismatches():
    labels = {"a.png": "ABC123", "b.png": "XYZ", "c.png": "", "d.png": "QQ", "gone.png": "N"}
    predictions = {
        "a.png": {"code_str": "A8C123"},  # 1 edit
        "b.png": {"code_str": "XYZ"},  # exact
        "c.png": {"code_str": ""},  # nothing expected, nothing read: right
        "d.png": None,  # failed: wrong, both chars count as edits
        "extra.png": {"code_str": "whatever"},  # unlabelled
    }
    scores = score_text(labels, predictions)
    assert scores["text_key"] == "code_str"
    assert scores["n_scored"] == 4
    assert scores["n_unlabelled"] == 1
    assert scores["n_labels_without_image"] == 1
    assert scores["n_correct"] == 2
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["total_edits"] == 3
    assert scores["total_reference_chars"] == 6 + 3 + 0 + 2
    assert scores["cer"] == pytest.approx(3 / 11)
    assert [m["file"] for m in scores["mismatches"]] == ["a.png", "d.png"]
    assert scores["mismatches"][1] == {"file": "d.png", "expected": "QQ", "predicted": None, "edits": 2,
                                       "failed": True}


def test_score_text_falls_back_to_text_key_and_caps_mismatches():
    labels = {f"{i}.png": "AB" for i in range(60)}
    predictions = {f"{i}.png": {"text": "AC"} for i in range(60)}
    scores = score_text(labels, predictions)
    assert scores["text_key"] == "text"
    assert scores["n_mismatches"] == 60
    assert len(scores["mismatches"]) == 50
    assert scores["cer"] == pytest.approx(0.5)


def test_text_precision_recall_curve_follows_the_confidence_threshold():
    labels = {"a.png": "A1", "b.png": "B2", "c.png": "C3", "d.png": "D4", "e.png": "E5", "f.png": ""}
    predictions = {
        "a.png": {"code_str": "A1", "score": 0.99},  # right, confident
        "b.png": {"code_str": "B7", "score": 0.95},  # wrong, confident
        "c.png": {"code_str": "C3", "score": 0.95},  # right, same confidence as b
        "d.png": {"code_str": "D4", "score": 0.6},   # right, hesitant
        "e.png": {"code_str": "", "score": 0.0},     # nothing read: never accepted
        "f.png": {"code_str": "", "score": 0.0},     # nothing to read: not a positive
    }
    curve = score_text(labels, predictions)["pr_curve"]
    assert curve["threshold"] == [0.99, 0.95, 0.6]
    assert curve["precision"] == pytest.approx([1.0, 2 / 3, 3 / 4])
    assert curve["recall"] == pytest.approx([1 / 5, 2 / 5, 3 / 5])
    assert curve["ap"] == pytest.approx(0.2 * 1.0 + 0.2 * 2 / 3 + 0.2 * 3 / 4)
    points = {p["threshold"]: p for p in curve["operating_points"]}
    assert points[0.5] == {"threshold": 0.5, "precision": pytest.approx(3 / 4), "recall": pytest.approx(3 / 5),
                           "accepted": 4}
    assert points[0.95] == {"threshold": 0.95, "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 5),
                            "accepted": 3}
    assert points[0.99]["accepted"] == 1 and points[0.99]["precision"] == 1.0


def test_text_without_confidences_has_no_curve_and_long_curves_are_thinned():
    assert score_text({"a.png": "A"}, {"a.png": {"code_str": "A"}})["pr_curve"] is None
    labels = {f"{i}.png": "X" for i in range(1000)}
    predictions = {f"{i}.png": {"code_str": "X" if i % 3 else "Y", "confidence": i / 1000} for i in range(1000)}
    curve = score_text(labels, predictions)["pr_curve"]
    assert len(curve["threshold"]) == len(curve["precision"]) == len(curve["recall"]) == 201
    assert curve["threshold"][0] == 0.999 and curve["threshold"][-1] == 0.0
    assert curve["recall"][-1] == pytest.approx(666 / 1000)


# ---------------------------------------------------------------------------------------------- class


def test_score_class_top1_per_class_and_confusion():
    labels = {"1.png": "ok", "2.png": "ok", "3.png": "ok", "4.png": "ng", "5.png": "ng"}
    predictions = {
        "1.png": {"class": "ok"},
        "2.png": {"class": "ok"},
        "3.png": {"class": "ng"},
        "4.png": {"label": "ng"},
        "5.png": None,
    }
    scores = score_class(labels, predictions)
    assert scores["n_scored"] == 5
    assert scores["n_correct"] == 3
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["per_class"]["ok"] == {"n": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)}
    assert scores["per_class"]["ng"] == {"n": 2, "correct": 1, "accuracy": pytest.approx(0.5)}
    assert scores["classes"] == ["ng", "ok", ERROR_PREDICTION]
    assert scores["confusion"] == {
        "ng": {"ng": 1, "ok": 0, ERROR_PREDICTION: 1},
        "ok": {"ng": 1, "ok": 2, ERROR_PREDICTION: 0},
    }
    assert {m["file"] for m in scores["mismatches"]} == {"3.png", "5.png"}


# ---------------------------------------------------------------------------------------------- labels, names


def test_labels_kind_and_task_auto_detection():
    mapping = parse_labels({"a.png": "x", ".\\sub\\b.png": 7})
    assert mapping.kind == LABELS_MAPPING
    assert mapping.data == {"a.png": "x", "sub/b.png": "7"}
    coco = parse_labels(coco_ground_truth())
    assert coco.kind == LABELS_COCO

    assert detect_task(mapping, {"a.png": None, "b.png": {"code_str": "x"}}) == "text"
    assert detect_task(mapping, {"a.png": {"text": "x"}}) == "text"
    assert detect_task(mapping, {"a.png": {"class": "x", "score": 0.9}}) == "class"
    assert detect_task(mapping, {"a.png": {"label": "x"}}) == "class"
    # A decoder that also names its symbology: the text key wins.
    assert detect_task(mapping, {"a.png": {"code_str": "x", "class": "QR"}}) == "text"
    assert detect_task(mapping, {"a.png": {"code_str": "x"}}, task="class") == "class"
    assert detect_task(coco, {"a.png": {"class": "x"}}) == "detection"
    with pytest.raises(ValueError, match="cannot tell"):
        detect_task(mapping, {"a.png": {"score": 1.0}, "b.png": None})
    with pytest.raises(ValueError, match="COCO"):
        detect_task(coco, {}, task="text")
    with pytest.raises(ValueError, match="COCO"):
        detect_task(mapping, {}, task="detection")
    with pytest.raises(ValueError):
        parse_labels({"a.png": {"nested": 1}})
    with pytest.raises(ValueError):
        parse_labels(["a.png"])


def test_two_spellings_of_one_file_are_refused_unless_they_agree():
    # "sub\\b.png" and "./sub/b.png" are one file: with two labels, one of them would be scored silently.
    with pytest.raises(ValueError, match=r"'sub\\\\b.png' and './sub/b.png' name the same file with different labels"):
        parse_labels({"sub\\b.png": "x", "./sub/b.png": "y"}, source="labels.json")
    assert parse_labels({"sub\\b.png": "x", "./sub/b.png": "x"}).data == {"sub/b.png": "x"}
    coco = coco_ground_truth()
    coco["images"].append({**coco["images"][0], "id": 99, "file_name": "./" + coco["images"][0]["file_name"]})
    with pytest.raises(ValueError, match="name the same file"):
        parse_labels(coco)


def test_names_match_exactly_else_by_unique_basename():
    matched = match_names(["lot/a.png", "x/b.png", "y/b.png", "c.png"], ["a.png", "b.png", "c.png"])
    # b.png is ambiguous on the run's side, so neither run file takes it.
    assert matched == {"lot/a.png": "a.png", "c.png": "c.png"}


def test_score_results_adds_task_and_source():
    labels = parse_labels({"a.png": "ok"}, source="labels.json")
    scores = score_results(labels, {"a.png": {"class": "ok"}})
    assert scores["task"] == "class"
    assert scores["labels"] == "labels.json"
    assert scores["accuracy"] == 1.0


# ---------------------------------------------------------------------------------------------- detection


def coco_ground_truth():
    """Two images, two categories, one box each; no area/iscrowd/id, as hand-made files often are."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 100},
            {"id": 2, "file_name": "sub/b.png", "width": 100, "height": 100},
            {"id": 3, "file_name": "not_run.png", "width": 100, "height": 100},
        ],
        "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 10]},
            {"image_id": 3, "category_id": 2, "bbox": [0, 0, 10, 10]},
        ],
    }


def perfect_detections():
    return {
        "a.png": {"detections": [{"box": [10, 10, 30, 30], "score": 0.9, "class": "scratch"}]},
        "b.png": {"boxes": [{"bbox": np.array([50, 50, 80, 60]), "score": 0.8, "category_id": 2}]},
    }


def test_xyxy_to_xywh():
    assert xyxy_to_xywh([10, 20, 30, 60]) == [10.0, 20.0, 20.0, 40.0]
    assert xyxy_to_xywh((30, 60, 10, 20)) == [10.0, 20.0, 20.0, 40.0]  # corners in either order
    with pytest.raises(ValueError):
        xyxy_to_xywh([1, 2, 3])


def test_perfect_detections_score_map_one():
    scores = score_detection(coco_ground_truth(), perfect_detections())
    assert scores["n_scored"] == 2
    assert scores["n_labels_without_image"] == 1  # not_run.png is not counted as a miss
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx(1.0)
    assert scores["per_class"]["scratch"]["ap50"] == pytest.approx(1.0)
    assert scores["per_class"]["dent"] == {"ap50": pytest.approx(1.0), "ap": pytest.approx(1.0), "n_gt": 1,
                                           "n_det": 1}
    assert len(scores["pr_curve"]["recall"]) == len(scores["pr_curve"]["precision"]) == 101
    assert set(scores["pr_curve"]["per_class"]) == {"scratch", "dent"}
    assert scores["pr_curve"]["per_class"]["dent"][0] == pytest.approx(1.0)


def test_report_draws_detection_curves_per_class_with_a_legend():
    scores = score_results(parse_labels(coco_ground_truth()), perfect_detections())
    report = render_report({"app": "boxes", "scores": scores}, [{"file": "a.png", "latency_ms": 3.0}])
    curves = report[report.index("Precision-recall at IoU .5"):]
    svg = curves[:curves.index("</svg>")]
    assert svg.count("<polyline") == 3
    assert ">mean<" in svg and ">scratch<" in svg and ">dent<" in svg


def test_pr_curve_svg_zooms_precision_only_when_every_point_is_high():
    high = pr_curve_svg([("text", [0.2, 0.9], [1.0, 0.985])])
    assert ">0.95<" in high and ">0.975<" in high and ">1<" in high
    low = pr_curve_svg([("boxes", [0.2, 0.9, 1.0], [1.0, 0.6, -1.0])])  # -1: undefined, skipped
    assert ">0<" in low and ">0.5<" in low and low.count(",") == 2


def test_detections_below_iou_half_score_zero():
    # Shifted 15 px along a 20 px box: IoU = (5*20) / (2*400 - 100) = 0.14.
    shifted = {
        "a.png": {"detections": [{"box": [25, 10, 45, 30], "score": 0.9, "class": "scratch"}]},
        "sub/b.png": {"detections": [{"box": [65, 50, 95, 60], "score": 0.9, "class": "dent"}]},
    }
    scores = score_detection(coco_ground_truth(), shifted)
    assert scores["map50"] == pytest.approx(0.0)
    assert scores["per_class"]["scratch"]["ap50"] == pytest.approx(0.0)


def test_failed_image_counts_as_no_detections_and_bad_boxes_are_dropped():
    predictions = perfect_detections()
    predictions["b.png"] = None
    predictions["a.png"]["detections"] += [{"box": [1, 2], "class": "scratch"}, {"box": [0, 0, 5, 5], "class": "rust"}]
    scores = score_detection(coco_ground_truth(), predictions)
    assert scores["n_detections_dropped"] == 2
    assert scores["per_class"]["scratch"]["ap50"] == pytest.approx(1.0)
    assert scores["per_class"]["dent"]["ap50"] == pytest.approx(0.0)
    assert scores["map50"] == pytest.approx(0.5)


def test_no_detections_at_all_is_zero_not_a_crash():
    scores = score_detection(coco_ground_truth(), {"a.png": {"detections": []}, "sub/b.png": None})
    assert scores["map"] == 0.0
    assert scores["map50"] == 0.0
    assert scores["per_class"]["scratch"]["ap50"] == 0.0
    assert scores["pr_curve"] is None


# ---------------------------------------------------------------------------------------------- latency, report


def test_latency_percentiles():
    stats = latency_stats(list(range(1, 101)))
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["max"] == 100.0
    assert latency_stats([]) == {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}


def test_latency_histogram_svg_marks_percentiles_and_survives_equal_values():
    svg = latency_histogram_svg([5.0, 6.0, 7.0, 30.0], {"p50": 6.5, "p90": 22.0, "p99": 29.0})
    assert svg.startswith("<svg") and svg.count("<rect") >= 2
    assert "p50 6.50 ms" in svg and "p90 22.0 ms" in svg and "p99 29.0 ms" in svg
    # The bars (titled "from-to ms: count") hold every latency once.
    assert sum(int(n) for n in re.findall(r" ms: (\d+)</title>", svg)) == 4
    equal = latency_histogram_svg([3.0, 3.0], {"p50": 3.0})
    assert equal.startswith("<svg") and "p50 3.00 ms" in equal
    assert sum(int(n) for n in re.findall(r" ms: (\d+)</title>", equal)) == 2


def test_to_jsonable_converts_numpy_and_bytes():
    value = {"a": np.arange(3, dtype=np.int64), "b": np.float32(0.5), 1: (np.bool_(True), b"\x00\x01")}
    assert to_jsonable(value) == {"a": [0, 1, 2], "b": 0.5, "1": [True, {"base64": "AAE="}]}
    json.dumps(to_jsonable(value))


# ---------------------------------------------------------------------------------------------- inputs


def test_collect_images_from_folder_recursive_sorted(tmp_path):
    write_png(tmp_path / "b.png", 0)
    write_png(tmp_path / "a" / "z.png", 0)
    write_png(tmp_path / "a" / "c.PNG", 0)
    (tmp_path / "a" / "d.jpg").write_bytes(b"not checked here")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._b.png").write_bytes(b"AppleDouble")
    write_png(tmp_path / ".cache" / "e.png", 0)
    images = collect_images(tmp_path)
    assert [i.name for i in images] == ["a/c.PNG", "a/d.jpg", "a/z.png", "b.png"]
    assert images[3].path == tmp_path / "b.png"
    assert [i.name for i in collect_images(tmp_path / "b.png")] == ["b.png"]


def test_collect_images_from_list_file(tmp_path):
    write_png(tmp_path / "imgs" / "one.png", 0)
    write_png(tmp_path / "imgs" / "two.png", 0)
    write_png(tmp_path / "abs.png", 0)
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    list_file = list_dir / "run.txt"
    entries = ["# a comment", "", "../imgs/two.png", "  ../imgs/one.png  ", "../imgs/two.png",
               str(tmp_path / "abs.png")]
    list_file.write_text("\n".join(entries) + "\n")
    images = collect_images(list_file)
    assert [i.name for i in images] == ["../imgs/two.png", "../imgs/one.png", (tmp_path / "abs.png").as_posix()]
    assert images[1].path.resolve() == (tmp_path / "imgs" / "one.png").resolve()

    list_file.write_text("../imgs/one.png\n../imgs/missing.png\n")
    with pytest.raises(FileNotFoundError, match="line 2"):
        read_list_file(list_file)
    with pytest.raises(FileNotFoundError):
        collect_images(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- run_harness


def brightness_app(instance, params):
    """A stand-in app: decodes the PNG and calls it bright or dark; refuses one file."""
    name = instance["attribute"]["filename"]
    if name == "a<b>.png":
        return Failure("refused: odd name", 400)  # as the clients return a failed instance
    if set(instance) != {"body", "attribute"} or params != {"threshold": 127}:
        raise AssertionError(f"unexpected call: {sorted(instance)} {params}")
    image = cv2.imdecode(np.frombuffer(instance["body"], dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    mean = image.mean()
    return {"class": "bright" if mean > params["threshold"] else "dark", "mean": np.float32(mean),
            "shape": np.array(image.shape)}


def test_run_harness_end_to_end(tmp_path):
    images = tmp_path / "images"
    for name, value in [("a<b>.png", 200), ("bright1.png", 220), ("bright2.png", 180), ("dark1.png", 20),
                        ("extra.png", 10), ("sub/dark2.png", 40)]:
        write_png(images / name, value)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({
        "a<b>.png": "dark", "bright1.png": "bright", "bright2.png": "bright", "dark1.png": "dark",
        "sub/dark2.png": "bright",  # deliberately wrong label
        "missing.png": "dark",
    }))
    out = tmp_path / "out"

    summary = run_harness(brightness_app, images, out, app="brightness", labels_path=labels, concurrency=2,
                          params={"threshold": 127}, progress=False)

    lines = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["file"] for line in lines] == ["a<b>.png", "bright1.png", "bright2.png", "dark1.png", "extra.png",
                                                "sub/dark2.png"]
    assert lines[0] == {"file": "a<b>.png", "code": 400, "latency_ms": lines[0]["latency_ms"],
                        "error": "refused: odd name"}
    assert lines[1]["code"] == 0 and lines[1]["result"]["class"] == "bright"
    assert lines[1]["result"]["shape"] == [8, 8] and lines[1]["result"]["mean"] == pytest.approx(220.0)
    assert all(line["latency_ms"] >= 0 for line in lines)

    assert summary == json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["app"] == "brightness"
    assert (summary["n_images"], summary["n_ok"], summary["n_errors"]) == (6, 5, 1)
    assert summary["errors_by_code"] == {"400": 1}
    assert summary["concurrency"] == 2
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "mean", "max"}
    assert summary["images_per_s"] > 0

    scores = summary["scores"]
    assert scores["task"] == "class"
    assert (scores["n_scored"], scores["n_unlabelled"], scores["n_labels_without_image"]) == (5, 1, 1)
    assert scores["n_correct"] == 3
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["confusion"]["dark"][ERROR_PREDICTION] == 1
    assert scores["confusion"]["bright"] == {"bright": 2, "dark": 1, ERROR_PREDICTION: 0}

    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<svg" in report
    assert "a&lt;b&gt;.png" in report
    assert "a<b>.png" not in report
    assert "accuracy 60.00%" in format_summary(summary)


def test_a_custom_infer_may_report_failures_as_plain_dicts(tmp_path):
    write_png(tmp_path / "in" / "x.png", 0)
    write_png(tmp_path / "in" / "y.png", 0)

    def app(instance, params):
        if instance["attribute"]["filename"] == "x.png":
            return {"error": "model exploded", "code": 500}  # the documented failure, not a Failure
        return {"class": "A", "error": None}  # a result may hold an "error" key

    summary = run_harness(app, tmp_path / "in", tmp_path / "out", app="plain", progress=False)
    assert (summary["n_ok"], summary["n_errors"], summary["errors_by_code"]) == (1, 1, {"500": 1})


def test_run_harness_records_exceptions_and_unscorable_results(tmp_path):
    write_png(tmp_path / "in" / "x.png", 0)
    write_png(tmp_path / "in" / "y.png", 0)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"x.png": "A", "y.png": "B"}))

    def flaky(instance, params):
        if instance["attribute"]["filename"] == "x.png":
            raise RuntimeError("model exploded")
        return {"score": 0.3}

    summary = run_harness(flaky, tmp_path / "in", tmp_path / "out", app="flaky", labels_path=labels,
                          concurrency=1, progress=False)
    assert summary["errors_by_code"] == {"599": 1}
    assert "cannot tell" in summary["scores"]["error"]
    first = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert first["error"] == "RuntimeError: model exploded"
    assert "not computed" in format_summary(summary)

    with pytest.raises(ValueError, match="no images"):
        run_harness(flaky, [], tmp_path / "out2", app="flaky", progress=False)


# ---------------------------------------------------------------------------------------------- odd inputs


def test_a_file_name_that_is_not_utf8_gets_a_readable_name_and_is_still_read(tmp_path):
    folder = tmp_path / "in"
    write_png(folder / "ok.png", 200)
    # Latin-1 "café.png": Python holds the undecodable byte as a lone surrogate, which no UTF-8 file can hold.
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as handle:
        handle.write((folder / "ok.png").read_bytes())
    images = collect_images(folder)
    assert [i.name for i in images] == ["caf\\xe9.png", "ok.png"]
    assert os.fsencode(images[0].path).endswith(b"/caf\xe9.png")
    assert collect_images(images[0].path)[0].name == "caf\\xe9.png"
    assert display_name("café.png") == "café.png" and display_name("a\ud800") == "a\\ud800"

    seen = []

    def app(instance, params):
        seen.append(instance["attribute"]["filename"])
        return {"class": "bright", "body_bytes": len(instance["body"])}

    # Names passed in by a caller (here straight from os.listdir) are made readable the same way.
    pairs = [(folder / name, name) for name in sorted(os.listdir(folder))]
    summary = run_harness(app, pairs, tmp_path / "out", app="latin", progress=False, concurrency=1)
    assert summary["n_ok"] == 2 and sorted(seen) == ["caf\\xe9.png", "ok.png"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text("utf-8").splitlines()]
    assert [line["file"] for line in lines] == ["caf\\xe9.png", "ok.png"]
    assert lines[0]["result"]["body_bytes"] == (folder / "ok.png").stat().st_size
    assert "<svg" in (tmp_path / "out" / "report.html").read_text("utf-8")


def test_a_result_holding_a_lone_surrogate_does_not_lose_the_run(tmp_path):
    write_png(tmp_path / "in" / "x.png", 0)
    summary = run_harness(lambda instance, params: {"text": "caf\udce9"}, tmp_path / "in", tmp_path / "out",
                          app="odd", progress=False)
    assert summary["n_ok"] == 1
    [line] = (tmp_path / "out" / "results.jsonl").read_text("utf-8").splitlines()
    assert json.loads(line)["result"]["text"] == "caf\udce9"  # "\udce9" in the file: JSON reads it back
    assert (tmp_path / "out" / "report.html").exists()


def test_a_list_file_that_is_not_text_is_a_value_error_naming_it(tmp_path):
    listing = tmp_path / "images.lst"
    listing.write_bytes(write_png(tmp_path / "image.png", 0).read_bytes())  # an image given as the list by mistake
    with pytest.raises(ValueError, match="images.lst: not a list file"):
        read_list_file(listing)
    write_png(tmp_path / "one.png", 0)
    listing.write_bytes(b"\xef\xbb\xbfone.png\n")  # a list saved with a BOM
    assert [i.name for i in read_list_file(listing)] == ["one.png"]


def test_labels_with_a_bom_load_and_unreadable_labels_are_value_errors(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a.png": "cat"}).encode())
    assert load_labels(labels).data == {"a.png": "cat"}
    labels.write_text("file,label\na.png,cat\n")
    with pytest.raises(ValueError, match="labels.json: not a JSON file"):
        load_labels(labels)
    labels.write_bytes(b"\xff\xfe{\x00}\x00")  # UTF-16
    with pytest.raises(ValueError, match="labels.json: not a JSON file"):
        load_labels(labels)


def test_run_harness_takes_labels_already_loaded(tmp_path):
    write_png(tmp_path / "in" / "x.png", 0)
    labels = parse_labels({"x.png": "dark"})
    summary = run_harness(lambda instance, params: {"class": "dark"}, tmp_path / "in", tmp_path / "out",
                          app="pre", labels=labels, progress=False)
    assert summary["scores"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="not both"):
        run_harness(lambda instance, params: {}, tmp_path / "in", tmp_path / "out", app="pre", labels=labels,
                    labels_path=tmp_path / "labels.json", progress=False)
