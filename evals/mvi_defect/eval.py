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

from evals.utils import CTX, create_net_handler, load_image, net_inference_handler, net_preprocess_handler
from evals.utils.error import ErrorBase
from evals.utils.onnx import onnx_session
from evals.utils.request import request_images
from serving.training.detector_ops import (app_settings, check_fraction, check_model_input, decode, forward,
                                           preprocess, to_detections)

BAD_REQUEST = 400
INFERENCE_FAILED = 500
# Listing and verdict threshold when app.json names none (build_model.py writes the tuned ones).
DEFAULT_SCORE_THRESHOLD = 0.3


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


def _views(request, batch_size=None):
    """The product's view dicts, each with its "view_id" (400 for a malformed product or a repeated view id)."""
    views, _ = request_images(request, batch_size)
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
    return (_fraction(params.get("score_threshold", model["score_threshold"]), "params.score_threshold"),
            _fraction(params.get("ng_threshold", model["ng_threshold"]), "params.ng_threshold"))


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
    views = _views(request, model["batch_size"])
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
        heatmap, size, offset = forward(model["session"], model["input_name"], model["output_names"], tensors,
                                        model["tta"])
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
