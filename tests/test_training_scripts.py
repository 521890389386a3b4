"""The two training scripts (bench/bench_training.py, evals/mvi_defect/build_model.py), run as processes at a
tiny size: they share serving.training.recipe, so both must accept its options and produce what they promise."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n", "60", "--max-iters", "3", "--snapshot", "3", "--batch-size", "4", "--input-size", "64"]


def _run(args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bench_training_exported_app_matches_the_trainer(tmp_path):
    figures = tmp_path / "figures.json"
    done = _run(["bench/bench_training.py", *TINY, "--json", str(figures)])
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(figures.read_text())
    assert result["iterations"] == 3 and result["params"]["input_size"] == 64
    assert result["app"]["match"] is True


def test_build_model_writes_the_app_files_and_retunes(tmp_path):
    done = _run(["-m", "evals.mvi_defect.build_model", *TINY, "--tta", "hflip", "--texture-mix", "0.25",
                 "--min-map50", "0", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stdout + done.stderr
    app = json.loads((tmp_path / "app.json").read_text())
    card = json.loads((tmp_path / "model.json").read_text())
    assert app["custom_params"]["tta"] == ["hflip"] and app["custom_params"]["input_size"] == 64
    assert card["params"]["max_iters"] == 3 and card["params"]["texture_mix"] == 0.25
    assert card["data"] == {"n": 60, "seed": 0}
    assert (tmp_path / "model.onnx").stat().st_size > 0

    # --iters is the old name of --max-iters; a model short of --min-map50 leaves the files as they were.
    before = (tmp_path / "model.onnx").read_bytes()
    refused = _run(["-m", "evals.mvi_defect.build_model", *TINY[:2], "--iters", "2", *TINY[4:], "--tta", "",
                    "--min-map50", "1.01", "--out", str(tmp_path)])
    assert refused.returncode == 1 and "files left as they were" in refused.stdout
    assert (tmp_path / "model.onnx").read_bytes() == before

    retuned = _run(["-m", "evals.mvi_defect.build_model", "--retune", "--tta", "", "--min-map50", "0",
                    "--out", str(tmp_path)])
    assert retuned.returncode == 0, retuned.stdout + retuned.stderr
    assert json.loads((tmp_path / "app.json").read_text())["custom_params"]["tta"] == []
    assert json.loads((tmp_path / "model.json").read_text())["tune_command"].endswith("--out " + str(tmp_path))
