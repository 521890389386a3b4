"""The Open Inference Protocol (KServe v2) over gRPC, tested with NVIDIA's unmodified `tritonclient.grpc` against
a real server process.

Most tests use tests/apps/probe (see its eval.py: attribute {"fail": code} fails one instance, params
{"batch_fail": [code, message]} fails the batch). The repository tests serve a copy of tests/apps_kserve in a
temporary folder and rewrite its eval.py on disk.
"""
import concurrent.futures
import json
import queue
import shutil
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402  (the published messages, to send what tritonclient won't)

from conftest import TESTS, RunningServer, wait_until  # noqa: E402

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(frontend):
    running = RunningServer(["--evals", str(TESTS / "apps"), "--frontend", frontend])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with tc.InferenceServerClient(server.target) as triton:
        yield triton


def bytes_input(name, values, shape=None):
    """A BYTES input of `values` (bytes), shape [N] unless given."""
    array = np.array(values, dtype=object)
    tensor = tc.InferInput(name, list(shape or array.shape), "BYTES")
    tensor.set_data_from_numpy(array.reshape(shape or array.shape))
    return tensor


def array_input(name, array):
    tensor = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def attributes(*values):
    return bytes_input("attribute", [json.dumps(value).encode() for value in values])


def json_output(result, name):
    return [json.loads(element) for element in result.as_numpy(name)]


def raw_infer(server, request):
    """Send a ModelInferRequest built by hand (what tritonclient refuses to send); returns (response, error)."""
    with server.channel() as channel:
        call = channel.unary_unary(MODEL_INFER, request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                   response_deserializer=service_pb2.ModelInferResponse.FromString)
        try:
            return call(request, timeout=10), None
        except grpc.RpcError as error:
            return None, error


def expect_error(status, call, *args, **kwargs):
    with pytest.raises(tc.InferenceServerException) as caught:
        call(*args, **kwargs)
    assert caught.value.status() == f"StatusCode.{status}", caught.value.message()
    return caught.value.message()


# ---- health and metadata ---------------------------------------------------------------------------------------

def test_server_and_model_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("probe")
    assert client.is_model_ready("probe", "1")
    assert not client.is_model_ready("no_such_app")
    metadata = client.get_server_metadata()
    assert metadata.name == "serving"
    assert {"model_repository", "statistics"} <= set(metadata.extensions)


def test_model_metadata_and_config(client):
    metadata = client.get_model_metadata("probe")
    assert metadata.name == "probe" and metadata.platform == "serving-python" and list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("body", "BYTES", [-1]), ("uri", "BYTES", [-1]), ("attribute", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in metadata.outputs] == [("code", "INT32"), ("message", "BYTES")]
    config = client.get_model_config("probe").config
    assert config.name == "probe"
    assert config.max_batch_size == 4  # tests/apps/probe/app.json batch_size
    assert [i.name for i in config.input] == ["body", "uri", "attribute"]
    for call in (client.get_model_metadata, client.get_model_config):
        assert "no_such_app" in expect_error("NOT_FOUND", call, "no_such_app")
    expect_error("NOT_FOUND", client.get_model_metadata, "probe", "7")


def test_a_failed_app_makes_the_server_not_ready():
    mixed = RunningServer(["--evals", str(TESTS / "apps_mixed")])
    try:
        with tc.InferenceServerClient(mixed.target) as triton:
            assert triton.is_server_live()
            assert not triton.is_server_ready()  # Triton's rule: ready only when every model is
            assert triton.is_model_ready("good") and not triton.is_model_ready("bad_create")
            message = expect_error("UNAVAILABLE", triton.infer, "bad_create", [attributes({})])
            assert "bad_create is FAILED" in message
            index = {m.name: m for m in triton.get_model_repository_index().models}
            assert index["bad_create"].state == "FAILED" and index["bad_create"].reason
    finally:
        mixed.stop()


# ---- ModelInfer ----------------------------------------------------------------------------------------------------

def test_tensor_rows_and_data_keys(client):
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    y = np.array([7, 8, 9], dtype=np.int64)
    inputs = [array_input("x", x), array_input("y", y),
              bytes_input("body", [b"abc", b"\x00\xff", b"z"], shape=[3, 1]),
              bytes_input("uri", [b"a://1", "b://é".encode(), b"c://3"]),
              attributes({"k": 1}, [1, 2], "text")]
    result = client.infer("probe", inputs, request_id="req-42")
    assert result.get_response().id == "req-42"
    assert result.as_numpy("code").tolist() == [0, 0, 0]
    assert result.as_numpy("code").dtype == np.int32
    assert result.as_numpy("message").tolist() == [b"", b"", b""]
    echo_x = result.as_numpy("echo_x")
    assert echo_x.dtype == np.float32 and np.array_equal(echo_x, x)  # row i of x, stacked back
    assert np.array_equal(result.as_numpy("echo_y"), y)
    assert result.as_numpy("body").tolist() == [b"cba", b"\xff\x00", b"z"]  # probe reverses the body
    data = json_output(result, "data")
    assert data[0]["x"] == {"type": "ndarray", "dtype": "float32", "shape": [2, 2], "writeable": False}
    assert data[0]["y"] == {"type": "numpy_scalar", "dtype": "int64"}
    assert data[0]["body"] == {"type": "bytes", "len": 3}
    assert [d["uri"] for d in data] == [{"type": "str", "value": v} for v in ("a://1", "b://é", "c://3")]
    assert [d["attribute"]["value"] for d in data] == [{"k": 1}, [1, 2], "text"]
    assert json_output(result, "batch_requests") == [3, 3, 3]  # one batch of the three instances


def test_params_from_parameters_and_json_string(client):
    result = client.infer("probe", [attributes({}, {})],
                          parameters={"params": json.dumps({"threshold": 0.5, "tags": ["a"]}), "mode": "fast",
                                      "limit": 3, "strict": True})
    expected = {"threshold": 0.5, "tags": ["a"], "mode": "fast", "limit": 3, "strict": True}
    assert json_output(result, "params") == [expected, expected]


def test_selected_outputs_in_requested_order(client):
    outputs = [tc.InferRequestedOutput(name) for name in ("echo_x", "code", "never_returned")]
    x = np.ones((2, 3), dtype=np.uint8)
    result = client.infer("probe", [array_input("x", x)], outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["echo_x", "code", "never_returned"]
    assert np.array_equal(result.as_numpy("echo_x"), x)
    assert result.as_numpy("never_returned").tolist() == [b"null", b"null"]
    assert result.as_numpy("message") is None


@pytest.mark.parametrize("code, status", [(400, "INVALID_ARGUMENT"), (404, "NOT_FOUND"), (500, "INTERNAL"),
                                          (503, "UNAVAILABLE"), (571, "UNAVAILABLE")])
def test_one_failed_instance_fails_the_call(client, code, status):
    message = expect_error(status, client.infer, "probe", [attributes({"fail": code})])
    assert message == f"instance refused with {code}"


def test_failed_instance_code_in_trailing_metadata(server):
    request = service_pb2.ModelInferRequest(model_name="probe", id="meta-1")
    tensor = request.inputs.add(name="attribute", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b'{"fail": 571}')
    _, error = raw_infer(server, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert ("serving-code", "571") in error.trailing_metadata()


def test_partial_failure_succeeds_with_codes(client):
    x = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int16)
    result = client.infer("probe", [array_input("x", x), attributes({}, {"fail": 404}, {})])
    assert result.as_numpy("code").tolist() == [0, 404, 0]
    assert result.as_numpy("message")[1] == b"instance refused with 404"
    assert result.as_numpy("echo_x").tolist() == [[1, 2], [0, 0], [5, 6]]  # the failed row is zeros
    assert json_output(result, "app") == ["probe", None, "probe"]


def test_instances_failing_alike_on_their_own_leave_the_call_successful(client):
    # Not a failed batch: each instance was refused by itself, so the call answers and `code` tells.
    result = client.infer("probe", [attributes({"fail": 400}, {"fail": 400})])
    assert result.as_numpy("code").tolist() == [400, 400]
    assert result.as_numpy("message").tolist() == [b"instance refused with 400"] * 2
    preprocess_refused = client.infer("probe", [attributes({"pre_fail": 404}, {"pre_fail": 404})])
    assert preprocess_refused.as_numpy("code").tolist() == [404, 404]


def test_batch_failure_fails_the_call(client):
    batch_fail = {"batch_fail": [503, "model is warming up"]}
    message = expect_error("UNAVAILABLE", client.infer, "probe", [attributes({}, {})],
                           parameters={"params": json.dumps(batch_fail)})
    assert message == "model is warming up"
    assert "boom in eval" in expect_error("INTERNAL", client.infer, "probe", [attributes({})],
                                          parameters={"raise": True})


def test_unknown_model_is_not_found(client):
    message = expect_error("NOT_FOUND", client.infer, "no_such_app", [attributes({})])
    assert "no_such_app" in message and "probe" in message
    # The caller's long name is quoted in the details, cut so the status still fits gRPC's header limit.
    long_name = "m" * 30000
    message = expect_error("NOT_FOUND", client.infer, long_name, [attributes({})])
    assert message.startswith("unknown app 'mmm") and len(message) < 1100 and "characters)" in message


@pytest.mark.parametrize("request_id, echoed", [
    ("réq-é", "r\\xe9q-\\xe9"), ("line\nbreak\ttab", "line break\\x09tab"), ("x" * 20000, "x" * 128)])
def test_a_failed_call_keeps_its_status_whatever_its_request_id(server, request_id, echoed):
    # Metadata must be printable ASCII: the id is escaped and cut there, not allowed to break the status.
    request = service_pb2.ModelInferRequest(model_name="probe", id=request_id)
    request.inputs.add(name="attribute", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b'{"fail": 404}')
    _, error = raw_infer(server, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND, error.details()
    assert error.details() == "instance refused with 404"
    trailing = dict(error.trailing_metadata())
    assert trailing["serving-code"] == "404" and trailing["x-request-id"] == echoed


def test_malformed_inputs_are_invalid_argument(client):
    mismatched = [array_input("x", np.zeros((2, 1), np.float32)), attributes({}, {}, {})]
    assert "first dimension" in expect_error("INVALID_ARGUMENT", client.infer, "probe", mismatched)
    assert "parameter 'params'" in expect_error("INVALID_ARGUMENT", client.infer, "probe", [attributes({})],
                                                parameters={"params": "{not json"})
    bad_attribute = [bytes_input("attribute", [b"{oops"])]
    assert "attribute" in expect_error("INVALID_ARGUMENT", client.infer, "probe", bad_attribute)
    body_as_floats = [array_input("body", np.zeros(1, np.float32))]
    assert "BYTES" in expect_error("INVALID_ARGUMENT", client.infer, "probe", body_as_floats)


@pytest.mark.parametrize("datatype, shape, raw, expected", [
    ("FOO", [1], b"\x00", "unknown datatype 'FOO'"),
    ("FP32", [2, 2], b"\x00" * 12, "needs 16 bytes, got 12"),
    ("BYTES", [2], b"\x03\x00\x00\x00abc", "after 1 of 2 elements"),
    ("INT32", [], b"", "scalar shape"),
    # No data, so no byte count bounds the other dimensions: still refused, not a numpy error.
    ("FP32", [1, 2**40, 2**40, 0], b"", "is too large"),
    ("BYTES", [0, 2**62, 2**62], b"", "is too large"),
    ("UINT8", [1] * 40, b"\x00", "is too large"),
])
def test_malformed_raw_contents_name_the_input(server, datatype, shape, raw, expected):
    request = service_pb2.ModelInferRequest(model_name="probe")
    request.inputs.add(name="t", datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    _, error = raw_infer(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 't'" in error.details() and expected in error.details()


def test_typed_contents_for_clients_without_raw_bytes(server):
    request = service_pb2.ModelInferRequest(model_name="probe", id="typed")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2]).contents.fp32_contents.extend([1, 2, 3, 4])
    request.inputs.add(name="uri", datatype="BYTES", shape=[2]).contents.bytes_contents.extend([b"u1", b"u2"])
    response, error = raw_infer(server, request)
    assert error is None, error
    assert response.id == "typed"
    outputs = {o.name: (o, raw) for o, raw in zip(response.outputs, response.raw_output_contents)}
    tensor, raw = outputs["echo_x"]
    assert tensor.datatype == "FP32" and list(tensor.shape) == [2, 2]
    assert np.frombuffer(raw, "<f4").tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("datatype, values", [("INT8", [300]), ("UINT8", [256]), ("INT16", [70000]),
                                              ("UINT16", [70000])])
def test_typed_contents_out_of_range_are_invalid_argument(server, datatype, values):
    # 8- and 16-bit integers travel in 32-bit fields, so a value may not fit its datatype.
    request = service_pb2.ModelInferRequest(model_name="probe")
    field = "uint_contents" if datatype.startswith("U") else "int_contents"
    getattr(request.inputs.add(name="x", datatype=datatype, shape=[1]).contents, field).extend(values)
    _, error = raw_infer(server, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"out of the range of {datatype}" in error.details() and "input 'x'" in error.details()


def test_stream_infer_answers_each_request(client):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("probe", [attributes({"n": 1})], request_id="s1")
        client.async_stream_infer("probe", [attributes({"fail": 404})], request_id="s2")
        client.async_stream_infer("probe", [attributes({"n": 3}, {"n": 4})], request_id="s3")
        got = [answers.get(timeout=10) for _ in range(3)]
    finally:
        client.stop_stream()
    by_id = {result.get_response().id: result for result, error in got if error is None}
    errors = [error for _result, error in got if error is not None]
    assert set(by_id) == {"s1", "s3"}
    assert by_id["s3"].as_numpy("code").tolist() == [0, 0]
    assert len(errors) == 1 and "instance refused with 404" in errors[0].message()


@pytest.mark.parametrize("result, message, body", [
    ({"logits": np.arange(10, dtype=np.float32), "n": np.int64(3), "mask": np.array([[True, False]])}, "", b""),
    ({"be": np.arange(4, dtype=">i4"), "half": np.ones((2, 1), np.float16)}, "", b""),  # big-endian swapped
    ({"out": np.zeros(2, np.float32)[::2], "code": 7, "message": "shadowed"}, "", b""),  # view; reserved keys
    ({"logits": np.ones(2, np.float32), "label": "cat"}, "", b""),  # a JSON key: the general mapping answers
    ({"logits": np.ones(2, np.float32)}, "note", b""),
    ({"logits": np.ones(2, np.float32)}, "", b"\x89PNG"),
    ({"text": np.array(["a"])}, "", b""),  # a dtype KServe has no tensor of
    ({}, "", b""),
])
def test_single_instance_fast_path_matches_the_general_mapping(result, message, body):
    from serving.batching import Outcome
    from serving.proto import kserve_pb2
    from serving.servicers import kserve

    request = kserve_pb2.ModelInferRequest(model_name="m", id="r1")
    outcome = Outcome(code=0, message=message, result=result, body=body)
    fast, _ = kserve.build_response(request, [outcome], "r1")
    general, _ = kserve._mapped_response(request, [outcome])
    assert fast.SerializeToString(deterministic=True) == general.SerializeToString(deterministic=True)
    names = [output.name for output in fast.outputs]
    assert names[-2:] == ["code", "message"] and names.count("code") == 1


def test_statistics_grow(client):
    def probe_stats():
        (stats,) = client.get_inference_statistics("probe").model_stats
        return stats

    def grew(before, after):
        infer_before, infer_after = before.inference_stats, after.inference_stats
        return {"success": infer_after.success.count - infer_before.success.count,
                "fail": infer_after.fail.count - infer_before.fail.count,
                "queue": infer_after.queue.count - infer_before.queue.count,
                "compute": infer_after.compute_infer.count - infer_before.compute_infer.count,
                "inferences": after.inference_count - before.inference_count,
                "executions": after.execution_count - before.execution_count}

    # Triton's meaning: success and fail count requests (calls); inference_count the successful instances;
    # execution_count the model executions that did not fail as a whole.
    before = probe_stats()
    client.infer("probe", [attributes({}, {}, {"fail": 404})])
    after = probe_stats()
    assert grew(before, after) == {"success": 1, "fail": 0, "queue": 1, "compute": 1, "inferences": 2,
                                   "executions": 1}
    assert after.name == "probe" and after.version == "1"
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0 and after.batch_stats

    before = after
    expect_error("NOT_FOUND", client.infer, "probe", [attributes({"fail": 404})])
    expect_error("UNAVAILABLE", client.infer, "probe", [attributes({}, {})],
                 parameters={"params": json.dumps({"batch_fail": [503, "warming up"]})})
    expect_error("INVALID_ARGUMENT", client.infer, "probe", [attributes({"pre_fail": 400})])
    after = probe_stats()
    # The preprocess refusal never reached net_inference: a failed call with no queue or compute time.
    assert grew(before, after) == {"success": 0, "fail": 3, "queue": 2, "compute": 2, "inferences": 0,
                                   "executions": 1}
    every = client.get_inference_statistics().model_stats
    assert {s.name for s in every} == {"probe", "legacy_style"}
    expect_error("NOT_FOUND", client.get_inference_statistics, "no_such_app")


# ---- repository --------------------------------------------------------------------------------------------------

VERSION_LINE = 'VERSION = "v1"'


@pytest.fixture
def reload_server(tmp_path):
    """A server of a copy of tests/apps_kserve, whose files the test may rewrite."""
    evals = tmp_path / "evals"
    shutil.copytree(TESTS / "apps_kserve", evals, ignore=shutil.ignore_patterns("__pycache__"))
    running = RunningServer(["--evals", str(evals)])
    with tc.InferenceServerClient(running.target) as triton:
        yield running, triton, evals / "versioned"
    running.stop()


def version_of(triton):
    result = triton.infer("versioned", [attributes({})])
    return json.loads(result.as_numpy("version")[0])


def rewrite_version(app_dir, version):
    eval_py = app_dir / "eval.py"
    eval_py.write_text(eval_py.read_text().replace(VERSION_LINE, f'VERSION = "{version}"'))


def app_health(server, name):
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status


def test_repository_index(reload_server):
    _server, triton, app_dir = reload_server
    shutil.copytree(app_dir, app_dir.parent / "later")  # appears on disk, not loaded until asked
    index = {m.name: m for m in triton.get_model_repository_index().models}
    assert index["versioned"].state == "READY"
    assert index["later"].state == "UNAVAILABLE"
    assert [m.name for m in triton.get_model_repository_index().models if m.state == "READY"] == ["versioned"]
    triton.load_model("later")
    assert triton.is_model_ready("later")


def test_reload_under_load_drops_nothing(reload_server):
    server, triton, app_dir = reload_server
    assert version_of(triton) == "v1"
    rewrite_version(app_dir, "v2")
    stop = threading.Event()
    failures, versions = [], []

    def hammer():
        # One client per thread, as independent callers would have.
        with tc.InferenceServerClient(server.target) as own:
            while not stop.is_set():
                try:
                    versions.append(version_of(own))
                except tc.InferenceServerException as error:
                    failures.append(error)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(hammer) for _ in range(6)]
        assert wait_until(lambda: len(versions) > 30, timeout=10)
        triton.load_model("versioned")
        seen_before = len(versions)
        assert wait_until(lambda: len(versions) > seen_before + 30, timeout=10)
        stop.set()
        for worker in workers:
            worker.result()
    assert not failures, failures[:3]
    assert {"v1", "v2"} <= set(versions)
    assert versions[-1] == "v2" and version_of(triton) == "v2"


def test_failed_load_keeps_the_old_app_serving(reload_server):
    _server, triton, app_dir = reload_server
    eval_py = app_dir / "eval.py"
    good = eval_py.read_text()
    eval_py.write_text(good.replace("return {\"version\": VERSION}, 0, \"\"", "return None, 500, \"no weights\""))
    message = expect_error("INTERNAL", triton.load_model, "versioned")
    assert "no weights" in message
    assert version_of(triton) == "v1" and triton.is_model_ready("versioned")

    eval_py.write_text(good + "\ndef broken(:\n")
    assert "SyntaxError" in expect_error("INTERNAL", triton.load_model, "versioned")
    eval_py.write_text(good)
    (app_dir / "app.json").write_text('{"batch_size": 0}')
    assert "batch_size" in expect_error("INVALID_ARGUMENT", triton.load_model, "versioned")
    assert version_of(triton) == "v1"
    expect_error("NOT_FOUND", triton.load_model, "no_such_app")


def test_unload_then_not_found(reload_server):
    server, triton, app_dir = reload_server
    assert app_health(server, "versioned") == health_pb2.HealthCheckResponse.SERVING
    triton.unload_model("versioned")
    assert not triton.is_model_ready("versioned")
    assert "versioned" in expect_error("NOT_FOUND", triton.infer, "versioned", [attributes({})])
    assert wait_until(lambda: app_health(server, "versioned") == health_pb2.HealthCheckResponse.NOT_SERVING,
                      timeout=5)
    (entry,) = triton.get_model_repository_index().models
    assert entry.state == "UNAVAILABLE"
    expect_error("NOT_FOUND", triton.unload_model, "versioned")
    rewrite_version(app_dir, "v3")
    triton.load_model("versioned")
    assert version_of(triton) == "v3"
    assert wait_until(lambda: app_health(server, "versioned") == health_pb2.HealthCheckResponse.SERVING, timeout=5)


# A version of tests/apps_kserve/versioned whose calls can be made slow ({"sleep_s": n}: net_inference touches
# `sleeping` in the app folder, then sleeps) and whose results count the inference threads of app `versioned` alive
# in the server: once a retired version is closed, only the serving version's thread is left.
COUNTING_EVAL = '''
import threading
import time
from pathlib import Path

from evals.utils import create_net_handler, net_inference_handler

VERSION = "v1"


@create_net_handler
def create_net(configs):
    return {"version": VERSION, "workspace": configs["workspace"]}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    sleep_s = max(r["params"].get("sleep_s", 0) for r in requests)
    if sleep_s:
        Path(model["workspace"], "sleeping").touch()
        time.sleep(sleep_s)
    threads = sum(t.name == "infer-versioned" for t in threading.enumerate())
    return [{"code": 0, "message": "", "result": {"version": model["version"], "inference_threads": threads}}
            for _ in requests], 0, ""
'''


def version_and_threads(triton, **parameters):
    result = triton.infer("versioned", [attributes({})], parameters=parameters or None)
    return json.loads(result.as_numpy("version")[0]), json.loads(result.as_numpy("inference_threads")[0])


@pytest.mark.parametrize("operation", ["load", "unload"])
def test_a_repository_call_whose_caller_gives_up_still_closes_the_old_version(reload_server, operation):
    # The caller's deadline passes while the old version drains a slow call: the load (or unload) must still
    # complete, closing the old version (its inference thread ends), not leave it open for good.
    server, triton, app_dir = reload_server
    (app_dir / "eval.py").write_text(COUNTING_EVAL)
    triton.load_model("versioned")
    assert version_and_threads(triton) == ("v1", 1)
    rewrite_version(app_dir, "v2")
    sleeping = app_dir / "sleeping"
    with concurrent.futures.ThreadPoolExecutor(1) as pool, tc.InferenceServerClient(server.target) as other:
        slow = pool.submit(version_and_threads, other, sleep_s=3)
        assert wait_until(sleeping.exists, timeout=10)  # the slow call runs in the old version's net_inference
        call = triton.load_model if operation == "load" else triton.unload_model
        expect_error("DEADLINE_EXCEEDED", call, "versioned", client_timeout=0.5)
        # The old version still answers what it had admitted.
        assert slow.result(timeout=15)[0] == "v1"
    if operation == "unload":
        # It went through: the app is gone (once drained, a later load finds the lock free).
        assert not triton.is_model_ready("versioned")
        triton.load_model("versioned")
    assert triton.is_model_ready("versioned")
    assert wait_until(lambda: version_and_threads(triton) == ("v2", 1), timeout=10), version_and_threads(triton)


def test_bad_app_json_on_reload_is_invalid_argument_and_the_old_version_serves(reload_server):
    # Both escaped validation: the reload answered UNKNOWN with a Python exception's text.
    _server, triton, app_dir = reload_server
    config = app_dir / "app.json"
    config.write_text('{"batch_size": 8, "request_timeout_s": 1' + "0" * 400 + "}")
    message = expect_error("INVALID_ARGUMENT", triton.load_model, "versioned")
    assert message.endswith("app.json: request_timeout_s must be a number > 0, got an integer too large for a "
                            "float (1329 bits)")
    assert version_of(triton) == "v1"
    config.unlink()
    config.mkdir()
    message = expect_error("INVALID_ARGUMENT", triton.load_model, "versioned")
    assert message == f"{config.resolve()}: cannot be read: Is a directory"
    assert version_of(triton) == "v1" and triton.is_model_ready("versioned")


def test_serving_app_ready_follows_the_version_that_serves(tmp_path):
    # serving_app_ready{app} is the registry's serving version's: a failed reload leaves it 1 (the old version
    # serves), an unload sets it 0, a load 1 again.
    evals = tmp_path / "evals"
    shutil.copytree(TESTS / "apps_kserve", evals, ignore=shutil.ignore_patterns("__pycache__"))
    running = RunningServer(["--evals", str(evals), "--metrics-port", "0"])

    def ready_gauge():
        import re
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5).read().decode()
        (value,) = re.findall(r'^serving_app_ready\{app="versioned"\} (\S+)$', text, re.MULTILINE)
        return float(value)

    try:
        with tc.InferenceServerClient(running.target) as triton:
            assert ready_gauge() == 1.0
            eval_py = evals / "versioned" / "eval.py"
            good = eval_py.read_text()
            eval_py.write_text(good + "\ndef broken(:\n")
            assert "SyntaxError" in expect_error("INTERNAL", triton.load_model, "versioned")
            assert version_of(triton) == "v1"
            assert app_health(running, "versioned") == health_pb2.HealthCheckResponse.SERVING
            assert ready_gauge() == 1.0
            eval_py.write_text(good)
            triton.load_model("versioned")
            assert ready_gauge() == 1.0
            triton.unload_model("versioned")
            assert ready_gauge() == 0.0
            triton.load_model("versioned")
            assert ready_gauge() == 1.0 and version_of(triton) == "v1"
    finally:
        running.stop()
