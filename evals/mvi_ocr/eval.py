"""``mvi_ocr``: reads the product code printed on a part (seed 000's MVI ``ocr_task``), with the PP-OCRv4 text
detector and recogniser that ship inside the ``rapidocr-onnxruntime`` package (Apache-2.0); nothing is
downloaded at run time.

Request
    ``data``: ``{"body": <encoded image bytes>}`` or ``{"uri": <path under a --data-root>}`` (any format
    ``evals.utils.load_image`` decodes), or a list of such dicts (a multi-image request, at most ``batch_size``
    images). ``params`` (all optional; any other key is refused with 400):

    ``charset``
        the characters a line may be read as: a name (``digits``, ``upper``, ``alnum``, ``code`` = digits and
        capitals without I, O and Q, ``hex``) or a literal string of the allowed characters; see
        :mod:`evals.mvi_ocr.charsets`. Decoding picks the best *allowed* character at every step, so a round
        glyph the recogniser takes for ``O`` comes out as ``0`` under ``digits``. Absent: every character the
        recogniser knows (about 6,600, Chinese included), unless ``app.json`` sets
        ``custom_params.default_charset`` (same forms): then that, for callers that cannot send params (the
        seed's ``ocr_task``).
    ``min_score``
        a number in [0, 1], default 0.5: lines whose score is lower are left out.

Result (one image)
    ``{"code_str": str, "score": float, "lines": [{"text": str, "score": float, "polygon": [[x, y] x 4]}]}``

    ``lines`` are the lines read, in reading order (top to bottom, then left to right), each with its text
    (spaces at either end removed), its score (mean probability of its characters, 0..1) and its quadrilateral
    in image pixels (top-left, top-right, bottom-right, bottom-left). ``code_str`` is the text of the longest
    line (most characters; a tie goes to the higher score): a part carries one code, and the other things a
    detector may pick up around it (a stray mark, a fragment of a logo) are shorter. ``score`` is that line's
    score. An image where nothing is read gets ``code_str`` ``""``, ``score`` 0.0 and no lines: an answer,
    not an error. A multi-image request gets ``{"images": [<one such dict per image>]}``.

Errors
    400: no image, an image that does not decode (or is too small or too large), a bad param (the message names
    it: not a string / empty / characters the recogniser cannot read for ``charset``, not a number in [0, 1] for
    ``min_score``), a multi-image request larger than ``batch_size``; 403: a ``uri`` outside the data roots.
    A bad request fails alone, never its batch.

How it runs
    ``net_preprocess`` (per request, on the worker pool) decodes the image, runs the detector on it and cuts out
    each line's crop, scaled to the recogniser's 48-pixel height. ``net_inference`` gathers the crops of every
    request of the batch and runs the recogniser ONCE over all of them (right-padded to the widest, at least
    ``rec_min_width``): lines from concurrent callers share one network call. The angle classifier of the package is not run: codes are read
    as printed, within a few degrees of horizontal.

Settings (``app.json`` ``model_params``; unknown keys are refused at start-up, naming the key)
    ``det_threads``, ``rec_threads``: ONNX Runtime intra-op threads of each network (spinning is off, so idle
    threads leave the cores to the worker pool); ``det_max_side``, ``det_thresh``, ``det_box_thresh``,
    ``det_unclip_ratio``, ``det_max_lines``: see :class:`evals.mvi_ocr.detection.DetectorSettings`;
    ``rec_max_width``: the widest a line gets at 48 pixels high; ``rec_min_width``: the narrowest a recognition
    batch is padded to (640: blank room after the text makes the recogniser more accurate, see
    :class:`evals.mvi_ocr.recognition.TextRecognizer`). ``model_files`` ``det`` / ``rec`` replace
    the package's model files (same formats). Thread counts are at most 256, sizes and widths at most 16384,
    ``det_max_lines`` at most 4096 and ``det_unclip_ratio`` at most 100; a value out of range (an integer too
    large for a float included) is refused at start-up, naming the key.

Metrics: each recogniser call observes ``ava_serving_eval_response_time{method="py.forward", number=<lines>}`` and
each ``net_inference`` ``{method="py.inference", number=<requests>}``, so batching shows on ``/metrics``.
"""

import os
from importlib.resources import files

import onnxruntime as ort

from evals.mvi_ocr.charsets import CharsetError
from evals.mvi_ocr.detection import DetectorSettings, TextDetector, crop_line
from evals.mvi_ocr.recognition import TextRecognizer
from evals.utils import (CTX, create_net_handler, load_image, monitor_rt_forward, monitor_rt_inference,
                         net_inference_handler, net_preprocess_handler, request_images)
from evals.utils.error import ErrorBase, ErrorFileNotExist

BAD_REQUEST = 400

DEFAULT_MIN_SCORE = 0.5
PARAMS = ("charset", "min_score")

# The package's files; `model_files` in app.json overrides them.
PACKAGE_MODELS = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx"}

# model_params: name -> (default, kind, upper bound or None); kinds are checked by _setting. The bounds keep a
# setting within what ONNX Runtime and the pre/post-processing take (a thread count is a C int; an integer too
# large for a float would otherwise raise OverflowError there, far from the key that caused it) and well above
# any sensible value: images are at most 4999 pixels a side (evals.utils.load_image).
_MAX_THREADS = 256
_MAX_PIXELS = 16384
_SETTINGS = {
    "det_threads": (1, "count", _MAX_THREADS),
    "rec_threads": (2, "count", _MAX_THREADS),
    "det_max_side": (DetectorSettings.max_side, "count", _MAX_PIXELS),
    "det_thresh": (DetectorSettings.thresh, "fraction", None),
    "det_box_thresh": (DetectorSettings.box_thresh, "fraction", None),
    "det_unclip_ratio": (DetectorSettings.unclip_ratio, "positive", 100),
    "det_max_lines": (DetectorSettings.max_lines, "count", 4096),
    "rec_max_width": (1280, "count", _MAX_PIXELS),
    "rec_min_width": (640, "count", _MAX_PIXELS),
}
# How much of a refused value a message repeats: the value comes from a caller or a config file.
_MAX_SHOWN_CHARS = 60

# A request's own state between net_preprocess and net_inference, under this key of the request.
_STATE = "_mvi_ocr"


@create_net_handler
def create_net(configs):
    """Open both networks with the app's thread settings; ``(model, 0, "")``."""
    settings = _settings(configs.get("model_params") or {})
    paths = _model_paths(configs.get("model_files") or {})
    providers = _providers(configs.get("use_device"))
    detector = TextDetector(
        _session(paths["det"], settings["det_threads"], providers),
        DetectorSettings(max_side=settings["det_max_side"], thresh=settings["det_thresh"],
                         box_thresh=settings["det_box_thresh"], unclip_ratio=settings["det_unclip_ratio"],
                         max_lines=settings["det_max_lines"]))
    try:
        recognizer = TextRecognizer(_session(paths["rec"], settings["rec_threads"], providers),
                                    max_width=settings["rec_max_width"], min_width=settings["rec_min_width"])
    except ValueError as error:
        raise ErrorBase(BAD_REQUEST, f"model_files.rec: {error}") from None
    default_charset = _default_charset(recognizer, configs.get("custom_params") or {})
    model = {"detector": detector, "recognizer": recognizer, "default_charset": default_charset,
             "batch_size": int(configs.get("batch_size") or 1)}
    CTX.logger.info("mvi_ocr: det %s, rec %s (%d classes), providers %s, settings %s", paths["det"], paths["rec"],
                    len(recognizer.classes), providers, settings)
    return model, 0, ""


@net_preprocess_handler
def net_preprocess(model, request):
    """Check the params, decode every image, detect its lines and prepare their crops for recognition."""
    items, multi = request_images(request, model["batch_size"])
    allowed, min_score = _params(model, request)
    detector, recognizer = model["detector"], model["recognizer"]
    images = []
    for item in items:
        image = _load(item)
        lines = detector.detect(image)
        images.append([(line.polygon, recognizer.line_image(crop_line(image, line.polygon))) for line in lines])
    request[_STATE] = {"images": images, "multi": multi, "allowed": allowed, "min_score": min_score}
    return request, 0, ""


@net_inference_handler
def net_inference(model, requests):
    """Recognise the lines of every request of the batch in one network call; one ret per request, in order."""
    recognizer = model["recognizer"]
    with monitor_rt_inference(number=len(requests)).time():
        lines = [line for request in requests for image in _state(request)["images"] for _, line in image]
        probabilities = []
        if lines:
            with monitor_rt_forward(number=len(lines)).time():
                probabilities = recognizer.run(lines)
        rets, row = [], 0
        for request in requests:
            state = _state(request)
            results = []
            for image in state["images"]:
                read = []
                for polygon, _ in image:
                    text, score = recognizer.decode(probabilities[row], state["allowed"])
                    row += 1
                    if text and score >= state["min_score"]:
                        read.append({"text": text, "score": score,
                                     "polygon": [[round(float(x), 1), round(float(y), 1)] for x, y in polygon]})
                results.append(image_result(read))
            result = {"images": results} if state["multi"] else results[0]
            rets.append({"code": 0, "message": "", "result": result})
    return rets, 0, ""


# ---------------------------------------------------------------------------------------------- requests


def _load(item):
    body, uri = item.get("body"), item.get("uri")
    if (body is None or len(body) == 0) and not uri:
        raise ErrorBase(BAD_REQUEST, "image has no body or uri")
    return load_image(uri, body)


def _params(model, request):
    """``(allowed classes or None, min_score)`` from the request's params, or a 400 naming the bad one."""
    params = request.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ErrorBase(BAD_REQUEST, f"params must be an object, got {type(params).__name__}")
    unknown = sorted(str(key) for key in params if key not in PARAMS)
    if unknown:
        raise ErrorBase(BAD_REQUEST, f"unknown params {', '.join(unknown)}; mvi_ocr takes {', '.join(PARAMS)}")
    charset = params.get("charset", model["default_charset"])
    if charset is not None and not isinstance(charset, str):
        raise ErrorBase(BAD_REQUEST, f"params.charset must be a string (a set name or the allowed characters), "
                                     f"got {type(charset).__name__}")
    try:
        allowed = model["recognizer"].allowed_classes(charset)
    except CharsetError as error:
        raise ErrorBase(BAD_REQUEST, str(error)) from None
    min_score = params.get("min_score", DEFAULT_MIN_SCORE)
    # The range is checked by comparing, before any conversion: an int too large for a float (valid JSON) then
    # fails like 2 does, and NaN and infinities fail the comparison too.
    if not _is_number(min_score) or not 0 <= min_score <= 1:
        raise ErrorBase(BAD_REQUEST, f"params.min_score must be a number in [0, 1], got {_shown(min_score)}")
    return allowed, float(min_score)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value):
    """``repr(value)`` for a message, cut short (a huge int has hundreds of digits, or more than str() takes)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[:_MAX_SHOWN_CHARS] + "..."


def _state(request):
    return request[_STATE]


def image_result(lines):
    """The result of one image from its lines (dicts with text, score, polygon, in reading order): picks
    ``code_str`` by the rule of the module docstring (the longest line; a tie goes to the higher score)."""
    if not lines:
        return {"code_str": "", "score": 0.0, "lines": []}
    best = max(lines, key=lambda line: (len(line["text"]), line["score"]))
    return {"code_str": best["text"], "score": best["score"], "lines": lines}


# ---------------------------------------------------------------------------------------------- settings


def _settings(model_params):
    """The effective model_params, each checked; unknown keys are refused by name."""
    if not isinstance(model_params, dict):
        raise ErrorBase(BAD_REQUEST, "model_params must be an object")
    unknown = sorted(set(model_params) - set(_SETTINGS))
    if unknown:
        raise ErrorBase(BAD_REQUEST, f"model_params.{unknown[0]} is not a setting of mvi_ocr; "
                                     f"known: {', '.join(sorted(_SETTINGS))}")
    return {name: _setting(name, model_params.get(name, default), kind, bound)
            for name, (default, kind, bound) in _SETTINGS.items()}


def _setting(name, value, kind, bound):
    """`value` if it is a valid setting of `kind` (at most `bound`), else a 400 naming ``model_params.<name>``.
    Only comparisons, no float conversion: NaN and infinities fail them, and so does an int too large for a float
    (it would raise OverflowError, naming nothing)."""
    if kind == "count":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= bound
    elif kind == "fraction":
        ok = _is_number(value) and 0 < value < 1
    else:
        ok = _is_number(value) and 0 < value <= bound
    if not ok:
        wanted = {"count": f"an integer from 1 to {bound}", "fraction": "a number between 0 and 1",
                  "positive": f"a number > 0 and at most {bound}"}[kind]
        raise ErrorBase(BAD_REQUEST, f"model_params.{name} must be {wanted}, got {_shown(value)}")
    return value


def _default_charset(recognizer, custom_params):
    unknown = sorted(set(custom_params) - {"default_charset"})
    if unknown:
        raise ErrorBase(BAD_REQUEST, f"custom_params.{unknown[0]} is not a setting of mvi_ocr; known: default_charset")
    charset = custom_params.get("default_charset")
    if charset is None:
        return None
    try:
        if not isinstance(charset, str):
            raise CharsetError(f"must be a string, got {type(charset).__name__}")
        recognizer.allowed_classes(charset)
    except CharsetError as error:
        raise ErrorBase(BAD_REQUEST, f"custom_params.default_charset: {error}") from None
    return charset


def _model_paths(model_files):
    unknown = sorted(set(model_files) - set(PACKAGE_MODELS))
    if unknown:
        raise ErrorBase(BAD_REQUEST, f"model_files.{unknown[0]} is not a model of mvi_ocr; known: det, rec")
    paths = {}
    for name, filename in PACKAGE_MODELS.items():
        path = model_files.get(name) or str(files("rapidocr_onnxruntime") / "models" / filename)
        if not os.path.isfile(path):
            raise ErrorFileNotExist(path)
        paths[name] = path
    return paths


def _providers(use_device):
    if use_device == "GPU":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        CTX.logger.warning("use_device is GPU but this onnxruntime has no CUDA provider; running on CPU")
    return ["CPUExecutionProvider"]


def _session(path, threads, providers):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One run at a time per session call; a second inter-op thread would only idle.
    options.inter_op_num_threads = 1
    # Idle ORT threads spin by default, burning the cores that the other network and the worker pool need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=providers)
