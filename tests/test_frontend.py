"""The native front end (serving.frontend) answers what the grpc.aio front end answers.

Two real servers of the same apps, one `--frontend native` and one `--frontend python`, take the same calls; the
bytes, status codes, details and trailing metadata a client receives must be the same. The fast methods (KServe
ModelInfer, native Infer) run through the front end's hand-off to Python; every other method is relayed to the
grpc.aio server behind it, streams included. Then what only the native front end does: it relays a stream the
grpc.aio server ends while its client still holds it open, passes cancellations on (a cancelled call never
reaches net_inference), and reports which front end it runs.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving import codec
from serving.errors import CODE_METADATA_KEY, REQUEST_ID_METADATA_KEY
from serving.proto import inference_pb2 as pb
from serving.proto import kserve_pb2 as kpb
from serving.servicers.kserve import join_bytes_elements
from conftest import FRONTENDS, REPO, TESTS, RunningServer

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
INFER = "/serving.v1.Inference/Infer"
TOKEN_FILE = "0123456789abcdef0123456789abcdef  alice admin\nfedcba9876543210fedcba9876543210  bob\n"
ALICE = (("authorization", "Bearer 0123456789abcdef0123456789abcdef"),)
BOB = (("authorization", "Bearer fedcba9876543210fedcba9876543210"),)


def start(frontend, *args):
    server = RunningServer(["--evals", str(TESTS / "apps_frontend"), "--frontend", frontend, "--max-message-mb",
                            "1", *args])
    assert f"({frontend} front end" in server.output, server.output
    return server


def both(*args):
    """{front end: server} of tests/apps_frontend with these flags, stopped on leaving."""
    running = {}
    try:
        for frontend in FRONTENDS:
            running[frontend] = start(frontend, *args)
        yield running
    finally:
        for server in running.values():
            server.stop()


@pytest.fixture(scope="module")
def servers():
    yield from both()


@pytest.fixture(scope="module")
def token_servers(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens.write_text(TOKEN_FILE)
    tokens.chmod(0o600)
    yield from both("--auth-tokens", str(tokens))


def unary(target, method, body, metadata=(), timeout=10):
    """What a client sees of one unary call sending `body` (raw bytes): (status name, response bytes or details,
    the trailing metadata that carries meaning)."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method)
        try:
            response, info = call.with_call(body, metadata=metadata, timeout=timeout)
            return "OK", response, _meaningful(info.trailing_metadata())
        except grpc.RpcError as exc:
            return exc.code().name, exc.details(), _meaningful(exc.trailing_metadata())


def _meaningful(trailing):
    return {key: value for key, value in trailing or () if key in (CODE_METADATA_KEY, REQUEST_ID_METADATA_KEY)}


def kserve_request(model="echo", n=1, attributes=None, params=None, tensor=True, body=None, request_id="r-1"):
    request = kpb.ModelInferRequest(model_name=model, id=request_id)
    if tensor:
        values = np.arange(n * 4, dtype=np.float32).reshape(n, 4)
        request.inputs.add(name="pixels", datatype="FP32", shape=[n, 4])
        request.raw_input_contents.append(values.tobytes())
    if attributes is not None:
        request.inputs.add(name="attribute", datatype="BYTES", shape=[n])
        request.raw_input_contents.append(join_bytes_elements([json.dumps(a).encode() for a in attributes]))
    if body is not None:
        request.inputs.add(name="body", datatype="BYTES", shape=[n])
        request.raw_input_contents.append(join_bytes_elements([body] * n))
    if params is not None:
        request.parameters["params"].string_param = json.dumps(params)
    return request.SerializeToString()


def native_request(app="echo", instances=({"attribute": {"k": 1}},), params=None):
    return codec.instances_to_request(app, "inference", list(instances), params).SerializeToString()


def with_timeout(**value):
    """A request with a `timeout` parameter of this one field, e.g. string_param="soon"."""
    request = kpb.ModelInferRequest.FromString(kserve_request())
    for field, item in value.items():
        setattr(request.parameters["timeout"], field, item)
    return request.SerializeToString()


CALLS = {
    "infer one": (MODEL_INFER, kserve_request(attributes=[{"a": 1}], params={"p": "x"}), ()),
    "infer three with body": (MODEL_INFER, kserve_request(n=3, attributes=[{}, {"b": [1, 2]}, {}], body=b"abc"), ()),
    "infer one failed": (MODEL_INFER, kserve_request(attributes=[{"fail": 422}]), ()),
    "infer one failed of three": (MODEL_INFER, kserve_request(n=3, attributes=[{}, {"fail": 404}, {}]), ()),
    "infer batch failed": (MODEL_INFER, kserve_request(params={"batch_fail": [571, "try again"]}), ()),
    "infer unknown model": (MODEL_INFER, kserve_request(model="nope"), ()),
    "infer no inputs": (MODEL_INFER, kpb.ModelInferRequest(model_name="echo").SerializeToString(), ()),
    "infer not a message": (MODEL_INFER, b"\xff\xff\xff\xff", ()),
    "infer bad timeout type": (MODEL_INFER, with_timeout(string_param="soon"), ()),
    "infer negative timeout": (MODEL_INFER, with_timeout(int64_param=-1), ()),
    "infer request id from metadata": (MODEL_INFER, kserve_request(model="nope", request_id=""),
                                       ((REQUEST_ID_METADATA_KEY, "from-metadata"),)),
    "native infer": (INFER, native_request(params={"q": 2}), ((REQUEST_ID_METADATA_KEY, "n-1"),)),
    "native infer failed": (INFER, native_request(instances=[{"attribute": {"fail": 409}}]),
                            ((REQUEST_ID_METADATA_KEY, "n-2"),)),
    "native unknown app": (INFER, native_request(app="nope"), ((REQUEST_ID_METADATA_KEY, "n-3"),)),
    "native not a message": (INFER, b"\x0a\xff", ()),
    "relayed server metadata": ("/inference.GRPCInferenceService/ServerMetadata",
                                kpb.ServerMetadataRequest().SerializeToString(), ()),
    "relayed model metadata": ("/inference.GRPCInferenceService/ModelMetadata",
                               kpb.ModelMetadataRequest(name="echo").SerializeToString(), ()),
    "relayed unknown model": ("/inference.GRPCInferenceService/ModelConfig",
                              kpb.ModelConfigRequest(name="nope").SerializeToString(), ()),
    "relayed unknown method": ("/inference.GRPCInferenceService/Nope", b"", ()),
    "relayed unknown service": ("/no.Such/Method", b"", ()),
    "relayed unsupported": ("/inference.GRPCInferenceService/TraceSetting", b"", ()),
    "relayed list apps": ("/serving.v1.Inference/ListApps", pb.ListAppsRequest().SerializeToString(), ()),
}


def assert_same_answers(servers, call):
    """`call` (method, body, metadata) made to each server: the answers must be the same."""
    answers = {frontend: unary(server.target, *call) for frontend, server in servers.items()}
    assert answers["native"] == answers["python"]


@pytest.mark.parametrize("name", list(CALLS))
def test_both_front_ends_answer_the_same(servers, name):
    assert_same_answers(servers, CALLS[name])


def test_both_front_ends_refuse_messages_over_the_limit(servers):
    body = kserve_request(body=bytes(2 << 20), tensor=False)
    for server in servers.values():
        status, details, _ = unary(server.target, MODEL_INFER, body)
        assert status == "RESOURCE_EXHAUSTED" and "larger than max" in details
        status, details, _ = unary(server.target, "/inference.GRPCInferenceService/ModelMetadata", body)
        assert status == "RESOURCE_EXHAUSTED" and "larger than max" in details


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_deadline_passes_with_deadline_exceeded(servers, frontend):
    status, _, _ = unary(servers[frontend].target, MODEL_INFER, kserve_request(params={"sleep_ms": 1500}),
                         timeout=0.3)
    assert status == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_cancelled_call_never_reaches_net_inference(servers, frontend):
    # batch_size 4: a call of 4 instances holds net_inference; a call queued behind it is cancelled before its
    # turn, and is dropped then. The marks net_inference saw tell.
    with grpc.insecure_channel(servers[frontend].target) as channel:
        infer = channel.unary_unary(MODEL_INFER)
        busy = infer.future(kserve_request(n=4, attributes=[{}] * 4, params={"sleep_ms": 800}), timeout=10)
        time.sleep(0.2)
        queued = infer.future(kserve_request(attributes=[{"mark": f"cancelled-{frontend}"}]), timeout=10)
        time.sleep(0.2)
        assert queued.cancel()
        busy.result()
        answer = kpb.ModelInferResponse.FromString(
            infer(kserve_request(attributes=[{"mark": "later"}], params={"marks": True}), timeout=10))
    outputs = {output.name: index for index, output in enumerate(answer.outputs)}
    marks = json.loads(answer.raw_output_contents[outputs["marks"]][4:])  # one BYTES element: length, then JSON
    assert "later" in marks and f"cancelled-{frontend}" not in marks


def stream_requests(n):
    for i in range(n):
        yield kpb.ModelInferRequest.FromString(kserve_request(attributes=[{"i": i}], request_id=f"s-{i}"))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_relayed_stream_answers_every_request(servers, frontend):
    with grpc.insecure_channel(servers[frontend].target) as channel:
        stream = channel.stream_stream(MODEL_STREAM_INFER, request_serializer=kpb.ModelInferRequest.SerializeToString,
                                       response_deserializer=kpb.ModelStreamInferResponse.FromString)
        answers = list(stream(stream_requests(60), timeout=30))  # within the queue of 64
    assert sorted(answer.infer_response.id for answer in answers) == sorted(f"s-{i}" for i in range(60))
    assert not any(answer.error_message for answer in answers)


def held_open_stream(target, first, metadata=()):
    """A stream whose client sends `first` (raw bytes) and then holds it open without sending or closing: (status
    name, seconds until the status arrived)."""
    release = threading.Event()

    def requests():
        yield first
        release.wait(20)  # the client neither sends nor half-closes meanwhile

    started = time.monotonic()
    try:
        with grpc.insecure_channel(target) as channel:
            stream = channel.stream_stream(MODEL_STREAM_INFER)
            list(stream(requests(), metadata=metadata, timeout=15))
            return "OK", time.monotonic() - started
    except grpc.RpcError as exc:
        return exc.code().name, time.monotonic() - started
    finally:
        release.set()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_stream_the_server_ends_is_ended_while_its_client_holds_it_open(servers, frontend):
    # A message that does not decode ends the stream with 400 at once; the relay must not wait for the client.
    status, seconds = held_open_stream(servers[frontend].target, b"\xff\xff")
    assert status == "INVALID_ARGUMENT" and seconds < 5


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_an_unauthenticated_stream_is_refused_while_its_client_holds_it_open(token_servers, frontend):
    status, seconds = held_open_stream(token_servers[frontend].target, kserve_request())
    assert status == "UNAUTHENTICATED" and seconds < 5


TOKEN_CALLS = {
    "fast, no token": (MODEL_INFER, kserve_request(), ()),
    "fast, user": (MODEL_INFER, kserve_request(), BOB),
    "fast, wrong token": (MODEL_INFER, kserve_request(), (("authorization", "Bearer " + "x" * 32),)),
    "native, no token": (INFER, native_request(), ((REQUEST_ID_METADATA_KEY, "t-1"),)),
    "native, user": (INFER, native_request(), BOB + ((REQUEST_ID_METADATA_KEY, "t-2"),)),
    "relayed, no token": ("/inference.GRPCInferenceService/ServerLive", b"", ()),
    "relayed, user": ("/inference.GRPCInferenceService/ServerLive", b"", BOB),
    "load as user": ("/inference.GRPCInferenceService/RepositoryModelLoad",
                     kpb.RepositoryModelLoadRequest(model_name="echo").SerializeToString(), BOB),
    "load as admin": ("/inference.GRPCInferenceService/RepositoryModelLoad",
                      kpb.RepositoryModelLoadRequest(model_name="echo").SerializeToString(), ALICE),
    "health, no token": ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString(), ()),
}


@pytest.mark.parametrize("name", list(TOKEN_CALLS))
def test_both_front_ends_authenticate_the_same(token_servers, name):
    assert_same_answers(token_servers, TOKEN_CALLS[name])


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_health_watch_is_relayed_until_shutdown(frontend):
    server = start(frontend, "--grace", "3")
    try:
        with grpc.insecure_channel(server.target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="echo"),
                                                              timeout=20)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.proc.terminate()
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert server.proc.wait(15) == 0
    finally:
        server.stop()


def test_an_unknown_front_end_is_refused():
    result = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--frontend", "cxx", "--port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--frontend: invalid choice: 'cxx'" in result.stderr


# ---- metadata gRPC's clients cannot send ----------------------------------------------------------------------

def _frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _header_field(name, value):
    """An HPACK literal header field without indexing, no Huffman coding (lengths under 127)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def raw_call(port, path, metadata, body):
    """A gRPC call sent as raw HTTP/2 with `metadata` as it is ((bytes, bytes) pairs a gRPC client would refuse to
    send): whether the server ended the call (trailers or a reset) within 10 s."""
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
              (b":authority", f"127.0.0.1:{port}".encode()), (b"content-type", b"application/grpc"),
              (b"te", b"trailers"), *metadata]
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
                           + _frame(1, 4, 1, b"".join(_header_field(k, v) for k, v in fields))
                           + _frame(0, 1, 1, message))
        received = b""
        try:
            while True:
                while len(received) >= 9 and len(received) >= 9 + int.from_bytes(received[:3], "big"):
                    length, kind, flags = int.from_bytes(received[:3], "big"), received[3], received[4]
                    stream = int.from_bytes(received[5:9], "big") & 0x7FFFFFFF
                    received = received[9 + length:]
                    if stream == 1 and (kind == 3 or (kind in (0, 1) and flags & 1)):
                        return True  # RST_STREAM, or the frame that ends the stream (trailers)
                    if kind == 7:
                        return True  # GOAWAY: the connection was refused as a whole
                chunk = connection.recv(65536)
                if not chunk:
                    return False
                received += chunk
        except socket.timeout:
            return False


BAD_METADATA = {
    "a tab in a value": [(b"x-note", b"a\tb")],
    "a byte over 0x7f in a value": [(b"x-note", b"caf\xe9")],
    "an upper-case key": [(b"X-Note", b"1")],
    "a key that is not UTF-8": [(b"x\xe9y", b"1")],
}


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("what", list(BAD_METADATA))
def test_metadata_grpc_clients_cannot_send_ends_only_its_own_call(servers, frontend, what):
    # Relayed (health needs no token) and fast: each call is ended, and the server serves on; passed on unchecked
    # to gRPC's client side, such a pair made grpc++ abort the whole worker.
    server = servers[frontend]
    for path, body in (("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString()),
                       (MODEL_INFER, kserve_request())):
        assert raw_call(server.port, path, BAD_METADATA[what], body), (path, what)
    assert server.proc.poll() is None, server.output[-3000:]
    assert unary(server.target, MODEL_INFER, kserve_request())[0] == "OK"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_request_id_that_is_not_ascii_is_read_as_grpc_aio_reads_it(servers, frontend):
    # Handed to the handler as latin-1 text, as grpc.aio does, and sent back escaped with the 404 (the trailers
    # are literal HPACK fields, so they can be found in the raw bytes).
    answer = raw_call_answer(servers[frontend], [(REQUEST_ID_METADATA_KEY.encode(), b"caf\xe9")])
    assert b"serving-code\x03404" in answer and b"x-request-id\x07caf\\xe9" in answer, answer


def raw_call_answer(server, metadata):
    """The raw bytes a native Infer to an unknown app, sent with `metadata`, gets back (trailers, undecoded)."""
    fields = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", INFER.encode()),
              (b":authority", b"127.0.0.1"), (b"content-type", b"application/grpc"), (b"te", b"trailers"), *metadata]
    body = native_request(app="nope")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
                           + _frame(1, 4, 1, b"".join(_header_field(k, v) for k, v in fields))
                           + _frame(0, 1, 1, b"\x00" + len(body).to_bytes(4, "big") + body))
        time.sleep(1)
        return connection.recv(65536)


def test_metadata_up_to_grpc_aios_hard_limit_is_taken(servers):
    # gRPC 1.51's own limit (8 KiB) refused every call that grpc.aio may take: grpc.aio takes up to 8 KiB always,
    # and up to its hard limit of 16 KiB with a probability that falls as the size grows (its "soft" limit), so
    # only the native front end's answer is certain here.
    for size in (8300, 12000, 15500):
        for method, body in ((MODEL_INFER, kserve_request()),
                             ("/inference.GRPCInferenceService/ServerLive", kpb.ServerLiveRequest().SerializeToString())):
            assert unary(servers["native"].target, method, body, (("x-note", "n" * size),))[0] == "OK", (size, method)
    status, details, _ = unary(servers["native"].target, MODEL_INFER, kserve_request(), (("x-note", "n" * 17000),))
    assert status == "RESOURCE_EXHAUSTED", details


# ---- the grpc.aio server's private socket folder ---------------------------------------------------------------

def socket_folders(parent):
    return sorted(path.name for path in parent.glob("serving-grpc-*"))


def test_a_tmpdir_too_long_for_a_socket_address_is_passed_over(tmp_path):
    # A socket's path must fit a socket address (108 bytes): the folder goes to the next place (/tmp), instead of
    # grpc.aio failing to bind and the worker to start.
    parent = tmp_path / ("d" * 100)
    parent.mkdir()
    server = RunningServer(["--evals", str(TESTS / "apps_frontend"), "--frontend", "native"],
                           env={"TMPDIR": str(parent)})
    try:
        assert unary(server.target, MODEL_INFER, kserve_request())[0] == "OK"
        assert not socket_folders(parent)
    finally:
        assert server.stop() == 0


def test_the_socket_folders_of_dead_workers_are_removed(tmp_path):
    # A worker killed before it could stop leaves its folder; the next one removes those whose socket nobody
    # listens on, once a minute old, and leaves the rest alone.
    def folder(name, listening=False, age_s=120, bound=True):
        path = tmp_path / name
        path.mkdir(mode=0o700)
        if bound:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path / "grpc.sock"))
            if listening:
                sock.listen()
                kept.append(sock)
            else:
                sock.close()
        os.utime(path, (time.time() - age_s,) * 2)

    kept = []
    folder("serving-grpc-dead")
    folder("serving-grpc-never-bound", bound=False)  # a worker that died before it bound its socket
    folder("serving-grpc-young", age_s=0)
    folder("serving-grpc-alive", listening=True)
    folder("other-dead")
    server = RunningServer(["--evals", str(TESTS / "apps_frontend"), "--frontend", "native"],
                           env={"TMPDIR": str(tmp_path)})
    try:
        mine = set(socket_folders(tmp_path)) - {"serving-grpc-young", "serving-grpc-alive"}
        assert len(mine) == 1, socket_folders(tmp_path)
        assert not (tmp_path / "serving-grpc-dead").exists() and not (tmp_path / "serving-grpc-never-bound").exists()
        assert (tmp_path / "other-dead").exists()
        (mine,) = mine
        assert (tmp_path / mine).stat().st_mode & 0o777 == 0o700
    finally:
        assert server.stop() == 0
        for sock in kept:
            sock.close()
    assert socket_folders(tmp_path) == ["serving-grpc-alive", "serving-grpc-young"]
