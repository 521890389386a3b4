"""Limits against a real server (serving.limits): images, instances and inputs per call, BYTES elements, decoder
bombs, calls at once. Each refusal is a clear 4xx (or a retryable 429 for load), and what the server allocates
stays bounded: its peak resident memory is read from /proc."""
import asyncio
import collections
import threading

import cv2
import grpc
import numpy as np
import psutil
import pytest

from conftest import TESTS, RunningServer
from serving.client import AsyncClient, Client
from serving.codec import MAX_INSTANCES_PER_CALL, MAX_INPUTS_PER_INSTANCE
from serving.proto import inference_pb2 as pb
from serving.proto import inference_pb2_grpc as pb_grpc
from serving.proto import store_pb2 as spb
from serving.proto import store_pb2_grpc as spb_grpc
from serving.servicers.kserve import MAX_BYTES_ELEMENTS

tc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402

TIMEOUT = 10
MIB = 2**20


@pytest.fixture(scope="module")
def server():
    running = RunningServer(["--evals", str(TESTS / "apps")])
    yield running
    running.stop()


def refusal(call, request):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=TIMEOUT)
    return info.value.code(), dict(info.value.trailing_metadata() or ()).get("serving-code"), info.value.details()


def worker_pid(server):
    host, port = server.target.split(":")
    with Client(host, int(port), "probe", timeout=TIMEOUT) as client:
        return client.infer({"i": 1})[0]["pid"]


def peak_rss_mib(pid):
    """VmHWM: the most resident memory the process ever had."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_images_and_inputs_per_call_are_limited_before_conversion(server):
    with server.channel() as channel:
        infer = pb_grpc.InferenceStub(channel).Infer
        many = pb.InferRequest(app="probe", instances=[pb.Instance(attribute="{}")] * (MAX_INSTANCES_PER_CALL + 1))
        code, serving_code, details = refusal(infer, many)
        assert (code, serving_code) == (grpc.StatusCode.INVALID_ARGUMENT, "413") and "1025 images" in details
        multi = pb.InferRequest(app="probe", instances=[
            pb.Instance(images=[pb.Instance(attribute="{}")] * 600) for _ in range(2)])
        code, serving_code, details = refusal(infer, multi)
        assert serving_code == "413" and f"over the limit of {MAX_INSTANCES_PER_CALL}" in details
        wide = pb.InferRequest(app="probe")
        instance = wide.instances.add()
        for i in range(MAX_INPUTS_PER_INSTANCE + 1):
            instance.inputs[f"k{i}"].int_value = i
        code, serving_code, details = refusal(infer, wide)
        assert serving_code == "413" and "257 inputs" in details
        # At the limits, the call goes through to the app.
        instance.inputs.pop("k0")
        assert len(pb_grpc.InferenceStub(channel).Infer(wide, timeout=TIMEOUT).results) == 1


def test_kserve_instances_and_bytes_elements_are_limited(server):
    with server.channel() as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        tall = service_pb2.ModelInferRequest(model_name="probe")
        tall.inputs.add(name="x", datatype="FP32", shape=[MAX_INSTANCES_PER_CALL + 1, 1])
        tall.raw_input_contents.append(bytes(4 * (MAX_INSTANCES_PER_CALL + 1)))
        code, serving_code, details = refusal(infer, tall)
        assert serving_code == "413" and "1025 instances" in details
        elements = service_pb2.ModelInferRequest(model_name="probe")
        elements.inputs.add(name="words", datatype="BYTES", shape=[1, MAX_BYTES_ELEMENTS + 1])
        elements.raw_input_contents.append(bytes(4 * (MAX_BYTES_ELEMENTS + 1)))  # that many empty elements
        code, serving_code, details = refusal(infer, elements)
        assert serving_code == "413" and "BYTES elements" in details


def test_decoder_bombs_are_refused_without_allocating_the_image(server):
    pid = worker_pid(server)
    before = peak_rss_mib(pid)
    # 6000 x 6000 x 3 decodes to 103 MiB; compressed, a few hundred KiB. TIFF has no header load_image reads:
    # OpenCV's own pixel limit (lowered by serving) refuses it. The PNG claims 60000 x 60000 in its header.
    tiff = cv2.imencode(".tiff", np.zeros((6000, 6000, 3), np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 8])[1].tobytes()
    png = bytearray(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
    png[16:24] = (60000).to_bytes(4, "big") * 2
    host, port = server.target.split(":")
    with Client(host, int(port), "legacy_style", timeout=TIMEOUT) as client:
        for body in (tiff, bytes(png)):
            result = client.infer({"body": body})[0]
            assert result["code"] == 400 and "too large" in result["error"], result
    with server.channel() as channel:
        put = spb_grpc.StoreStub(channel).Put
        for body in (tiff, bytes(png)):
            code, serving_code, details = refusal(put, spb.PutRequest(kind="image", data=body))
            assert serving_code == "400" and "over 4999 px" in details
    assert peak_rss_mib(pid) - before < 60, "a refused image must not be decoded"


def test_calls_over_the_concurrency_limit_are_refused_at_once_and_memory_stays_bounded(frontend):
    server = RunningServer(["--evals", str(TESTS / "apps_faults"), "--max-concurrent-rpcs", "4", "--frontend",
                            frontend])
    try:
        host, port = server.target.split(":")
        with Client(host, int(port), "steady", timeout=TIMEOUT) as client:
            pid = client.infer({"attribute": {}})[0]["pid"]
        before = peak_rss_mib(pid)
        body = np.random.default_rng(0).integers(0, 255, 4 * MIB, dtype=np.uint8).tobytes()  # 4 MiB each
        results, start = [], threading.Barrier(48)

        def call(i):
            try:
                with Client(host, int(port), "steady", timeout=TIMEOUT) as client:
                    start.wait(TIMEOUT)  # all at once; the 4 admitted hold their slots for 1.5 s
                    result = client.infer({"i": i, "blob": body}, params={"sleep_ms": 1500})
            except Exception as exc:  # noqa: BLE001 -- reported by the assertions below, not lost in a thread
                result = {"code": type(exc).__name__, "error": str(exc)}
            results.append(result[0] if isinstance(result, list) else result)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        codes = collections.Counter(r.get("code", 0) for r in results)
        assert len(results) == 48 and set(codes) == {0, 429}, (len(results), codes, results[:3])
        refused = [r for r in results if r.get("code") == 429]
        assert len(refused) >= 40 and all("Concurrent RPC limit" in r["error"] for r in refused), codes
        # 48 x 4 MiB = 192 MiB were sent at once. Holding them all would grow the peak past that; the 4 admitted
        # calls (a few copies each) and gRPC's transport buffers of the refused ones grew it by 75-94 MiB in 8 runs.
        grown = peak_rss_mib(pid) - before
        assert grown < 144, f"peak RSS grew {grown:.0f} MiB"
        assert psutil.Process(pid).is_running()
    finally:
        server.stop()


def test_messages_that_do_not_decode_are_invalid_argument(server):
    raw = {"request_serializer": None, "response_deserializer": None}
    with server.channel() as channel:
        code, serving_code, details = refusal(channel.unary_unary("/serving.v1.Inference/Infer", **raw), b"\x00")
        assert (code, serving_code) == (grpc.StatusCode.INVALID_ARGUMENT, "400")
        assert details == "the request is not a valid serving.v1.InferRequest message"
        # In a stream, the messages before the bad one are answered, then the call ends with the refusal.
        good = service_pb2.ModelInferRequest(model_name="probe", id="first")
        good.inputs.add(name="attribute", datatype="BYTES", shape=[1])
        good.raw_input_contents.append(len(b"{}").to_bytes(4, "little") + b"{}")
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer", **raw)
        answers = []
        with pytest.raises(grpc.RpcError) as info:
            for answer in stream(iter([good.SerializeToString(), b"\x00"]), timeout=TIMEOUT):
                answers.append(service_pb2.ModelStreamInferResponse.FromString(answer))
        assert [a.infer_response.id for a in answers] == ["first"] and not answers[0].error_message
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ModelInferRequest" in info.value.details()


def test_a_stream_longer_than_its_in_flight_bound_is_answered_whole(server):
    from serving.servicers.kserve import MAX_STREAM_IN_FLIGHT

    def requests():
        for i in range(MAX_STREAM_IN_FLIGHT * 2 + 10):
            request = service_pb2.ModelInferRequest(model_name="probe", id=str(i))
            request.inputs.add(name="attribute", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(len(b"{}").to_bytes(4, "little") + b"{}")
            yield request

    with server.channel() as channel:
        stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
        answers = list(stream(requests(), timeout=60))
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(MAX_STREAM_IN_FLIGHT * 2 + 10))
    # Each is answered, or refused as retryable when probe's queue (64) is full; at least a queue's worth answered.
    assert {a.error_message[:5] for a in answers} <= {"", "[429]"}
    assert sum(not a.error_message for a in answers) >= 64, [a.error_message for a in answers][:3]


def test_calls_that_time_out_in_the_queue_free_their_payload_at_once():
    # While one long net_inference call runs, callers with short deadlines keep timing out (504). The queue's
    # bound (queue_size) counts live requests only, so what timed out must leave the queue with its payload
    # then, not when the loop next reaches it: 160 x 1 MiB timed out here, and the worker held on to all of it.
    server = RunningServer(["--evals", str(TESTS / "apps_faults")])
    try:
        host, port = server.target.split(":")

        async def flood():
            async with AsyncClient(host, int(port), "steady", timeout=TIMEOUT) as slow:
                pid = (await slow.infer({"attribute": {}}))[0]["pid"]
                blocker = asyncio.ensure_future(slow.infer({"attribute": {}}, params={"sleep_ms": 6000}))
                await asyncio.sleep(0.5)
                before = psutil.Process(pid).memory_info().rss / MIB
                body = bytes(MIB)
                codes = collections.Counter()
                async with AsyncClient(host, int(port), "steady", timeout=0.2) as hurried:
                    for _ in range(20):
                        for result in await asyncio.gather(*[hurried.infer({"blob": body}) for _ in range(8)]):
                            codes[(result[0] if isinstance(result, list) else result).get("code", 0)] += 1
                grown = psutil.Process(pid).memory_info().rss / MIB - before
                assert not blocker.done(), "the long call ended before the flood did: nothing was measured"
                assert (await blocker)[0]["pid"] == pid
                return codes, grown

        codes, grown = asyncio.run(flood())
        assert codes == {504: 160}, codes
        # Holding them all grew it by 233 MiB; freed at once, by 84 (gRPC's buffers and the allocator's reuse).
        assert grown < 130, f"the worker's RSS grew {grown:.0f} MiB with 160 x 1 MiB calls timed out"
    finally:
        server.stop()


def test_a_stream_error_answer_quoting_a_huge_name_keeps_the_stream_going():
    # The error answer echoes the model name (and quotes it in its message): cut, as unary details are, or the
    # answer passes the send limit and gRPC ends the whole stream.
    server = RunningServer(["--evals", str(TESTS / "apps"), "--max-message-mb", "1"])
    try:
        def request(request_id, model):
            message = service_pb2.ModelInferRequest(model_name=model, id=request_id)
            message.inputs.add(name="attribute", datatype="BYTES", shape=[1]).contents.bytes_contents.append(b"{}")
            return message

        def requests():
            yield request("before", "probe")
            yield request("huge", "m" * 600_000)  # fits the 1 MiB limit once, not twice
            yield request("after", "probe")

        with server.channel() as channel:
            stream = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
            answers = {a.infer_response.id: a for a in stream(requests(), timeout=TIMEOUT)}
        assert set(answers) == {"before", "huge", "after"}
        assert answers["huge"].error_message.startswith("[404] unknown app 'mmm")
        assert len(answers["huge"].error_message) < 1100 and not answers["after"].error_message
    finally:
        server.stop()


def test_a_stream_whose_client_does_not_read_is_not_read_past_its_byte_bound():
    # The client sends 2 MiB requests (probe echoes each body back) and never reads an answer: the answers stall,
    # so the stream's requests stay in flight. Past MAX_STREAM_BYTES (64 MiB, 32 of these) the server stops
    # reading the stream, and HTTP/2 flow control then holds the writer back. By request count alone (256 in
    # flight) one stream held 512 MiB here.
    from serving.servicers.kserve import MAX_STREAM_BYTES, join_bytes_elements

    body = bytes(2 * MIB)
    server = RunningServer(["--evals", str(TESTS / "apps"), "--max-message-mb", "4"])
    try:
        async def flood():
            sent = 0
            options = [("grpc.max_send_message_length", 8 * MIB), ("grpc.max_receive_message_length", 8 * MIB)]
            async with grpc.aio.insecure_channel(server.target, options=options) as channel:
                call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()

                async def write():
                    nonlocal sent
                    for i in range(400):
                        request = service_pb2.ModelInferRequest(model_name="probe", id=str(i))
                        request.inputs.add(name="body", datatype="BYTES", shape=[1])
                        request.raw_input_contents.append(join_bytes_elements([body]))
                        await call.write(request)
                        sent += 1

                writer = asyncio.ensure_future(write())
                await asyncio.sleep(6)
                writer.cancel()
                call.cancel()
            return sent

        sent = asyncio.run(flood())
        # What the server holds, plus what the transports buffer: a few messages each side of a connection, and
        # as many again behind the native front end, whose relay is a second connection (16-27 measured under
        # load, 4-10 for grpc.aio alone). Unbounded, it would be the 256 requests a stream may have in flight.
        assert MAX_STREAM_BYTES // len(body) <= sent < MAX_STREAM_BYTES // len(body) + 40, sent
    finally:
        server.stop()
