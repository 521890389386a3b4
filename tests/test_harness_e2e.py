"""`serving test` end to end: a folder of rendered shapes through the example app, in-process and against a
real server, with labels scored and a report written."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, RunningServer
from evals.shapes.data import write_folder


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    labels = write_folder(folder, 40, 99)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder, labels


def run_test_command(*args):
    return subprocess.run([sys.executable, "-m", "serving.cli", "test", "--no-progress", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=180)


def check_outputs(out, expected_images):
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == expected_images
    broken = [line for line in lines if line["file"] == "broken.png"]
    assert broken and broken[0]["code"] == 400
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == expected_images and summary["n_errors"] == 1
    assert summary["errors_by_code"] == {"400": 1}
    assert summary["latency_ms"]["p50"] > 0 and summary["images_per_s"] > 0
    assert summary["scores"]["task"] == "class"
    assert summary["scores"]["accuracy"] >= 0.9 and summary["scores"]["n_scored"] == 40
    report = (out / "report.html").read_text()
    assert "<svg" in report and "shapes" in report
    return summary


def test_harness_in_process(shapes_folder, tmp_path):
    folder, labels = shapes_folder
    out = tmp_path / "inproc"
    run = run_test_command("--app", "shapes", "--evals", str(REPO / "evals"), "--images", str(folder),
                           "--labels", str(labels), "--out", str(out))
    assert run.returncode == 0, run.stderr
    check_outputs(out, 41)
    assert "report" in run.stdout


def test_harness_against_a_server_with_a_list_file(shapes_folder, tmp_path):
    folder, labels = shapes_folder
    names = sorted(p.name for p in folder.glob("*.png"))
    listing = folder / "list.txt"
    listing.write_text("# images to score\n" + "\n".join(names) + "\n")
    server = RunningServer(["--evals", str(REPO / "evals")])
    try:
        out = tmp_path / "remote"
        run = run_test_command("--app", "shapes", "--target", server.target, "--list", str(listing),
                               "--labels", str(labels), "--out", str(out), "--concurrency", "8")
        assert run.returncode == 0, run.stderr
        summary = check_outputs(out, 41)
        assert summary["concurrency"] == 8
    finally:
        server.stop()


def test_harness_unknown_app_against_a_server_reports_404s(shapes_folder, tmp_path):
    folder, _ = shapes_folder
    server = RunningServer(["--evals", str(REPO / "evals")])
    try:
        out = tmp_path / "unknown"
        run = run_test_command("--app", "nope", "--target", server.target, "--images", str(folder), "--out",
                               str(out))
        assert run.returncode == 0, run.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["errors_by_code"] == {"404": 41}
    finally:
        server.stop()


# ---- mistakes on the command line --------------------------------------------------------------------------------

INPUT_MISTAKES = ("missing images folder", "CSV labels", "missing labels", "detection with name->label",
                  "list entry missing", "list not text", "--out is a file")


def _input_mistakes(folder, labels, tmp):
    """{case: (extra `serving test` arguments, text the one-line message must hold)}."""
    csv_labels = tmp / "labels.csv"
    csv_labels.write_text("file,label\nshape_00000.png,circle\n")
    typo_list = tmp / "typo.txt"
    typo_list.write_text(f"{folder / 'shape_00000.png'}\n{folder / 'shape_0000.png'}\n")
    binary_list = tmp / "list.bin"
    binary_list.write_bytes((folder / "shape_00000.png").read_bytes())
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    images = ["--images", str(folder)]
    return {
        "missing images folder": (["--images", str(tmp / "nope")], "no such image folder"),
        "CSV labels": ([*images, "--labels", str(csv_labels)], "not a JSON file"),
        "missing labels": ([*images, "--labels", str(tmp / "nolabels.json")], "No such file"),
        "detection with name->label": ([*images, "--labels", labels, "--task", "detection"], "needs a COCO file"),
        "list entry missing": (["--list", str(typo_list)], "line 2"),
        "list not text": (["--list", str(binary_list)], "not a list file"),
        "--out is a file": ([*images, "--out", str(a_file)], "not a folder"),
    }


@pytest.mark.parametrize("case", INPUT_MISTAKES)
def test_input_mistakes_end_with_one_line_and_exit_2_before_the_app_starts(shapes_folder, tmp_path, case):
    folder, labels = shapes_folder
    args, expected = _input_mistakes(folder, labels, tmp_path)[case]
    out = ["--out", str(tmp_path / "out")] if "--out" not in args else []
    # In-process: had the app been started first, its start-up log ("app shapes: ready") would be on stderr.
    run = run_test_command("--app", "shapes", "--evals", str(REPO / "evals"), *args, *out)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("serving test: "), run.stderr
    assert expected in run.stderr
    assert not (tmp_path / "out").exists()


def test_concurrency_below_one_is_a_usage_error(shapes_folder, tmp_path):
    folder, _ = shapes_folder
    run = run_test_command("--app", "shapes", "--images", str(folder), "--concurrency", "0", "--out",
                           str(tmp_path / "out"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "argument --concurrency: must be an integer >= 1, got '0'" in run.stderr


def test_labels_saved_with_a_bom_are_read(shapes_folder, tmp_path):
    folder, labels = shapes_folder
    bom_labels = tmp_path / "labels-bom.json"
    bom_labels.write_bytes(b"\xef\xbb\xbf" + open(labels, "rb").read())  # as Excel or Notepad save UTF-8
    out = tmp_path / "bom"
    run = run_test_command("--app", "shapes", "--evals", str(REPO / "evals"), "--images", str(folder),
                           "--labels", str(bom_labels), "--out", str(out))
    assert run.returncode == 0, run.stderr
    check_outputs(out, 41)


def test_a_file_name_that_is_not_utf8_is_scored_under_a_readable_name(shapes_folder, tmp_path):
    folder, labels = shapes_folder
    images = tmp_path / "latin"
    images.mkdir()
    # Latin-1 "café.png", as unzipped from a Windows archive: the name on disk is not valid UTF-8.
    with open(os.fsencode(images) + b"/caf\xe9.png", "wb") as handle:
        handle.write((folder / "shape_00000.png").read_bytes())
    (images / "shape_00001.png").write_bytes((folder / "shape_00001.png").read_bytes())
    expected = json.loads(open(labels, encoding="utf-8").read())
    # The readable name is also the one to label it by.
    (tmp_path / "labels.json").write_text(json.dumps({"caf\\xe9.png": expected["shape_00000.png"],
                                                      "shape_00001.png": expected["shape_00001.png"]}))
    server = RunningServer(["--evals", str(REPO / "evals")])
    try:
        out = tmp_path / "out"
        run = run_test_command("--app", "shapes", "--target", server.target, "--images", str(images),
                               "--labels", str(tmp_path / "labels.json"), "--out", str(out))
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(line["file"], line["code"]) for line in lines] == [("caf\\xe9.png", 0), ("shape_00001.png", 0)]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_ok"] == 2 and summary["scores"]["n_scored"] == 2
    assert "<svg" in (out / "report.html").read_text(encoding="utf-8")
