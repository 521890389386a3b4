"""``shapes``: the example app -- copy this folder to start your own.

It classifies an image as one of the shapes in ``app.json``'s ``custom_params.classes`` (circle, square,
triangle, star) with a tiny ONNX CNN that ``build_model.py`` trains on synthetic images and ships as
``model.onnx``. Everything an app needs is here, in the three functions the runtime calls:

``create_net(configs)``
    Called once at start-up. Reads ``app.json`` values from ``configs`` (file paths arrive absolute),
    opens an onnxruntime session, checks the model against the preprocessing, and returns a ``model``
    dict that the other two functions receive.
``net_preprocess(model, request)``
    Called once per request, in parallel worker threads, before batching: decode and resize here, so
    the inference thread only runs the network. Stores the network input in the request.
``net_inference(model, requests)``
    Called with up to ``batch_size`` images in total, never concurrently. Stacks every image of every
    request into one batch, runs the network once, and returns one ret per request, in order.

Requests. A single-image request is ``{"data": {"uri" | "body": ...}, "params": {...}}``; a multi-image
request has ``"data"`` as a list of such dicts. Instead of an encoded image, an item may carry a
``"image"`` tensor: float32, 3 x 64 x 64, already preprocessed as in ``preprocess.py``. Optional params:
``{"top_k": k}`` adds the k best ``[class, score]`` pairs under ``"top"``.

Results. A single-image request gets ``{"class": str, "score": float, "probs": float32 array}``; a
multi-image request gets ``{"images": [<one such dict per image>, ...]}``. A bad image (undecodable,
missing, wrong tensor shape) fails only its own request, with code 400.

Conventions worth copying: raise an ``ErrorBase`` subclass (code 4xx for a bad request) and the
decorators turn it into ``(value, code, message)``; keep preprocessing in a module shared with the
training code; keep per-request failures out of the shared batch.
"""

import os

import numpy as np

from evals.shapes.preprocess import INPUT_SHAPE, preprocess
from evals.utils import (CTX, create_net_handler, load_image, net_inference_handler, net_preprocess_handler,
                         request_images)
from evals.utils.error import ErrorBase, ErrorConfig, ErrorFileNotExist
from evals.utils.onnx import onnx_session

BAD_REQUEST = 400
INFERENCE_FAILED = 500


@create_net_handler
def create_net(configs):
    """Open the ONNX model and return ``(model, 0, "")``; a config problem is reported as a 400."""
    model_path = (configs.get("model_files") or {}).get("model")
    if not model_path:
        raise ErrorConfig("model_files.model")
    if not os.path.isfile(model_path):
        raise ErrorFileNotExist(model_path)

    custom_params = configs.get("custom_params") or {}
    classes = custom_params.get("classes")
    if not classes:
        raise ErrorConfig("custom_params.classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ErrorBase(BAD_REQUEST, f"custom_params.classes must be a list of class names, got {classes!r}")

    # ONNX Runtime threads and spinning are app settings (model_params), with serving defaults: one intra-op
    # thread, no spinning. See evals.utils.onnx.
    session = onnx_session(configs)
    model_input = session.get_inputs()[0]
    model_output = session.get_outputs()[0]
    # Catch a model rebuilt with a different input size or class list here, at start-up, rather than
    # as a wrong answer or a shape error on the first request.
    if tuple(model_input.shape[1:]) != INPUT_SHAPE:
        raise ErrorBase(BAD_REQUEST, f"model input {model_input.name} has shape {model_input.shape}, "
                                     f"but preprocess.py makes {list(INPUT_SHAPE)} images")
    n_outputs = model_output.shape[-1]
    if isinstance(n_outputs, int) and n_outputs != len(classes):
        raise ErrorBase(BAD_REQUEST, f"model output {model_output.name} has {n_outputs} classes, "
                                     f"custom_params.classes lists {len(classes)}")

    model = {
        "session": session,
        "input_name": model_input.name,
        "output_name": model_output.name,
        "classes": list(classes),
        "batch_size": int(configs.get("batch_size") or 1),
    }
    CTX.logger.info("shapes: loaded %s (%d classes, providers %s, %s intra-op thread(s), batch_size %d)",
                    model_path, len(classes), session.get_providers(),
                    session.get_session_options().intra_op_num_threads, model["batch_size"])
    return model, 0, ""


@net_preprocess_handler
def net_preprocess(model, request):
    """Decode and preprocess every image of the request; store each as ``item["image"]``."""
    # A multi-image request must fit in one batch: net_inference runs it in one forward pass.
    items, _ = request_images(request, model["batch_size"])
    for item in items:
        item["image"] = _image_tensor(item)
    _top_k(model, request)  # fail a bad parameter now, before the request joins a batch
    return request, 0, ""


@net_inference_handler
def net_inference(model, requests):
    """Run every image of every request in one forward pass and return one ret per request, in order."""
    rets = [None] * len(requests)
    images = []
    spans = []  # (request index, first image in the batch, image count, multi-image?, top_k)
    for index, request in enumerate(requests):
        try:
            items, multi = request_images(request)
            # Items that went through net_preprocess already hold a checked tensor, and this is cheap
            # for them; without a preprocess step the decoding happens here.
            tensors = [_image_tensor(item) for item in items]
            top_k = _top_k(model, request)
        except ErrorBase as error:
            # A bad request fails alone; the rest of the batch still runs.
            rets[index] = {"code": error.code, "message": error.message, "result": None}
            continue
        spans.append((index, len(images), len(tensors), multi, top_k))
        images.extend(tensors)

    if images:
        # The runtime never hands over more than batch_size images, and the model's batch dimension is
        # dynamic, so the whole batch goes through in one run.
        try:
            logits = model["session"].run([model["output_name"]], {model["input_name"]: np.stack(images)})[0]
        except Exception as error:  # noqa: BLE001 -- any ORT failure fails the whole batch alike
            CTX.logger.exception("shapes: forward pass failed")
            return None, INFERENCE_FAILED, f"forward inference failed: {error}"
        probs = _softmax(logits)
        for index, start, count, multi, top_k in spans:
            results = [_describe(model, row, top_k) for row in probs[start:start + count]]
            rets[index] = {"code": 0, "message": "", "result": {"images": results} if multi else results[0]}
    return rets, 0, ""


def _image_tensor(item):
    """The float32 3 x 64 x 64 network input of one image dict: its ``image`` tensor, checked, or its
    ``body`` / ``uri`` decoded and preprocessed."""
    image = item.get("image")
    if image is not None:
        return _checked_tensor(image)
    body = item.get("body")
    uri = item.get("uri")
    if not body and not uri:
        raise ErrorBase(BAD_REQUEST, "image has no body, uri or image tensor")
    # load_image raises 400-coded errors for undecodable, tiny or huge images.
    return preprocess(load_image(uri, body))


def _checked_tensor(image):
    """A client-supplied, already preprocessed input as float32, or a 400 saying what is wrong with it."""
    if not isinstance(image, np.ndarray):
        raise ErrorBase(BAD_REQUEST, f"image tensor must be an array, got {type(image).__name__}")
    if image.shape != INPUT_SHAPE:
        raise ErrorBase(BAD_REQUEST, f"image tensor must have shape {list(INPUT_SHAPE)}, got {list(image.shape)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ErrorBase(BAD_REQUEST, f"image tensor must be float32, got {image.dtype}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        # One NaN would not crash the network, just silently return NaN scores for that image.
        raise ErrorBase(BAD_REQUEST, "image tensor holds NaN or infinite values")
    return image


def _top_k(model, request):
    """``params.top_k`` as an int clipped to the number of classes, or 0 when not asked for."""
    params = request.get("params") or {}
    if not isinstance(params, dict):
        raise ErrorBase(BAD_REQUEST, f"params must be an object, got {type(params).__name__}")
    top_k = params.get("top_k")
    if top_k is None:
        return 0
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ErrorBase(BAD_REQUEST, f"params.top_k must be a positive integer, got {top_k!r}")
    return min(top_k, len(model["classes"]))


def _softmax(logits):
    """Row-wise softmax in float32; subtracting the row maximum keeps exp() from overflowing."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)


def _describe(model, probs, top_k):
    """The result dict of one image from its class probabilities."""
    classes = model["classes"]
    best = int(probs.argmax())
    # The row is a view into the whole batch's array; copy it so each result owns only its own values.
    result = {"class": classes[best], "score": float(probs[best]), "probs": probs.copy()}
    if top_k:
        order = np.argsort(-probs, kind="stable")[:top_k]
        result["top"] = [[classes[i], float(probs[i])] for i in order]
    return result
