"""Tests of the eval API (``evals.utils``): real images, real loggers, the real Prometheus registry; no mocks."""

import importlib
import importlib.util
import io
import json
import logging
import pickle
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from prometheus_client import REGISTRY, generate_latest  # noqa: E402

import evals  # noqa: E402
import evals.utils  # noqa: E402
from evals.utils import (  # noqa: E402
    CTX,
    ErrorBase,
    create_net_handler,
    net_inference_handler,
    net_preprocess_handler,
)
from evals.utils import error as E  # noqa: E402
from evals.utils.context import set_request_context  # noqa: E402
from evals.utils.helpers import (  # noqa: E402
    _make_synset,
    _make_tag,
    file_check,
    infer_output_marshal,
    parse_crop_size,
    parse_params_file,
    value_check,
)
from evals.utils.image import image_header_size, load_image, square_bgr  # noqa: E402
from evals.utils.logger import LOG_FORMAT, ReqidDefaultFilter, logger  # noqa: E402
from evals.utils.monitor import (  # noqa: E402
    monitor_rt_forward,
    monitor_rt_inference,
    monitor_rt_load,
    monitor_rt_post,
    monitor_rt_transform,
    response_time_histogram,
)

APPS = Path(__file__).resolve().parent / "apps"
MIB = 1024 * 1024


# --- helpers ---------------------------------------------------------------------------------------


class CaptureLog:
    """Collect the "evals" logger's output in a StringIO, formatted like the real handler."""

    def __init__(self):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.handler.addFilter(ReqidDefaultFilter())

    def __enter__(self):
        logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        logger.removeHandler(self.handler)

    @property
    def text(self):
        return self.stream.getvalue()


def run_in_thread(func):
    """Run `func` on a fresh thread; return its result or re-raise its exception."""
    box = {}

    def target():
        try:
            box["value"] = func()
        except BaseException as error:  # noqa: BLE001 -- re-raised below on the test thread
            box["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(10)
    if "error" in box:
        raise box["error"]
    return box["value"]


def pattern(height, width, channels=3):
    """A deterministic, non-uniform uint8 image."""
    ys, xs = np.mgrid[0:height, 0:width]
    planes = [((xs * 7 + ys * 3 + c * 50) % 256).astype(np.uint8) for c in range(channels)]
    return planes[0] if channels == 1 else np.dstack(planes)


def encode(image, ext=".png", params=()):
    ok, buf = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"cv2.imencode({ext}) failed")
    return buf.tobytes()


def solid(height, width, bgr):
    image = np.empty((height, width, 3), np.uint8)
    image[:] = bgr
    return image


# --- decorators ------------------------------------------------------------------------------------


def test_create_net_success_sets_context():
    seen = {}

    @create_net_handler
    def create_net(configs):
        """docstring kept"""
        seen["app"] = CTX.app
        seen["reqID"] = CTX.reqID
        seen["extra"] = dict(CTX.logger.extra)
        return {"net": configs["batch_size"]}, 0, ""

    result = create_net({"app": "demo", "batch_size": 4})
    assert result == ({"net": 4}, 0, "")
    assert isinstance(result, tuple)
    assert seen == {"app": "demo", "reqID": "net_init", "extra": {"reqid": "net_init"}}
    assert create_net.__name__ == "create_net"
    assert create_net.__doc__ == "docstring kept"
    assert create_net.__wrapped__(  # functools.wraps keeps the original reachable
        {"batch_size": 1}) == ({"net": 1}, 0, "")


def test_create_net_without_app_key():
    @create_net_handler
    def create_net(configs):
        return CTX.app, 0, ""

    assert create_net({}) == ("", 0, "")
    assert CTX.reqID == "net_init"


def test_create_net_error_base_becomes_triple():
    @create_net_handler
    def create_net(configs):
        raise E.ErrorConfig("model_files")

    assert create_net({"app": "a"}) == (None, 400, "no model_files config set")


def test_create_net_generic_exception_is_599_and_logged_with_traceback():
    @create_net_handler
    def create_net(configs):
        raise RuntimeError("weights are corrupt")

    with CaptureLog() as log:
        assert create_net({"app": "a"}) == (None, 599, "weights are corrupt")
    assert "Traceback" in log.text
    assert "weights are corrupt" in log.text
    assert "[net_init]" in log.text


def test_exception_without_message_reports_its_class_name():
    @create_net_handler
    def create_net(configs):
        raise KeyError() if configs else ValueError()

    assert create_net({}) == (None, 599, "ValueError")
    assert create_net({"x": 1}) == (None, 599, "KeyError")


def test_non_triple_return_is_599():
    @create_net_handler
    def create_net(configs):
        return {"net": 1}

    model, code, message = create_net({})
    assert (model, code) == (None, 599)
    assert "expected a 3-tuple" in message

    @net_inference_handler
    def net_inference(model, requests):
        return None

    assert net_inference({}, [])[:2] == (None, 599)


def test_preprocess_returns_incoming_request_on_error():
    request = {"data": {"uri": "x"}, "params": {}}

    @net_preprocess_handler
    def net_preprocess(model, req):
        req["params"]["touched"] = True
        raise E.ErrorCV2ImageRead("x")

    assert net_preprocess({}, request) == (request, 400, "cv2 load x failed")

    @net_preprocess_handler
    def net_preprocess_crash(model, req):
        return 1 / 0

    assert net_preprocess_crash({}, request) == (request, 599, "division by zero")

    @net_preprocess_handler
    def net_preprocess_ok(model, req):
        return dict(req, params={"ok": True}), 0, ""

    assert net_preprocess_ok({}, request) == ({"data": {"uri": "x"}, "params": {"ok": True}}, 0, "")


def test_inference_adds_origin_header():
    set_request_context("myapp", ["r1", "r2", "r3", "r4"])

    @net_inference_handler
    def net_inference(model, requests):
        return [
            {"code": 0, "message": "", "result": {}},
            {"code": 0, "message": "", "result": {}, "header": {"X-Other": ["1"]}},
            {"code": 0, "message": "", "result": {}, "header": {"X-Origin-A": ["MINE:2"]}},
            "not a dict",
        ], 0, ""

    rets, code, message = net_inference({}, [{}, {}, {}, {}])
    assert (code, message) == (0, "")
    assert rets[0]["header"] == {"X-Origin-A": ["MYAPP:1"]}
    assert rets[1]["header"] == {"X-Other": ["1"], "X-Origin-A": ["MYAPP:1"]}
    assert rets[2]["header"] == {"X-Origin-A": ["MINE:2"]}  # the script's own value is kept
    assert rets[3] == "not a dict"


def test_inference_reads_runtime_context():
    seen = {}

    @net_inference_handler
    def net_inference(model, requests):
        seen["app"], seen["reqID"], seen["extra"] = CTX.app, CTX.reqID, dict(CTX.logger.extra)
        CTX.logger.info("batch of %d", len(requests))
        return [{"code": 0, "message": "", "result": {}} for _ in requests], 0, ""

    def call():
        CTX.app = "runtime_app"          # what the runtime does before calling net_inference
        CTX.reqID = "id-1,id-2"
        with CaptureLog() as log:
            rets, code, _ = net_inference({}, [{}, {}])
        return rets, code, log.text

    rets, code, text = run_in_thread(call)
    assert code == 0
    assert seen == {"app": "runtime_app", "reqID": "id-1,id-2", "extra": {"reqid": "id-1,id-2"}}
    assert "[id-1,id-2]" in text and "batch of 2" in text
    assert [r["header"] for r in rets] == [{"X-Origin-A": ["RUNTIME_APP:1"]}] * 2


def test_inference_errors():
    @net_inference_handler
    def out_of_batch(model, requests):
        raise E.ErrorOutOfBatchSize(2)

    assert out_of_batch({}, [{}, {}, {}]) == (None, 400, "eval request out of batch_size 2")

    @net_inference_handler
    def crash(model, requests):
        return requests[10], 0, ""

    rets, code, message = crash({}, [])
    assert (rets, code) == (None, 599)
    assert "index out of range" in message

    @net_inference_handler
    def whole_call_failed(model, requests):
        return None, 500, "gpu lost"

    assert whole_call_failed({}, [{}]) == (None, 500, "gpu lost")


def test_inference_map_result_becomes_list():
    set_request_context("m", "r")

    @net_inference_handler
    def net_inference(model, requests):
        return map(lambda r: {"code": 0, "message": "", "result": r}, requests), 0, ""

    rets, code, _ = net_inference({}, [1, 2])
    assert isinstance(rets, list) and code == 0
    assert [r["result"] for r in rets] == [1, 2]
    assert all(r["header"] == {"X-Origin-A": ["M:1"]} for r in rets)

    @net_inference_handler
    def lazy_failure(model, requests):
        return map(lambda r: 1 / r, requests), 0, ""

    assert lazy_failure({}, [0]) == (None, 599, "division by zero")


def test_ctx_is_thread_local():
    set_request_context("main_app", "main-req")
    assert isinstance(CTX, threading.local)

    def other():
        before = (CTX.app, CTX.reqID, dict(CTX.logger.extra))

        @create_net_handler
        def create_net(configs):
            return (CTX.app, CTX.reqID), 0, ""

        inside = create_net({"app": "thread_app"})[0]
        return before, inside, (CTX.app, CTX.reqID)

    before, inside, after = run_in_thread(other)
    assert before == ("", "", {"reqid": "-"})   # defaults on a thread where nothing was set
    assert inside == ("thread_app", "net_init")
    assert after == ("thread_app", "net_init")
    assert (CTX.app, CTX.reqID) == ("main_app", "main-req")  # untouched by the other thread


def test_unset_context_defaults_in_direct_calls():
    def call():
        @net_inference_handler
        def net_inference(model, requests):
            CTX.logger.info("no runtime here")
            return [{"code": 0, "message": "", "result": {}}], 0, ""

        return net_inference({}, [{}])

    rets, code, _ = run_in_thread(call)
    assert code == 0
    assert rets[0]["header"] == {"X-Origin-A": [":1"]}


def test_set_request_context_joins_ids():
    logger_adapter = set_request_context("a", ("x", "y", 3))
    assert CTX.reqID == "x,y,3"
    assert logger_adapter is CTX.logger and CTX.logger.extra == {"reqid": "x,y,3"}
    set_request_context(None, None)
    assert (CTX.app, CTX.reqID) == ("", "")


# --- errors ----------------------------------------------------------------------------------------


ERROR_CASES = [
    (E.ErrorBase(), 599, "Unknown Error"),
    (E.ErrorBase(571, "retry me"), 571, "retry me"),
    (E.ErrorConfig("batch_size"), 400, "no batch_size config set"),
    (E.ErrorFileNotExist("/a/b.csv"), 400, "file not exist: /a/b.csv"),
    (E.ErrorRemoteURI("http://h/x.jpg"), 400, "remote uri not fetched, send the image bytes as body: http://h/x.jpg"),
    (E.ErrorCV2ImageRead("img.jpg"), 400, "cv2 load img.jpg failed"),
    (E.ErrorImageTooSmall("img.jpg"), 400, "image img.jpg is too small, should be more than 32x32"),
    (E.ErrorImageNdim("img.jpg"), 400, "image img.jpg with invalid ndim, should be 3"),
    (E.ErrorImageTooLarge("img.jpg"), 400, "image img.jpg is too large, should be in 4999x4999, less than 10MB"),
    (E.ErrorInvalidPTS([[1, 2]]), 400, "invalid pts [[1, 2]]"),
    (E.ErrorOutOfBatchSize(4), 400, "eval request out of batch_size 4"),
    (E.ErrorTransformImage("img.jpg"), 400, "fail to transform image img.jpg"),
    (E.ErrorNoPTS("img.jpg"), 400, "no pts provided for image img.jpg"),
    (E.ErrorForwardInference(), 500, "forward inference failed"),
]


@pytest.mark.parametrize("error,code,message", ERROR_CASES, ids=[type(c[0]).__name__ for c in ERROR_CASES])
def test_error_classes(error, code, message):
    assert isinstance(error, ErrorBase) and isinstance(error, Exception)
    assert error.code == code
    assert error.message == message
    assert str(error) == message
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and (copy.code, copy.message, str(copy)) == (code, message, message)


def test_error_attributes_and_hierarchy():
    assert E.ErrorConfig("k").value == "k"
    assert E.ErrorOutOfBatchSize(8).batch_size == 8
    assert isinstance(E.ErrorRemoteURI("https://x"), E.ErrorFileNotExist)
    with pytest.raises(ErrorBase) as info:
        raise E.ErrorNoPTS("p")
    assert info.value.code == 400


def test_star_imports():
    namespace = {}
    exec("from evals.utils import *", namespace)
    for name in ("create_net_handler", "net_preprocess_handler", "net_inference_handler", "CTX",
                 "ErrorBase", "ErrorOutOfBatchSize", "ErrorForwardInference", "value_check", "file_check",
                 "_make_synset", "_make_tag", "parse_crop_size", "infer_output_marshal", "parse_params_file",
                 "monitor_rt_load", "monitor_rt_forward", "monitor_rt_post", "monitor_rt_transform",
                 "monitor_rt_inference", "load_image", "logger", "traceback", "json", "os"):
        assert name in namespace, name
    assert "np" not in namespace and "cv2" not in namespace
    for name in evals.utils.__all__:
        assert hasattr(evals.utils, name), name

    errors = {}
    exec("from evals.utils.error import *", errors)
    assert {n for n in errors if n.startswith("Error")} == set(E.__all__)
    assert evals.utils.MONITOR_RESPONSETIME is response_time_histogram()


# --- load_image ------------------------------------------------------------------------------------


def test_load_png_body_roundtrip():
    image = pattern(48, 64)
    out = load_image("a.png", encode(image))
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    assert np.array_equal(out, image)


def test_load_jpeg_body_and_buffer_types():
    image = pattern(40, 70)
    body = encode(image, ".jpg", (cv2.IMWRITE_JPEG_QUALITY, 95))
    decoded = load_image("a.jpg", body)
    assert decoded.shape == (40, 70, 3) and decoded.dtype == np.uint8
    assert np.median(np.abs(decoded.astype(int) - image)) <= 4  # lossy, close
    # Every buffer type holding those bytes decodes to exactly the same pixels.
    for variant in (bytearray(body), memoryview(body), body.decode("latin-1")):
        np.testing.assert_array_equal(load_image("a.jpg", variant), decoded)


def test_load_grayscale_and_bgra_become_bgr():
    gray = pattern(40, 40, channels=1)
    out = load_image("g.png", encode(gray))
    assert out.shape == (40, 40, 3)
    assert np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)
    # BGRA: the alpha plane is dropped, the colour planes kept as they were.
    bgra = np.dstack([pattern(40, 50), np.full((40, 50), 128, np.uint8)])
    out4 = load_image("a.png", encode(bgra))
    assert out4.dtype == np.uint8 and out4.shape == (40, 50, 3)
    np.testing.assert_array_equal(out4, pattern(40, 50))
    # 16-bit: scaled back to 8 bits (its high byte), not clipped or truncated to the low byte (100 here).
    deep = pattern(40, 50).astype(np.uint16) * 256 + 100
    out16 = load_image("d.png", encode(deep))
    assert out16.dtype == np.uint8 and out16.shape == (40, 50, 3)
    np.testing.assert_array_equal(out16, pattern(40, 50))


@pytest.mark.parametrize("body", [b"", bytearray(), b"not an image at all" * 10, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_load_undecodable(body):
    with pytest.raises(E.ErrorCV2ImageRead) as info:
        load_image(None, body)
    assert info.value.code == 400


def test_load_truncated_png():
    body = encode(pattern(100, 100))
    with pytest.raises(E.ErrorCV2ImageRead):
        load_image("t.png", body[: len(body) // 2])


def test_load_too_small():
    with pytest.raises(E.ErrorImageTooSmall) as info:
        load_image("s.png", encode(pattern(32, 32)))
    assert info.value.message == "image s.png is too small, should be more than 32x32"
    with pytest.raises(E.ErrorImageTooSmall):
        load_image("s.png", encode(pattern(100, 32)))
    with pytest.raises(E.ErrorImageTooSmall):
        load_image("s.jpg", encode(pattern(20, 100), ".jpg"))
    assert load_image("ok.png", encode(pattern(33, 33))).shape == (33, 33, 3)


def test_load_too_large_side_png_and_jpeg():
    wide = pattern(40, 5000)
    png = encode(wide)
    assert image_header_size(png) == (5000, 40)
    with pytest.raises(E.ErrorImageTooLarge) as info:
        load_image("wide.png", png)
    assert info.value.message == "image wide.png is too large, should be in 4999x4999, less than 10MB"
    jpeg = encode(wide, ".jpg")
    assert image_header_size(jpeg) == (5000, 40)
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("wide.jpg", jpeg)
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("tall.png", encode(pattern(5000, 40, channels=1)))
    assert load_image("edge.png", encode(pattern(40, 4999, channels=1))).shape == (40, 4999, 3)


def test_too_large_is_refused_from_the_header_alone():
    # Only the header of a 5000 px wide PNG / JPEG: undecodable, yet refused as too large, which shows the
    # size is judged from the header before any decoding.
    png_head = encode(pattern(40, 5000))[:64]
    jpeg = encode(pattern(40, 5000), ".jpg")
    jpeg_head = jpeg[: jpeg.index(b"\xff\xc0") + 12]  # up to the end of the baseline frame header
    for name, head in (("bomb.png", png_head), ("bomb.jpg", jpeg_head)):
        assert image_header_size(head) == (5000, 40)
        with pytest.raises(E.ErrorImageTooLarge):
            load_image(name, head)
    # A PNG header claiming 100000 x 100000 pixels (a decompression bomb) is refused without decoding.
    bomb = bytearray(encode(pattern(40, 40)))
    bomb[16:24] = (100000).to_bytes(4, "big") * 2
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("bomb.png", bytes(bomb))


def test_body_over_10_mib():
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("big", b"\x00" * (10 * MIB + 1))
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("big", memoryview(bytearray(10 * MIB + 1)))
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("big", "\x00" * (10 * MIB + 1))
    with pytest.raises(E.ErrorCV2ImageRead):  # exactly 10 MiB passes the size check, then fails to decode
        load_image("big", b"\x00" * (10 * MIB))


def test_load_from_path(tmp_path):
    image = pattern(50, 60)
    path = tmp_path / "img.png"
    path.write_bytes(encode(image))
    assert np.array_equal(load_image(str(path)), image)
    assert np.array_equal(load_image(path), image)
    assert np.array_equal(load_image("file://" + str(path)), image)
    assert np.array_equal(load_image(str(path), b""), image)  # an empty body falls back to the uri
    assert np.array_equal(load_image(str(path), body=None), image)


def test_load_path_errors(tmp_path):
    missing = str(tmp_path / "missing.png")
    with pytest.raises(E.ErrorFileNotExist) as info:
        load_image(missing)
    assert info.value.message == f"file not exist: {missing}"
    with pytest.raises(E.ErrorFileNotExist):
        load_image(str(tmp_path))  # a directory
    for uri in (None, ""):
        with pytest.raises(E.ErrorFileNotExist):
            load_image(uri)
    big = tmp_path / "big.png"
    with open(big, "wb") as file:
        file.truncate(10 * MIB + 1)  # sparse: cheap
    with pytest.raises(E.ErrorImageTooLarge):
        load_image(str(big))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"garbage" * 20)
    with pytest.raises(E.ErrorCV2ImageRead):
        load_image(str(garbage))


@pytest.mark.parametrize("uri", ["http://example.com/a.jpg", "https://example.com/a.jpg", "HTTP://X/a", "s3://b/k"])
def test_load_never_fetches_urls(uri):
    with pytest.raises(E.ErrorRemoteURI) as info:
        load_image(uri)
    assert isinstance(info.value, E.ErrorFileNotExist) and info.value.code == 400
    assert uri in info.value.message
    # with a body, the uri is only a name
    assert load_image(uri, encode(pattern(40, 40))).shape == (40, 40, 3)


def test_image_header_size_formats():
    image = pattern(41, 77)
    assert image_header_size(encode(image, ".png")) == (77, 41)
    assert image_header_size(encode(image, ".jpg")) == (77, 41)
    assert image_header_size(encode(image, ".jpg", (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))) == (77, 41)
    assert image_header_size(encode(image, ".bmp")) == (77, 41)
    assert image_header_size(encode(image, ".gif")) == (77, 41)
    assert image_header_size(encode(image, ".webp")) == (77, 41)
    assert image_header_size(encode(image, ".webp", (cv2.IMWRITE_WEBP_QUALITY, 80))) == (77, 41)
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00" + (4999).to_bytes(3, "little") \
        + (99).to_bytes(3, "little")
    assert image_header_size(vp8x) == (5000, 100)
    assert image_header_size(encode(image, ".tiff")) is None  # decoded, then checked
    assert image_header_size(b"\xff\xd8\xff") is None
    assert image_header_size(b"") is None
    assert load_image("a.tiff", encode(image, ".tiff")).shape == (41, 77, 3)
    with pytest.raises(E.ErrorImageTooLarge):
        load_image("wide.tiff", encode(pattern(40, 5000, channels=1), ".tiff"))


def test_square_bgr_converts_resizes_and_refuses_malformed_arrays():
    image = pattern(40, 80)
    squared = square_bgr(image, 64)
    assert squared.shape == (64, 64, 3) and squared.dtype == np.uint8
    assert np.array_equal(square_bgr(image[:, :40], 40), image[:, :40])  # already square: unchanged
    grey = square_bgr(pattern(50, 50, channels=1), 50)
    assert grey.shape == (50, 50, 3) and np.array_equal(grey[..., 0], grey[..., 2])
    bgra = np.dstack([image, np.full((40, 80), 255, np.uint8)])
    assert np.array_equal(square_bgr(bgra, 32), square_bgr(image, 32))
    # Both sides shrink: area interpolation averages a one-pixel line instead of dropping it.
    lined = np.zeros((64, 64, 3), np.uint8)
    lined[:, 1::4] = 255
    assert square_bgr(lined, 16).min() == square_bgr(lined, 16).max() == 64
    with pytest.raises(ValueError, match=r"got shape \(5,\)"):
        square_bgr(np.zeros(5, np.uint8), 8)
    with pytest.raises(ValueError, match="got float32"):
        square_bgr(np.zeros((8, 8, 3), np.float32), 8)
    with pytest.raises(ValueError, match="got int64"):
        square_bgr(np.zeros((8, 8), np.int64), 8)  # not handed to OpenCV's conversion first


# --- logger ----------------------------------------------------------------------------------------


def test_logger_handler_formats_with_and_without_reqid():
    assert logger.name == "evals" and logger.propagate is False
    ours = [h for h in logger.handlers if getattr(h, "_evals_handler", False)]
    assert len(ours) == 1
    handler = ours[0]
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        logger.info("plain message")
        logger.info("explicit", extra={"reqid": "abc"})
        logging.LoggerAdapter(logger, {"reqid": "r-9"}).warning("adapted %d", 7)
        logging.getLogger("evals.someapp").info("child logger")
    finally:
        handler.setStream(previous)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert "[-]" in lines[0] and "plain message" in lines[0]
    assert "[abc]" in lines[1]
    assert "WARNING [r-9]" in lines[2] and "adapted 7" in lines[2]
    assert "[-]" in lines[3] and "child logger" in lines[3]


def test_logger_module_is_idempotent():
    before = list(logger.handlers)
    spec = importlib.util.spec_from_file_location("evals_logger_copy", ROOT / "evals" / "utils" / "logger.py")
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.logger is logger
    assert logger.handlers == before


# --- helpers ---------------------------------------------------------------------------------------


def test_value_check():
    configs = {"a": 1, "zero": 0, "empty": "", "none": None}
    assert value_check(configs, "a") == 1
    assert value_check(configs, "zero") == 0
    assert value_check(configs, "empty") == ""
    assert value_check(configs, "missing", False, "d") == "d"
    assert value_check(configs, "none", False, 5) == 5
    assert value_check(configs, "missing", must=False) is None
    for key in ("missing", "none"):
        with pytest.raises(E.ErrorConfig) as info:
            value_check(configs, key)
        assert info.value.message == f"no {key} config set"


def test_file_check(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("0,cat\n")
    configs = {"labels": str(path), "gone": str(tmp_path / "gone.csv"), "dir": str(tmp_path), "none": None}
    assert file_check(configs, "labels") == str(path)
    assert file_check(configs, "missing", must=False) is None
    assert file_check(configs, "none", must=False) is None
    with pytest.raises(E.ErrorConfig):
        file_check(configs, "missing")
    with pytest.raises(E.ErrorFileNotExist) as info:
        file_check(configs, "gone")
    assert info.value.message == f"file not exist: {tmp_path / 'gone.csv'}"
    with pytest.raises(E.ErrorFileNotExist):
        file_check(configs, "dir")
    with pytest.raises(E.ErrorFileNotExist):
        file_check({"bad": 3}, "bad")


def test_make_synset_and_tag(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text('0,"cat"\n1,"dog, big"\n2,\u732b\n', encoding="utf-8")
    assert _make_synset(str(csv_path)) == [["0", "cat"], ["1", "dog, big"], ["2", "\u732b"]]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert _make_synset(str(empty)) == []
    tag_path = tmp_path / "tags.json"
    tag_path.write_text('{\n  "tags": ["a",\n "b"],\n  "n": 2\n}\n')
    assert _make_tag(str(tag_path)) == {"tags": ["a", "b"], "n": 2}


def test_parse_crop_size():
    assert parse_crop_size({"model_params": {"cropSize": "224"}}) == (224, 224)
    assert parse_crop_size({"model_params": {"cropSize": "320x240"}}) == (320, 240)
    assert parse_crop_size({"model_params": {"cropSize": " 320X240 "}}) == (320, 240)
    assert parse_crop_size({"model_params": {"cropSize": 128}}) == (128, 128)
    assert parse_crop_size({}, model_params={"cropSize": "64x32"}) == (64, 32)
    assert parse_crop_size({}, default_image_width=300, default_image_height=200) == (300, 200)
    assert parse_crop_size({"model_params": {}}, default_image_width=300, default_image_height=200) == (300, 200)
    assert parse_crop_size({"model_params": {"cropSize": ""}}, default_image_width=7, default_image_height=9) == (7, 9)
    assert parse_crop_size({}) == (0, 0)
    assert parse_crop_size({}, default_image_width=100) == (100, 100)  # height falls back to width
    assert parse_crop_size({"image_width": 50, "image_height": 60}, default_image_width=1) == (50, 60)
    assert parse_crop_size({"custom_values": {"image_width": 70}}) == (70, 70)
    assert parse_crop_size({"custom_params": {"image_width": 80, "image_height": 90}}) == (80, 90)
    for bad in ("abc", "224x", "x224", "22.4", "0", "0x10", "-5", "1x2x3", True, [224]):
        with pytest.raises(E.ErrorConfig) as info:
            parse_crop_size({"model_params": {"cropSize": bad}})
        assert info.value.message == "no cropSize config set"


def test_infer_output_marshal():
    assert json.loads(infer_output_marshal([{"code": 0}])) == {"results": [{"code": 0}]}

    class Headers:
        def marshal(self):
            return {"X-A": ["1"]}

    assert json.loads(infer_output_marshal([], Headers())) == {"results": [], "headers": {"X-A": ["1"]}}
    assert json.loads(infer_output_marshal([], {"X-B": ["2"]})) == {"results": [], "headers": {"X-B": ["2"]}}


def test_parse_params_file():
    assert parse_params_file("model-0000.params") == ("model", 0)
    assert parse_params_file("/m/resnet-50-0012.params") == ("/m/resnet-50", 12)
    for bad in ("model.params", "model-abc.params", "-0001.params", "model-0001.bin", "model-\u00b2.params"):
        with pytest.raises(ErrorBase) as info:
            parse_params_file(bad)
        assert info.value.code == 400


# --- monitor ---------------------------------------------------------------------------------------


def _count(method, number, error="NIL"):
    return REGISTRY.get_sample_value(
        "ava_serving_eval_response_time_count", {"method": method, "error": error, "number": number}) or 0.0


def _sum(method, number, error="NIL"):
    return REGISTRY.get_sample_value(
        "ava_serving_eval_response_time_sum", {"method": method, "error": error, "number": number}) or 0.0


def test_monitor_observe_and_time_appear_in_metrics():
    # Each helper observes into its own method's series, once per call, with the value it was given.
    series = (("py.load", "NIL", 0.05), ("py.forward", "NIL", None), ("py.post", "E1", 0.2),
              ("py.transform", "NIL", 0.01), ("py.inference", "NIL", 1.5))
    before = {method: (_count(method, "3", error), _sum(method, "3", error)) for method, error, _ in series}
    post_nil = _count("py.post", "3")
    monitor_rt_load(3).observe(0.05)
    with monitor_rt_forward(number=3).time():
        pass
    monitor_rt_post(3, error="E1").observe(0.2)
    monitor_rt_transform(3).observe(0.01)
    monitor_rt_inference(3).observe(1.5)
    for method, error, value in series:
        count, total = before[method]
        assert _count(method, "3", error) == count + 1, method
        if value is not None:
            assert _sum(method, "3", error) == pytest.approx(total + value), method
    assert 0 <= _sum("py.forward", "3") - before["py.forward"][1] < 1  # .time() observed the elapsed time
    assert _count("py.post", "3") == post_nil  # error="E1" is a label of its own: nothing went to the NIL series
    text = generate_latest().decode()
    for method, error in (("py.load", "NIL"), ("py.forward", "NIL"), ("py.post", "E1"), ("py.transform", "NIL"),
                          ("py.inference", "NIL")):
        assert f'ava_serving_eval_response_time_count{{error="{error}",method="{method}",number="3"}}' in text \
            or f'ava_serving_eval_response_time_count{{method="{method}",error="{error}",number="3"}}' in text
    assert "ava_serving_eval_response_time_bucket" in text


def test_monitor_children_share_one_histogram_and_survive_reimport():
    histogram = response_time_histogram()
    assert monitor_rt_load() is histogram.labels(method="py.load", error="NIL", number="1")
    spec = importlib.util.spec_from_file_location("evals_monitor_copy", ROOT / "evals" / "utils" / "monitor.py")
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.response_time_histogram() is histogram  # no duplicate registration
    before = _count("py.load", "77")
    copy.monitor_rt_load(number=77).observe(0.1)
    assert _count("py.load", "77") == before + 1  # the copy's observation lands in the one shared histogram


# --- the legacy_style fixture app ------------------------------------------------------------------


@pytest.fixture
def legacy_app():
    """Import tests/apps/legacy_style/eval.py as ``evals.legacy_style.eval``, as the runtime would: the
    folder holding the app is appended to ``evals.__path__`` (so the app's own ``from evals.legacy_style.stats
    import ...`` works)."""
    apps_dir = str(APPS)
    added = apps_dir not in evals.__path__
    if added:
        evals.__path__.append(apps_dir)
        importlib.invalidate_caches()

    def ours(name):
        return name == "evals.legacy_style" or name.startswith("evals.legacy_style.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        spec = importlib.util.spec_from_file_location("evals.legacy_style.eval", APPS / "legacy_style" / "eval.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        if added:
            evals.__path__.remove(apps_dir)
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def legacy_configs(tmp_path):
    folder = APPS / "legacy_style"
    app_json = json.loads((folder / "app.json").read_text())
    assert set(app_json) <= {"batch_size", "use_device", "model_files", "custom_files", "model_params",
                             "custom_params", "preprocess_workers"}
    return {
        "app": "legacy_style",
        "workspace": str(tmp_path),
        "batch_size": app_json["batch_size"],
        "use_device": app_json.get("use_device", "CPU"),
        "model_files": app_json.get("model_files", {}),
        "model_params": app_json.get("model_params", {}),
        # the runtime resolves custom_files relative to the app folder
        "custom_files": {k: str(folder / v) for k, v in app_json.get("custom_files", {}).items()},
        "custom_params": app_json.get("custom_params", {}),
    }


def request(body, uri="", params=None):
    return {"data": {"uri": uri, "body": body, "attribute": None}, "params": params or {}}


def test_legacy_app_end_to_end(legacy_app, tmp_path):
    configs = legacy_configs(tmp_path)
    assert configs["batch_size"] == 4 and configs["model_params"] == {"cropSize": "224"}
    loads_before = _count("py.load", "1")

    with CaptureLog() as log:
        model, code, message = legacy_app.create_net(configs)
    assert (code, message) == (0, "")
    net = model["net"]
    assert net["batch_size"] == 4 and (net["image_width"], net["image_height"]) == (224, 224)
    assert net["synset"] == [["0", "cat"], ["1", "dog"], ["2", "bird"], ["3", "fish, striped"]]
    assert (CTX.app, CTX.reqID) == ("legacy_style", "net_init")
    assert "[net_init]" in log.text
    assert _count("py.load", "1") == loads_before + 1

    red = encode(solid(40, 50, (10, 20, 30)))      # B+G+R = 60 -> 60 % 4 = 0 -> cat
    blue = encode(solid(60, 35, (200, 100, 50)))   # 350 % 4 = 2 -> bird

    set_request_context("legacy_style", "req-1")
    pre, code, message = legacy_app.net_preprocess(model, request(red, "red.png"))
    assert (code, message) == (0, "")
    assert pre["data"]["attribute"]["legacy_style_stats"]["height"] == 40

    set_request_context("legacy_style", ["req-1", "req-2", "req-3"])
    forwards_before = _count("py.forward", "3")
    with CaptureLog() as log:
        rets, code, message = legacy_app.net_inference(
            model, [pre, request(blue, "blue.png"), request(b"garbage" * 10, "bad.png")])
    assert (code, message) == (0, "")
    assert "[req-1,req-2,req-3]" in log.text
    assert _count("py.forward", "3") == forwards_before + 1
    assert len(rets) == 3
    assert rets[0] == {"code": 0, "message": "", "header": {"X-Origin-A": ["LEGACY_STYLE:1"]},
                       "result": {"height": 40, "width": 50, "mean_bgr": [10.0, 20.0, 30.0], "label": ["0", "cat"]}}
    assert rets[1]["code"] == 0
    assert rets[1]["result"] == {"height": 60, "width": 35, "mean_bgr": [200.0, 100.0, 50.0], "label": ["2", "bird"]}
    assert (rets[2]["code"], rets[2]["message"]) == (400, "cv2 load bad.png failed")  # per-item code survives
    assert rets[2]["header"] == {"X-Origin-A": ["LEGACY_STYLE:1"]}


def test_legacy_app_errors(legacy_app, tmp_path):
    configs = legacy_configs(tmp_path)
    model, code, _ = legacy_app.create_net(configs)
    assert code == 0

    body = encode(solid(40, 40, (1, 2, 3)))
    assert legacy_app.net_inference(model, [request(body)] * 4)[1] == 0
    assert legacy_app.net_inference(model, [request(body)] * 5) == (None, 400, "eval request out of batch_size 4")

    small = request(encode(solid(20, 20, (1, 2, 3))), "small.png")
    assert legacy_app.net_preprocess(model, small) == (
        small, 400, "image small.png is too small, should be more than 32x32")

    broken = dict(configs, custom_files={"labels": str(tmp_path / "nope.csv")})
    assert legacy_app.create_net(broken) == (None, 400, f"file not exist: {tmp_path / 'nope.csv'}")
    assert legacy_app.create_net(dict(configs, custom_files={})) == (None, 400, "no labels config set")
    bad_crop = dict(configs, model_params={"cropSize": "big"})
    assert legacy_app.create_net(bad_crop) == (None, 400, "no cropSize config set")
