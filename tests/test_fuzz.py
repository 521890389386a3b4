"""Property-based tests (hypothesis): every RPC of every service the server registers gets generated messages and
raw garbage, and the image decoder gets garbage and mutated images.

Properties, for every input: the server answers with a status (never UNKNOWN, which is what gRPC says when a
handler raised; never a hang, so never DEADLINE_EXCEEDED but for the one call that follows a running task), no
traceback reaches the wire, and the serving process neither crashes nor restarts (its pid and the supervisor's
log say so). The decoder returns an 8-bit BGR image with sides in (32, 4999] or raises an eval error with code
400, whatever the bytes.

Messages are generated from the services' descriptors, so methods added to the protos later are fuzzed too.
Fields are drawn from their types, mixed with values that reach deeper: app and dtype names, JSON (deep, huge,
broken), store ids of real documents, paths and URLs, images. Profiles: "ci" (the default: derandomized, so
every run tries the same inputs: about 1,700 calls and 300 images) and "explore" (HYPOTHESIS_PROFILE=explore:
random, ten times as many) for hunting locally.
"""
import json
import os

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TESTS, RunningServer
from evals.utils.error import ErrorBase
from evals.utils.image import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, image_header_size, load_image
from serving.proto import inference_pb2, mvp_pb2, store_pb2
from serving.store import Store, put_dataset
from serving.synth.dataset import make_split

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402

settings.register_profile("ci", max_examples=30, derandomize=True, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("explore", max_examples=300, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TIMEOUT = 10
APPS = ("probe", "legacy_style", "counter")
# Streams that legitimately last: they follow a task until it is at rest.
FOLLOWING_STREAMS = {"/mvp_rpc.TaskControl/stream_train_progress"}
# Never-ending by design: a health Watch streams until the caller leaves.
SKIPPED = {"/grpc.health.v1.Health/Watch"}


def _services():
    """(service full name, service descriptor) of everything the server registers."""
    found = [inference_pb2.DESCRIPTOR.services_by_name["Inference"], store_pb2.DESCRIPTOR.services_by_name["Store"],
             service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
             health_pb2.DESCRIPTOR.services_by_name["Health"],
             reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]]
    found += list(mvp_pb2.DESCRIPTOR.services_by_name.values())
    return found


METHODS = [method for service in _services() for method in service.methods
           if f"/{service.full_name}/{method.name}" not in SKIPPED]


# ---- values that reach deeper ---------------------------------------------------------------------------------------

def _png(side=40, value=90):
    return cv2.imencode(".png", np.full((side, side, 3), value, np.uint8))[1].tobytes()


DEEP_JSON = "[" * 40 + "]" * 40
STRINGS = ["", "inference", "FP32", "BYTES", "INT64", "UINT8", "float32", "int64", "bool", "bytes", "params",
           "body", "uri", "attribute", "image", "json", "dataset", "model", "result", "{}", "[]", "null", "1e999",
           '{"top_k": 2}', '{"a": [1, {"b": null}], "c": "\\u00e9"}', DEEP_JSON, '{"x": ' * 5 + "1" + "}" * 5,
           '{"broken": ', "\x00", "../../etc/passwd", "/etc/passwd", "file:///etc/passwd",
           "http://127.0.0.1:1/a.png", "0" * 24, "zz" * 12, "x" * 300, "中文名称"]
BYTES = [b"", b"\x00", b"\xff\xff\xff\xff", (3).to_bytes(4, "little") + b"abc", b'{"a": 1}', DEEP_JSON.encode(),
         _png(), _png(20), b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + b"IHDR" + (60000).to_bytes(4, "big") * 2]
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field, strings, byte_values):
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.one_of(st.integers(max(low, -3), min(high, 1100)), st.integers(low, high))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(width=32 if kind == FieldDescriptor.TYPE_FLOAT else 64)
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 100))
    if kind == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(strings), st.text(max_size=30))
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(byte_values), st.binary(max_size=64))
    raise AssertionError(f"no strategy for field type {kind}")


@st.composite
def messages(draw, descriptor, strings, byte_values, depth=0):
    """A message of `descriptor` with a random subset of its fields set to generated values."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                if depth >= 3:
                    continue
                key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
                keys = draw(st.lists(_scalar(key_field, strings, byte_values), max_size=3, unique=True))
                target = getattr(message, field.name)
                for key in keys:
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        target[key].CopyFrom(draw(messages(value_field.message_type, strings, byte_values,
                                                           depth + 1)))
                    else:
                        target[key] = draw(_scalar(value_field, strings, byte_values))
                continue
            if depth >= 3:
                continue
            if field.is_repeated:
                for item in draw(st.lists(messages(entry, strings, byte_values, depth + 1), max_size=3)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(entry, strings, byte_values, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field, strings, byte_values), max_size=4)))
        else:
            setattr(message, field.name, draw(_scalar(field, strings, byte_values)))
    return message


# ---- the server ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A server of probe, legacy_style and the trainer counter, with a real dataset and model in its store."""
    root = tmp_path_factory.mktemp("fuzz")
    evals = root / "evals"
    evals.mkdir()
    for app in (TESTS / "apps" / "probe", TESTS / "apps" / "legacy_style", TESTS / "apps_train" / "counter"):
        (evals / app.name).symlink_to(app, target_is_directory=True)
    images, coco = make_split(4, 3, size=64)
    with Store(root / "data") as store:
        for meta, image in zip(coco["images"], images):
            meta["store_id"] = store.put_image(cv2.imencode(".png", image)[1].tobytes())
        dataset_id = put_dataset(store, coco)
        model_id = store.put_blob(b"weights", kind="model", meta={"app": "counter"})
    server = RunningServer(["--evals", str(evals), "--data-dir", str(root / "data"), "--trainer-app", "counter",
                            "--restart-backoff", "0.2"])
    channel = server.channel()
    pid = _worker_pid(channel)
    strings = STRINGS + list(APPS) + [dataset_id, model_id, coco["images"][0]["store_id"]]
    yield {"server": server, "channel": channel, "pid": pid, "strings": strings}
    channel.close()
    server.stop()


def _worker_pid(channel):
    request = inference_pb2.InferRequest(app="probe", instances=[inference_pb2.Instance(attribute="{}")])
    reply = channel.unary_unary("/serving.v1.Inference/Infer", request_serializer=lambda m: m.SerializeToString(),
                                response_deserializer=inference_pb2.InferResponse.FromString)(request, timeout=TIMEOUT)
    return json.loads(reply.results[0].result)["pid"]


def _call(channel, path, method, request_bytes_list):
    """Send raw request bytes to `path` with the method's streaming shape; the final status code and details."""
    identity = {"request_serializer": None, "response_deserializer": None}
    timeout = 3 if path in FOLLOWING_STREAMS else TIMEOUT
    try:
        if method.client_streaming:
            list(channel.stream_stream(path, **identity)(iter(request_bytes_list), timeout=timeout))
        elif method.server_streaming:
            list(channel.unary_stream(path, **identity)(request_bytes_list[0], timeout=timeout))
        else:
            channel.unary_unary(path, **identity)(request_bytes_list[0], timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _check_answer(fuzzed, path, code, details):
    assert code != grpc.StatusCode.UNKNOWN, f"{path}: a handler raised: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert path in FOLLOWING_STREAMS, f"{path}: no answer within {TIMEOUT}s"
    assert "Traceback" not in details, details


def _check_alive(fuzzed):
    assert _worker_pid(fuzzed["channel"]) == fuzzed["pid"], "the serving process restarted"
    assert "restarting in" not in fuzzed["server"].output, fuzzed["server"].output[-3000:]


def _method_id(method):
    return f"{method.containing_service.name}.{method.name}"


@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_every_rpc_answers_generated_messages_with_a_status(fuzzed, method):
    path = f"/{method.containing_service.full_name}/{method.name}"
    strings = fuzzed["strings"]
    if method.name.startswith("Repository"):
        # Loading and unloading the real apps is tested elsewhere; here it would only slow the other methods.
        strings = [s for s in strings if s not in APPS]
    requests = st.lists(messages(method.input_type, strings, BYTES), min_size=1,
                        max_size=3 if method.client_streaming else 1)

    @given(requests)
    def check(batch):
        code, details = _call(fuzzed["channel"], path, method, [m.SerializeToString() for m in batch])
        _check_answer(fuzzed, path, code, details)

    check()
    _check_alive(fuzzed)


@pytest.mark.parametrize("method", METHODS, ids=_method_id)
def test_every_rpc_answers_raw_garbage_with_a_status(fuzzed, method):
    path = f"/{method.containing_service.full_name}/{method.name}"

    @settings(max_examples=max(settings().max_examples // 3, 5))
    @given(st.lists(st.binary(max_size=256), min_size=1, max_size=2))
    def check(batch):
        code, details = _call(fuzzed["channel"], path, method, batch)
        _check_answer(fuzzed, path, code, details)

    check()
    _check_alive(fuzzed)


# ---- the image decoder ----------------------------------------------------------------------------------------------

def _encodings():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)
    out = [cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm")]
    out.append(cv2.imencode(".gif", image)[1].tobytes() if cv2.haveImageWriter(".gif") else out[0])
    out.append(cv2.imencode(".jpg", image, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))[1].tobytes())
    out.append(cv2.imencode(".png", image[:, :, 0])[1].tobytes())
    return out


ENCODED = _encodings()


@st.composite
def mutated_images(draw):
    """A valid small image in some format, then byte flips, a truncation, a header size overwritten, or junk."""
    data = bytearray(draw(st.sampled_from(ENCODED)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "size", "insert"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "size":  # where PNG, GIF, BMP and many headers keep sizes: claim something big
            big = draw(st.sampled_from([0, 1, 4999, 5000, 65535, 2**31 - 1, 2**32 - 1]))
            offset = min(at, 40)
            data[offset:offset + 4] = big.to_bytes(4, draw(st.sampled_from(["big", "little"])))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=max(settings().max_examples * 10, 200))
@given(st.one_of(st.binary(max_size=512), mutated_images()))
def test_the_decoder_answers_any_bytes_with_an_image_or_a_400(data):
    assert image_header_size(data) is None or all(side > 0 for side in image_header_size(data))
    try:
        image = load_image("fuzz", data)
    except ErrorBase as exc:
        assert exc.code == 400, exc
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert MIN_IMAGE_SIDE < min(image.shape[:2]) and max(image.shape[:2]) <= MAX_IMAGE_SIDE
