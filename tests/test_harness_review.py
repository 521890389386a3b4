"""Review of `serving test` and `serving store` / `serving dataset` as a user runs them: defects found, kept fixed."""
import json

import pytest

from serving.cli import main
from serving.harness import run_harness
from serving.harness.scoring import load_labels


def _coco(tmp_path, change):
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10]}],
        "categories": [{"id": 1, "name": "scratch"}],
    }
    change(coco)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    return path


MALFORMED_COCO = {
    "bbox holds null": (lambda c: c["annotations"][0].update(bbox=[None, 0, 1, 1]), "four finite numbers"),
    "bbox holds a list": (lambda c: c["annotations"][0].update(bbox=[[1], 0, 1, 1]), "four finite numbers"),
    "bbox holds 'NaN'": (lambda c: c["annotations"][0].update(bbox=["NaN", 0, 1, 1]), "four finite numbers"),
    # Valid JSON, but no float: math.isfinite raised OverflowError (a traceback, not a ValueError).
    "bbox holds 10**400": (lambda c: c["annotations"][0].update(bbox=[10**400, 0, 1, 1]), "four finite numbers"),
    "image id is a list": (lambda c: c["images"][0].update(id=[1]), "image id must be an integer"),
    "category id is a list": (lambda c: c["categories"][0].update(id=[1]), "category id must be an integer"),
}


@pytest.mark.parametrize("case", MALFORMED_COCO)
def test_a_malformed_coco_label_file_is_a_value_error_before_the_run(tmp_path, case):
    # Before: a null/list bbox value raised TypeError (a traceback, exit 1, from `serving test`), and a list image
    # id passed loading and raised TypeError in scoring, after the whole run, with no summary.json or report.
    change, message = MALFORMED_COCO[case]
    path = _coco(tmp_path, change)
    with pytest.raises(ValueError, match=message):
        load_labels(path)
    calls = []
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    with pytest.raises(ValueError, match=message):
        run_harness(lambda instance, params: calls.append(1) or {"detections": []}, [image], tmp_path / "out",
                    app="t", labels_path=path, progress=False)
    assert calls == []


def test_serving_test_with_a_malformed_coco_file_ends_with_one_line_and_exit_2(tmp_path, capsys):
    path = _coco(tmp_path, MALFORMED_COCO["bbox holds null"][0])
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    status = main(["test", "--app", "shapes", "--images", str(folder), "--labels", str(path), "--out",
                   str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("serving test: ") and err.count("\n") == 1 and "four finite numbers" in err
    assert not (tmp_path / "out").exists()


def test_dataset_synth_with_an_unknown_test_surface_is_exit_2_and_stores_nothing(tmp_path, capsys):
    # Before: ValueError from serving.synth escaped as a traceback with exit 1.
    data_dir = tmp_path / "var"
    status = main(["dataset", "synth", "--n", "5", "--test-surfaces", "bogus", "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("serving dataset: --test-surfaces: unknown surface 'bogus'")
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert not data_dir.exists()


def test_an_in_process_run_loads_the_app_under_test_alone(tmp_path):
    """`serving test --evals DIR --app A` starts A only: the other apps' create_net would cost start-up time and
    memory for nothing (evals/ holds the OCR and defect models too)."""
    import subprocess
    import sys

    import cv2
    import numpy as np

    from conftest import REPO

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    run = subprocess.run([sys.executable, "-m", "serving.cli", "test", "--app", "shapes", "--evals",
                          str(REPO / "evals"), "--images", str(images), "--out", str(tmp_path / "out")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    loaded = sorted(line.split("app ")[1].split(":")[0] for line in run.stderr.splitlines()
                    if "serving.apps: app " in line and ": ready (batch_size=" in line)
    assert loaded == ["shapes"], run.stderr
    unknown = subprocess.run([sys.executable, "-m", "serving.cli", "test", "--app", "nope", "--evals",
                              str(REPO / "evals"), "--images", str(images), "--out", str(tmp_path / "out2")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2
    assert "unknown app 'nope'; apps served: mvi_defect, mvi_ocr, mvp_detector, shapes" in unknown.stderr


def test_a_folder_without_images_is_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    assert main(["test", "--app", "shapes", "--images", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert not out.exists()
