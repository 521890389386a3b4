"""ONNX Runtime sessions for eval apps, with the runtime's defaults (``from evals.utils.onnx import onnx_session``).

::

    @create_net_handler
    def create_net(configs):
        session = onnx_session(configs)          # app.json: model_files.model, model_params.intra_op_threads
        ...

``onnx_session(configs, key="model")`` opens ``configs["model_files"][key]`` with:

- ``model_params.intra_op_threads`` threads inside an operator (default 1: on a small CPU the preprocess
  workers and the event loop need the other cores, and a batch is already parallel work);
- one inter-op thread (the runtime never overlaps two ``net_inference`` calls of an app, so a second one idles);
- no spinning (``model_params.allow_spinning``, default false): idle ONNX Runtime threads otherwise spin
  between batches, burning the cores that decoding and gRPC need;
- ``use_device`` GPU: the CUDA execution provider when this onnxruntime build has it (falls back to the CPU
  with a warning otherwise).

A missing key or file, or a bad value, raises :class:`~evals.utils.error.ErrorBase` 400 naming it, so a
broken app.json fails the app at load with a readable reason.
"""
import os

from evals.utils.context import CTX
from evals.utils.error import ErrorBase, ErrorConfig, ErrorFileNotExist

BAD_REQUEST = 400


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ErrorBase(BAD_REQUEST, f"{name} must be a positive integer, got {value!r}")
    return value


def onnx_session(configs, key="model"):
    """An ``onnxruntime.InferenceSession`` of ``configs["model_files"][key]`` (see the module docstring)."""
    import onnxruntime as ort  # here, not at import: evals.utils stays cheap to import

    path = (configs.get("model_files") or {}).get(key)
    if not path:
        raise ErrorConfig(f"model_files.{key}")
    if not os.path.isfile(path):
        raise ErrorFileNotExist(path)
    model_params = configs.get("model_params") or {}
    threads = _positive_int(model_params.get("intra_op_threads", 1), "model_params.intra_op_threads")
    spinning = model_params.get("allow_spinning", False)
    if not isinstance(spinning, bool):
        raise ErrorBase(BAD_REQUEST, f"model_params.allow_spinning must be true or false, got {spinning!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    providers = ["CPUExecutionProvider"]
    if configs.get("use_device") == "GPU":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            CTX.logger.warning("use_device is GPU but this onnxruntime has no CUDA provider; running on the CPU")
    return ort.InferenceSession(path, options, providers=providers)
