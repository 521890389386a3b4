"""mvi_defect: multi-view defect detection (the MVI platform's defect_detect_task) as an app.

The detector is the project's own: trained by serving.training on `serving dataset synth` surfaces (classes
scratch, spot, crack, pit) and exported to ``model.onnx`` by ``build_model.py`` (``model.json`` records the
command, the parameters and the figures). Preprocessing and decoding are serving.training.detector_ops, the
very functions the trainer scored the model with.

Requests. One request is one product: ``data`` is the list of its views, each ``{"body" | "uri": image,
"attribute": {"view_id": int}}`` (view ids default to 1, 2, ... in order), or a single such dict for a one-view
product. All views of a product run in one forward pass, together with the other products of the batch; a
product may have at most ``batch_size`` views (400 otherwise). Params (optional): ``score_threshold`` (the
defects listed, default app.json's), ``ng_threshold`` (a view fails when one of its defects scores at least
this; default app.json's, chosen on validation data by build_model.py).

Result::

    {"verdict": "OK" | "NG", "failed_views": [view ids], "views": [{"view_id": int, "verdict": "OK" | "NG",
     "defects": [{"class": str, "score": float, "box": [x1, y1, x2, y2]}, ...]}, ...]}

plus, when ``data`` is a single view dict, ``"detections"``: that view's defects (what ``serving test --labels
coco.json`` scores). Boxes are in image pixels, best first. A view whose image is missing or does not decode fails the whole
product with 400 naming the view: a verdict needs every view.
"""
import numpy as np

from evals.utils import CTX, create_net_handler, load_image, net_inference_handler, net_preprocess_handler
from evals.utils.error import ErrorBase, ErrorConfig, ErrorOutOfBatchSize
from evals.utils.onnx import onnx_session
from serving.training.detector_ops import decode, preprocess, to_detections

BAD_REQUEST = 400
INFERENCE_FAILED = 500


def _threshold(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ErrorBase(BAD_REQUEST, f"{where} must be a number in [0, 1], got {value!r}")
    return float(value)


@create_net_handler
def create_net(configs):
    custom = configs.get("custom_params") or {}
    classes = custom.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ErrorConfig("custom_params.classes")
    input_size = custom.get("input_size")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
        raise ErrorBase(BAD_REQUEST, f"custom_params.input_size must be an integer >= 32, got {input_size!r}")
    top_k = custom.get("top_k", 100)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ErrorBase(BAD_REQUEST, f"custom_params.top_k must be a positive integer, got {top_k!r}")
    session = onnx_session(configs)
    model_input = session.get_inputs()[0]
    if list(model_input.shape[1:]) != [3, input_size, input_size]:
        raise ErrorBase(BAD_REQUEST, f"model input has shape {model_input.shape}, custom_params.input_size is "
                                     f"{input_size}")
    heatmap = session.get_outputs()[0]
    if isinstance(heatmap.shape[1], int) and heatmap.shape[1] != len(classes):
        raise ErrorBase(BAD_REQUEST, f"the model detects {heatmap.shape[1]} classes, custom_params.classes lists "
                                     f"{len(classes)}")
    model = {
        "session": session, "input_name": model_input.name,
        "output_names": [output.name for output in session.get_outputs()], "classes": classes,
        "input_size": input_size, "top_k": top_k, "batch_size": int(configs.get("batch_size") or 1),
        "score_threshold": _threshold(custom.get("score_threshold", 0.3), "custom_params.score_threshold"),
        "ng_threshold": _threshold(custom.get("ng_threshold", 0.3), "custom_params.ng_threshold"),
    }
    CTX.logger.info("mvi_defect: %d classes, input %d, NG threshold %.3f, batch_size %d", len(classes), input_size,
                    model["ng_threshold"], model["batch_size"])
    return model, 0, ""


def _views(request):
    """The product's view dicts, each with its "view_id"."""
    data = request.get("data") if isinstance(request, dict) else None
    views = data if isinstance(data, list) else [data] if isinstance(data, dict) else None
    if not views or not all(isinstance(view, dict) for view in views):
        raise ErrorBase(BAD_REQUEST, "a product needs data: one view dict or a non-empty list of them")
    seen = set()
    for index, view in enumerate(views):
        if "view_id" not in view:
            attribute = view.get("attribute")
            view_id = attribute.get("view_id", index + 1) if isinstance(attribute, dict) else index + 1
            if isinstance(view_id, bool) or not isinstance(view_id, int):
                raise ErrorBase(BAD_REQUEST, f"view {index + 1}: attribute.view_id must be an integer, got "
                                             f"{view_id!r}")
            view["view_id"] = view_id
        if view["view_id"] in seen:
            raise ErrorBase(BAD_REQUEST, f"view id {view['view_id']} appears twice in one product")
        seen.add(view["view_id"])
    return views


def _params(model, request):
    params = request.get("params") or {}
    if not isinstance(params, dict):
        raise ErrorBase(BAD_REQUEST, f"params must be an object, got {type(params).__name__}")
    return (_threshold(params.get("score_threshold", model["score_threshold"]), "params.score_threshold"),
            _threshold(params.get("ng_threshold", model["ng_threshold"]), "params.ng_threshold"))


def _prepare(model, view):
    """Decode and preprocess one view once: its network input, scale and image size."""
    if "tensor" in view:
        return
    if not view.get("body") and not view.get("uri"):
        raise ErrorBase(BAD_REQUEST, f"view {view['view_id']} has no image (body or uri)")
    try:
        image = load_image(view.get("uri"), view.get("body"))
    except ErrorBase as error:
        raise ErrorBase(error.code, f"view {view['view_id']}: {error.message}") from None
    view["tensor"], view["scale"] = preprocess(image, model["input_size"])
    view["size"] = (image.shape[1], image.shape[0])


@net_preprocess_handler
def net_preprocess(model, request):
    views = _views(request)
    if len(views) > model["batch_size"]:
        raise ErrorOutOfBatchSize(model["batch_size"])
    _params(model, request)  # a bad parameter fails now, before the product joins a batch
    for view in views:
        _prepare(model, view)
    return request, 0, ""


@net_inference_handler
def net_inference(model, requests):
    """One forward pass over every view of every product of the batch; one ret per product, in order."""
    rets = [None] * len(requests)
    products, tensors = [], []
    for index, request in enumerate(requests):
        try:
            views = _views(request)
            thresholds = _params(model, request)
            for view in views:
                _prepare(model, view)
        except ErrorBase as error:
            rets[index] = {"code": error.code, "message": error.message, "result": None}
            continue
        products.append((index, views, len(tensors), thresholds))
        tensors.extend(view["tensor"] for view in views)
    if not tensors:
        return rets, 0, ""
    try:
        heatmap, size, offset = model["session"].run(model["output_names"], {model["input_name"]: np.stack(tensors)})
    except Exception as error:  # noqa: BLE001 -- any ONNX Runtime failure fails the batch alike
        CTX.logger.exception("mvi_defect: forward pass failed")
        return None, INFERENCE_FAILED, f"forward inference failed: {error}"
    for index, views, start, (score_threshold, ng_threshold) in products:
        results, failed = [], []
        for k, view in enumerate(views):
            row = start + k
            # Decode down to the lower of the two thresholds: the verdict may rest on a defect not listed.
            boxes, scores, classes = decode(heatmap[row], size[row], offset[row], view["scale"],
                                            min(score_threshold, ng_threshold), model["top_k"],
                                            image_size=view["size"])
            ng = bool(len(scores)) and float(scores[0]) >= ng_threshold
            listed = scores >= score_threshold
            defects = to_detections(boxes[listed], scores[listed], classes[listed], model["classes"])
            results.append({"view_id": view["view_id"], "verdict": "NG" if ng else "OK", "defects": defects})
            if ng:
                failed.append(view["view_id"])
        result = {"verdict": "NG" if failed else "OK", "failed_views": failed, "views": results}
        if not isinstance(requests[index]["data"], list):
            result["detections"] = results[0]["defects"]  # one image: the shape `serving test` scores boxes of
        rets[index] = {"code": 0, "message": "", "result": result}
    return rets, 0, ""
