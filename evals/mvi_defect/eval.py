"""mvi_defect: multi-view defect detection (the MVI platform's defect_detect_task) as an app.

The detector is the project's own: trained by serving.training on `serving dataset synth` surfaces (classes
scratch, spot, crack, pit) and exported to ``model.onnx`` by ``build_model.py`` (``model.json`` records the
command, the parameters and the figures). Preprocessing and decoding are serving.training.detector_ops, the
very functions the trainer scored the model with. ``custom_params.tta`` names the test-time augmentation: the
network also sees each view flipped and turned (in the same forward pass) and a view's heatmap is the mean of
all of them mapped back (``detector_ops.forward``). The shipped app uses all five transforms: on held-out
surfaces +0.02 to +0.03 mAP@.5 for 6x the compute per view. ``"tta": []`` turns it off; scores then shift,
so ``build_model.py --retune --tta ''`` chooses the ``ng_threshold`` that goes with it.

Requests. One request is one product: ``data`` is the list of its views, each ``{"body" | "uri": image,
"attribute": {"view_id": int}}`` (view ids default to 1, 2, ... in order), or a single such dict for a one-view
product. All views of a product run in one forward pass, together with the other products of the batch; a
product may have at most ``batch_size`` views (400 otherwise). A view carries ``body`` or ``uri`` and
optionally ``attribute`` (an object; keys other than ``view_id`` are ignored); any other input (a named tensor)
is refused with 400 naming it. Params (optional): ``score_threshold`` (the defects listed, default app.json's),
``ng_threshold`` (a view fails when one of its defects scores at least this; default app.json's, chosen on
validation data by build_model.py), each a number in [0, 1] (400 naming the param otherwise); other params are
ignored (KServe passes every request parameter, ``timeout`` included, as a param).

Result::

    {"verdict": "OK" | "NG", "failed_views": [view ids], "views": [{"view_id": int, "verdict": "OK" | "NG",
     "defects": [{"class": str, "score": float, "box": [x1, y1, x2, y2]}, ...]}, ...]}

plus, when ``data`` is a single view dict, ``"detections"``: that view's defects (what ``serving test --labels
coco.json`` scores). Boxes are in image pixels, best first. A view whose image is missing or does not decode fails the whole
product with 400 naming the view: a verdict needs every view. A bad product fails alone, never the other
products of its batch: bad input is refused in ``net_preprocess``, before the product joins a batch, and
``net_inference`` answers each product on its own (an unexpected error is that product's 599; a forward pass
that fails for the batch is retried product by product, so only a product that breaks it gets 500).
"""

from evals.utils import CTX, create_net_handler, load_image, net_inference_handler, net_preprocess_handler
from evals.utils.error import ErrorBase
from evals.utils.handlers import EXCEPTION_CODE  # the contract's code for an exception escaping a handler
from evals.utils.onnx import onnx_session
from evals.utils.request import request_images
from serving.training.detector_ops import (app_settings, check_fraction, check_model_input, decode, forward,
                                           preprocess, to_detections)

BAD_REQUEST = 400
INFERENCE_FAILED = 500
# Listing and verdict threshold when app.json names none (build_model.py writes the tuned ones).
DEFAULT_SCORE_THRESHOLD = 0.3
# What a view may carry: anything else is a caller's mistake (a misspelt key, an input meant for another app) and
# is refused by name rather than ignored.
VIEW_INPUTS = ("body", "uri", "attribute")
# A product's working data between net_preprocess and net_inference lives under this key of the request, never in
# the view dicts: a view's keys are the caller's input names, so any name used there could be sent by a client.
_STATE = "_mvi_defect"
# How many unknown input names a refusal lists, and how much of each: the names come from the caller.
_MAX_NAMES_SHOWN = 5
_MAX_NAME_CHARS = 40


def _fraction(value, where):
    try:
        return check_fraction(value, where)
    except ValueError as error:
        raise ErrorBase(BAD_REQUEST, str(error)) from None


@create_net_handler
def create_net(configs):
    session = onnx_session(configs)  # model_files.model; one thread, no spinning, CUDA for use_device GPU
    custom = configs.get("custom_params") or {}
    try:
        model = app_settings({"score_threshold": DEFAULT_SCORE_THRESHOLD, **custom})
        check_model_input(session, model["input_size"], len(model["classes"]))
        model["ng_threshold"] = check_fraction(custom.get("ng_threshold", DEFAULT_SCORE_THRESHOLD),
                                               "custom_params.ng_threshold")
    except ValueError as error:
        raise ErrorBase(BAD_REQUEST, str(error)) from None
    model.update(session=session, input_name=session.get_inputs()[0].name,
                 output_names=[output.name for output in session.get_outputs()],
                 batch_size=int(configs.get("batch_size") or 1))
    CTX.logger.info("mvi_defect: %d classes, input %d, NG threshold %.3f, batch_size %d", len(model["classes"]),
                    model["input_size"], model["ng_threshold"], model["batch_size"])
    return model, 0, ""


def _names(keys):
    shown = [repr(str(key)[:_MAX_NAME_CHARS]) for key in sorted(keys, key=str)[:_MAX_NAMES_SHOWN]]
    more = len(keys) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _is_empty(value):
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


def _views(request, batch_size):
    """``([(view_id, body, uri)], multi)`` of a product, checked: 400 naming an unknown or ill-typed input, a
    view without an image, a bad or repeated view id, more views than ``batch_size``."""
    items, multi = request_images(request, batch_size)
    views, seen = [], set()
    for position, item in enumerate(items, start=1):
        unknown = [key for key in item if key not in VIEW_INPUTS]
        if unknown:
            raise ErrorBase(BAD_REQUEST, f"view {position}: unknown input {_names(unknown)}; a view of mvi_defect "
                                         f"takes body or uri, and attribute {{\"view_id\": int}}")
        body, uri, attribute = item.get("body"), item.get("uri"), item.get("attribute")
        if uri is not None and not isinstance(uri, str):
            raise ErrorBase(BAD_REQUEST, f"view {position}: uri must be a string, got {type(uri).__name__}")
        if attribute is None:
            attribute = {}
        if not isinstance(attribute, dict):
            raise ErrorBase(BAD_REQUEST, f"view {position}: attribute must be an object such as "
                                         f"{{\"view_id\": {position}}}, got {type(attribute).__name__}")
        view_id = attribute.get("view_id", position)
        if isinstance(view_id, bool) or not isinstance(view_id, int):
            raise ErrorBase(BAD_REQUEST, f"view {position}: attribute.view_id must be an integer, got "
                                         f"{type(view_id).__name__}")
        if view_id in seen:
            raise ErrorBase(BAD_REQUEST, f"view id {view_id} appears twice in one product")
        seen.add(view_id)
        if _is_empty(body) and not uri:
            raise ErrorBase(BAD_REQUEST, f"view {view_id} has no image (body or uri)")
        views.append((view_id, None if _is_empty(body) else body, uri))
    return views, multi


def _params(model, request):
    """``(score_threshold, ng_threshold)`` of the request. Other keys are ignored: KServe hands every request
    parameter (``timeout``, ``priority``) to the app as a param."""
    params = request.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ErrorBase(BAD_REQUEST, f"params must be an object, got {type(params).__name__}")
    # check_fraction compares before it converts, so an integer too large for a float is refused, not raised.
    return (_fraction(params.get("score_threshold", model["score_threshold"]), "params.score_threshold"),
            _fraction(params.get("ng_threshold", model["ng_threshold"]), "params.ng_threshold"))


def _product(model, request):
    """A product's working data: each view decoded and preprocessed once (its network input, scale and image
    size), and its thresholds. Raises ErrorBase (400 and the like) naming what is wrong with the product."""
    views, multi = _views(request, model["batch_size"])
    thresholds = _params(model, request)  # a bad parameter fails now, before any image is decoded
    state = {"view_ids": [], "tensors": [], "scales": [], "sizes": [], "multi": multi, "thresholds": thresholds}
    for view_id, body, uri in views:
        try:
            image = load_image(uri, body)
        except ErrorBase as error:
            raise ErrorBase(error.code, f"view {view_id}: {error.message}") from None
        tensor, scale = preprocess(image, model["input_size"])
        state["view_ids"].append(view_id)
        state["tensors"].append(tensor)
        state["scales"].append(scale)
        state["sizes"].append((image.shape[1], image.shape[0]))
    return state


@net_preprocess_handler
def net_preprocess(model, request):
    request[_STATE] = _product(model, request)  # a bad product fails here, alone, before it joins a batch
    return request, 0, ""


def _failure(code, message):
    return {"code": code, "message": message, "result": None}


def _forward(model, states):
    """Per product: its rows ``(heatmap, size, offset)`` of one forward pass over every view of every product,
    or the message its forward pass failed with. When the batch's pass fails, each product runs alone, so a
    product that breaks the network fails by itself and the others of the batch are still answered."""
    tensors = [tensor for state in states for tensor in state["tensors"]]
    try:
        heatmap, size, offset = forward(model["session"], model["input_name"], model["output_names"], tensors,
                                        model["tta"])
    except Exception as error:  # noqa: BLE001 -- any ONNX Runtime failure; isolated below
        if len(states) == 1:
            CTX.logger.exception("mvi_defect: forward pass failed")
            return [f"forward inference failed: {error}"]
        CTX.logger.warning("mvi_defect: forward pass of %d products failed (%s); running each alone", len(states),
                           error)
        return [_forward(model, [state])[0] for state in states]
    outputs, start = [], 0
    for state in states:
        end = start + len(state["tensors"])
        outputs.append((heatmap[start:end], size[start:end], offset[start:end]))
        start = end
    return outputs


def _result(model, state, output):
    heatmap, size, offset = output
    score_threshold, ng_threshold = state["thresholds"]
    results, failed = [], []
    for row, view_id in enumerate(state["view_ids"]):
        # Decode down to the lower of the two thresholds: the verdict may rest on a defect not listed.
        boxes, scores, classes = decode(heatmap[row], size[row], offset[row], state["scales"][row],
                                        min(score_threshold, ng_threshold), model["top_k"],
                                        image_size=state["sizes"][row])
        ng = bool(len(scores)) and float(scores[0]) >= ng_threshold
        listed = scores >= score_threshold
        defects = to_detections(boxes[listed], scores[listed], classes[listed], model["classes"])
        results.append({"view_id": view_id, "verdict": "NG" if ng else "OK", "defects": defects})
        if ng:
            failed.append(view_id)
    result = {"verdict": "NG" if failed else "OK", "failed_views": failed, "views": results}
    if not state["multi"]:
        result["detections"] = results[0]["defects"]  # one image: the shape `serving test` scores boxes of
    return result


@net_inference_handler
def net_inference(model, requests):
    """One forward pass over every view of every product of the batch; one ret per product, in order. Whatever
    goes wrong with one product (bad input, an unexpected error) is that product's ret, never the batch's."""
    rets = [None] * len(requests)
    products = []  # (index in requests, working data)
    for index, request in enumerate(requests):
        try:
            state = request.get(_STATE) if isinstance(request, dict) else None
            # A host that skips net_preprocess (it is optional in the contract) hands the product over raw.
            products.append((index, state if state is not None else _product(model, request)))
        except ErrorBase as error:
            rets[index] = _failure(error.code, error.message)
        except Exception as error:  # noqa: BLE001 -- the contract's 599, for this product only
            CTX.logger.exception("mvi_defect: product %d of the batch failed", index)
            rets[index] = _failure(EXCEPTION_CODE, f"{type(error).__name__}: {error}")
    if not products:
        return rets, 0, ""
    outputs = _forward(model, [state for _, state in products])
    for (index, state), output in zip(products, outputs):
        if isinstance(output, str):
            rets[index] = _failure(INFERENCE_FAILED, output)
            continue
        try:
            rets[index] = {"code": 0, "message": "", "result": _result(model, state, output)}
        except Exception as error:  # noqa: BLE001 -- the contract's 599, for this product only
            CTX.logger.exception("mvi_defect: decoding product %d of the batch failed", index)
            rets[index] = _failure(EXCEPTION_CODE, f"{type(error).__name__}: {error}")
    return rets, 0, ""
