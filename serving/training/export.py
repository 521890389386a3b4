"""Turn a training checkpoint into a servable app: ONNX export plus a generated app folder.

The app folder holds ``model.onnx`` (the network up to its raw outputs, dynamic batch), ``app.json``,
``eval.py`` (from ``app_template/eval.py``), ``detector_ops.py`` (a byte copy of
:mod:`serving.training.detector_ops`, the trainer's own preprocessing and decoding) and an empty
``__init__.py``. ``eval.py`` imports its sibling relatively (``from .detector_ops import ...``), which works
under whatever package name the runtime gives the folder, so the app is self-contained and relocatable.
"""
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from serving.training import detector_ops
from serving.training.params import TrainParams
from serving.training.trainer import load_state, model_from_state

INPUT_NAME = "image"
OUTPUT_NAMES = ("heatmap", "size", "offset")
OPSET = 17
DEFAULT_APP_BATCH_SIZE = 8

_TEMPLATE_DIR = Path(__file__).resolve().parent / "app_template"


def export_onnx(state_bytes, params, path):
    """Export the checkpoint's network to ``path`` (written atomically); returns the path.

    Input ``image`` N x 3 x S x S float32 (``detector_ops.preprocess`` output); outputs ``heatmap``
    (probabilities), ``size`` and ``offset``, with a dynamic batch dimension. ``state_bytes`` may also be
    the dict ``load_state`` made of them; ``params`` None means the checkpoint's own.
    """
    state = load_state(state_bytes)
    params = params or TrainParams.from_dict(state["params"])
    model, _ = model_from_state(state, params)
    size = params.input_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # The legacy (TorchScript) exporter is chosen on purpose: stable, small graphs.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (torch.zeros(1, 3, size, size),), tmp_path, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                do_constant_folding=True,
            )
        os.chmod(tmp_path, 0o644)  # mkstemp makes it private; a shipped model is an ordinary readable file
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return path


def export_app(state_bytes, params, out_dir, classes=None, *, score_threshold=detector_ops.DEFAULT_SCORE_THRESHOLD,
               top_k=detector_ops.DEFAULT_TOP_K, batch_size=DEFAULT_APP_BATCH_SIZE):
    """Write a complete app folder for the checkpoint into ``out_dir``; returns its path.

    ``state_bytes`` is the checkpoint's bytes or the dict ``load_state`` made of them (read once either way).
    ``classes`` default to the checkpoint's (and must match their number when given); ``params`` None
    means the checkpoint's own. The folder's name is the app's name when it is put in an evals dir.
    """
    saved = load_state(state_bytes)
    params = params or TrainParams.from_dict(saved["params"])
    classes = list(classes) if classes is not None else list(saved["classes"])
    if len(classes) != len(saved["classes"]):
        raise ValueError(f"{len(classes)} class names given, the checkpoint has {len(saved['classes'])} classes")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(saved, params, out_dir / "model.onnx")
    shutil.copyfile(Path(detector_ops.__file__), out_dir / "detector_ops.py")
    shutil.copyfile(_TEMPLATE_DIR / "eval.py", out_dir / "eval.py")
    (out_dir / "__init__.py").write_text("")
    app = {
        "batch_size": batch_size,
        "use_device": "CPU",
        "model_files": {"model": "model.onnx"},
        "model_params": {"intra_op_threads": 1},
        "custom_params": {"classes": classes, "input_size": params.input_size,
                          "score_threshold": score_threshold, "top_k": top_k,
                          "net_model": params.net_model, "model_scope": params.model_scope,
                          "iteration": saved["iteration"]},
        "batch_window_ms": 2,
    }
    (out_dir / "app.json").write_text(json.dumps(app, indent=2) + "\n")
    return out_dir
