"""Triton extensions of the Open Inference Protocol that tritonclient users send and this server does not implement:
each gets a clear answer (or is harmless), never a silent wrong one. NVIDIA's unmodified `tritonclient.grpc`
against a real server of tests/apps (probe echoes the params it received).

- shared memory (`shared_memory_*` parameters on an input or a requested output; the SystemSharedMemory* and
  CudaSharedMemory* RPCs): UNIMPLEMENTED naming the parameter. Ignored, an output's region would keep whatever it
  held and the client would read that as the result.
- `classification` on a requested output: UNIMPLEMENTED. Ignored, the client gets the raw tensor where it expects
  BYTES "value:index" strings.
- TraceSetting, LogSettings: UNIMPLEMENTED saying what to use instead.
- ModelStreamInfer: every answer carries `triton_final_response: true` (each request has exactly one answer, as
  Triton answers for a model that is not decoupled), so clients that read until that flag do not wait forever.
- `timeout`: an int64 in microseconds caps the call's deadline; any other type is INVALID_ARGUMENT, as Triton
  answers, rather than a deadline silently not applied.
- harmless and kept: `binary_data` on an output, `binary_data_output`, `priority`, sequence parameters and
  `headers` (gRPC metadata) do not change the answer; `priority` and the sequence parameters reach the eval in
  `params`, and like `timeout` must be of a kind Triton takes (INVALID_ARGUMENT otherwise). A version other than ""
  or "1" is NOT_FOUND (ModelReady: not ready).
"""
import json
import queue

import grpc
import numpy as np
import pytest

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def server(apps_server):
    """conftest's server of tests/apps."""
    return apps_server


@pytest.fixture(scope="module")
def client(apps_server):
    with tc.InferenceServerClient(apps_server.target) as triton:
        yield triton


@pytest.fixture
def stub(server):
    with server.channel() as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def attributes(*values):
    tensor = tc.InferInput("attribute", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(value).encode() for value in values], dtype=object))
    return tensor


def array_input(name, array):
    tensor = tc.InferInput(name, list(array.shape), tc.np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def expect_error(status, call, *args, **kwargs):
    with pytest.raises(tc.InferenceServerException) as caught:
        call(*args, **kwargs)
    assert caught.value.status() == f"StatusCode.{status}", caught.value.message()
    return caught.value.message()


def params_seen(result):
    return json.loads(result.as_numpy("params")[0])


# ---- shared memory -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_other_input", [False, True])
def test_a_shared_memory_input_is_unimplemented_naming_the_parameter(client, with_other_input):
    region = tc.InferInput("x", [1, 4], "FP32")
    region.set_shared_memory("input_region", 16)
    inputs = [attributes({}), region] if with_other_input else [region]
    message = expect_error("UNIMPLEMENTED", client.infer, "probe", inputs)
    assert "input 'x'" in message and "shared_memory_region" in message and "raw_input_contents" in message


def test_a_shared_memory_output_is_unimplemented_naming_the_parameter(client):
    output = tc.InferRequestedOutput("params")
    output.set_shared_memory("output_region", 64, offset=8)
    message = expect_error("UNIMPLEMENTED", client.infer, "probe", [attributes({})], outputs=[output])
    assert "output 'params'" in message and "shared_memory_region" in message


@pytest.mark.parametrize("call, args", [
    ("register_system_shared_memory", ("region", "/key", 64)),
    ("get_system_shared_memory_status", ()),
    ("unregister_system_shared_memory", ()),
    ("register_cuda_shared_memory", ("region", b"\0" * 64, 0, 64)),
    ("get_cuda_shared_memory_status", ()),
    ("unregister_cuda_shared_memory", ()),
])
def test_shared_memory_rpcs_are_unimplemented_with_a_reason(client, call, args):
    message = expect_error("UNIMPLEMENTED", getattr(client, call), *args)
    assert "shared memory is not supported" in message and "raw_input_contents" in message


def test_shared_memory_in_a_stream_is_answered_with_the_reason(client):
    answers = queue.Queue()
    region = tc.InferInput("x", [1, 4], "FP32")
    region.set_shared_memory("input_region", 16)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("probe", [attributes({}), region], request_id="shm")
        result, error = answers.get(timeout=10)
    finally:
        client.stop_stream()
    assert result is None and "[501]" in error.message() and "shared_memory_region" in error.message()


# ---- classification ----------------------------------------------------------------------------------------------

def test_a_classification_output_is_unimplemented(client):
    logits = array_input("x", np.array([[0.1, 0.7, 0.2]], np.float32))
    output = tc.InferRequestedOutput("echo_x", class_count=2)
    message = expect_error("UNIMPLEMENTED", client.infer, "probe", [attributes({}), logits], outputs=[output])
    assert "output 'echo_x'" in message and "classification" in message


# ---- trace and log settings --------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, args, reason", [
    ("get_trace_settings", (), "trace"),
    ("update_trace_settings", ("probe", {"trace_level": ["TIMESTAMPS"]}), "trace"),
    ("get_log_settings", (), "log"),
    ("update_log_settings", ({"log_verbose_level": 1},), "log"),
])
def test_trace_and_log_settings_are_unimplemented_with_a_reason(client, call, args, reason):
    message = expect_error("UNIMPLEMENTED", getattr(client, call), *args)
    assert "not supported" in message and reason in message and "Method not found" not in message


# ---- streams: the final-response flag ----------------------------------------------------------------------------

def test_every_stream_answer_is_marked_final(client):
    """A client written for decoupled models reads until `triton_final_response`; each request here has one
    answer, marked final (Triton marks the one answer of a model that is not decoupled the same way)."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("probe", [attributes({})], request_id="a", enable_empty_final_response=True)
        client.async_stream_infer("probe", [attributes({"n": 1}, {"n": 2})], request_id="b")
        got = [answers.get(timeout=10) for _ in range(2)]
        with pytest.raises(queue.Empty):  # no extra empty response for a model that is not decoupled
            answers.get(timeout=0.3)
    finally:
        client.stop_stream()
    assert all(error is None for _result, error in got), got
    for result, _error in got:
        flag = result.get_response().parameters["triton_final_response"]
        assert flag.WhichOneof("parameter_choice") == "bool_param" and flag.bool_param


def test_a_failed_stream_answer_is_marked_final(stub):
    request = service_pb2.ModelInferRequest(model_name="probe", id="bad")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    request.raw_input_contents.append(b"\0" * 3)  # 3 bytes where 8 are needed
    (answer,) = list(stub.ModelStreamInfer(iter([request]), timeout=10))
    assert answer.error_message.startswith("[400]")
    assert answer.infer_response.id == "bad" and answer.infer_response.parameters["triton_final_response"].bool_param


# ---- timeout, priority, sequences, headers, binary data ----------------------------------------------------------

def test_the_timeout_parameter_caps_the_deadline(client):
    message = expect_error("DEADLINE_EXCEEDED", client.infer, "probe", [attributes({})], timeout=200_000,
                           parameters={"sleep_ms": 1000})
    assert "0.2s" in message
    assert params_seen(client.infer("probe", [attributes({})], timeout=5_000_000))["timeout"] == 5_000_000


@pytest.mark.parametrize("kind, value", [("double_param", 0.5), ("string_param", "1000"), ("bool_param", True),
                                         ("int64_param", -1)])
def test_a_timeout_that_is_not_microseconds_is_invalid_argument(stub, kind, value):
    """Triton refuses a `timeout` that is not an int64 (microseconds); a deadline must not be dropped silently."""
    request = service_pb2.ModelInferRequest(model_name="probe")
    tensor = attributes({})
    request.inputs.append(tensor._get_tensor())
    request.raw_input_contents.append(tensor._get_content())
    setattr(request.parameters["timeout"], kind, value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'timeout'" in caught.value.details() and "microseconds" in caught.value.details()


def test_priority_sequence_parameters_and_headers_change_nothing_but_reach_the_eval(client):
    result = client.infer("probe", [attributes({})], priority=2, sequence_id=42, sequence_start=True,
                          headers={"x-custom": "1"})
    assert params_seen(result) == {"priority": 2, "sequence_id": 42, "sequence_start": True, "sequence_end": False}
    assert result.as_numpy("code").tolist() == [0]


@pytest.mark.parametrize("key, kind, value", [("priority", "string_param", "high"), ("priority", "int64_param", -1),
                                               ("sequence_id", "double_param", 4.2),
                                               ("sequence_start", "int64_param", 1), ("sequence_end", "string_param", "y")])
def test_triton_parameters_of_a_kind_triton_refuses_are_invalid_argument(stub, key, kind, value):
    request = service_pb2.ModelInferRequest(model_name="probe")
    tensor = attributes({})
    request.inputs.append(tensor._get_tensor())
    request.raw_input_contents.append(tensor._get_content())
    setattr(request.parameters[key], kind, value)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"parameter {key!r} must be ") and kind in caught.value.details()


def test_binary_data_parameters_are_harmless(stub):
    request = service_pb2.ModelInferRequest(model_name="probe")
    tensor = attributes({})
    request.inputs.append(tensor._get_tensor())
    request.raw_input_contents.append(tensor._get_content())
    request.parameters["binary_data_output"].bool_param = True
    output = request.outputs.add(name="code")
    output.parameters["binary_data"].bool_param = True
    response = stub.ModelInfer(request, timeout=10)
    assert [(o.name, o.datatype) for o in response.outputs] == [("code", "INT32")]
    assert response.raw_output_contents == [b"\0\0\0\0"]


# ---- versions ----------------------------------------------------------------------------------------------------

def test_other_versions_are_not_found(client):
    assert client.is_model_ready("probe", "1") and not client.is_model_ready("probe", "2")
    for call, args in ((client.infer, ("probe", [attributes({})])), (client.get_model_metadata, ("probe",)),
                       (client.get_model_config, ("probe",))):
        assert "no version '2'" in expect_error("NOT_FOUND", call, *args, model_version="2")
