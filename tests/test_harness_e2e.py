"""`serving test` end to end: a folder of rendered shapes through the example app, in-process and against a
real server, with labels scored and a report written."""
import json
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
