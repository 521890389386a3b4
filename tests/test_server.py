"""The native protocol against a real server on loopback: values, batching, ordering, every error path."""
import asyncio
import concurrent.futures
import datetime
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import REPO, TESTS, RunningServer, wait_until
from serving import codec
from serving.client import AsyncClient, Client
from serving.proto import inference_pb2 as pb
from serving.proto import inference_pb2_grpc as pb_grpc
from test_workers import free_port, start_until, stop_within


def client_for(server, app="probe", **kwargs):
    host, port = server.target.split(":")
    return Client(host, int(port), app, **kwargs)


def raw_infer(server, request, metadata=None, timeout=10):
    """Call Infer with the generated stub; returns (response or None, status code, details, trailing dict)."""
    with server.channel() as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            response, call = stub.Infer.with_call(request, metadata=metadata, timeout=timeout)
            return response, call.code(), call.details(), dict(call.trailing_metadata() or ())
        except grpc.RpcError as exc:
            return None, exc.code(), exc.details(), dict(exc.trailing_metadata() or ())


# ---- values ----------------------------------------------------------------------------------------------------------

def test_every_value_type_round_trips(apps_server):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    instance = {
        "x": x, "u8": np.arange(5, dtype=np.uint8), "flags": np.array([True, False]), "f16": np.ones(2, np.float16),
        "i64": np.array([-(2**40)], np.int64), "scalar": np.int16(-7), "s64": np.float64(2.5),
        "b": True, "i": 2**40, "f": 0.25, "text": "héllo", "raw": b"\x00\xff", "uri": "/data/a.png",
        "body": b"\x01\x02\x03", "attribute": {"roi": [1, 2, 3, 4], "name": "v"},
    }
    with client_for(apps_server) as client:
        [result] = client.infer(instance, params={"threshold": 0.5})
    data = result["data"]
    # Tensors arrive as read-only views of the message (no copy).
    assert data["x"] == {"type": "ndarray", "dtype": "float32", "shape": [3, 4], "writeable": False}
    assert data["u8"]["dtype"] == "uint8" and data["flags"]["dtype"] == "bool" and data["f16"]["dtype"] == "float16"
    assert data["scalar"] == {"type": "numpy_scalar", "dtype": "int16"}
    assert data["b"] == {"type": "bool", "value": True}
    assert data["i"] == {"type": "int", "value": 2**40}
    assert data["f"] == {"type": "float", "value": 0.25}
    assert data["text"] == {"type": "str", "value": "héllo"}
    assert data["raw"] == {"type": "bytes", "len": 2}
    assert data["uri"] == {"type": "str", "value": "/data/a.png"}
    assert data["body"] == {"type": "bytes", "len": 3}
    assert data["attribute"] == {"type": "dict", "value": {"roi": [1, 2, 3, 4], "name": "v"}}
    assert result["params"] == {"threshold": 0.5}
    # numpy values come back as numpy values of the same dtype; bytes as bytes.
    np.testing.assert_array_equal(result["echo_x"], x)
    assert result["echo_x"].dtype == np.float32
    np.testing.assert_array_equal(result["echo_i64"], instance["i64"])
    assert isinstance(result["echo_scalar"], np.int16) and result["echo_scalar"] == -7
    # np.float64 subclasses float: it travels as a JSON number, and a Python float is a float64.
    assert result["echo_s64"] == 2.5
    assert result["echo_flags"].tolist() == [True, False]
    assert result["body"] == b"\x03\x02\x01"
    assert result["app"] == "probe" and result["same_thread"] is True and result["preprocessed"] is True


def test_results_come_back_in_order_with_per_instance_errors(apps_server):
    instances = [{"i": i, "attribute": {"fail": 404} if i == 3 else {}} for i in range(10)]
    with client_for(apps_server) as client:
        results = client.infer(instances)
    assert len(results) == 10
    for i, result in enumerate(results):
        if i == 3:
            assert result == {"error": "instance refused with 404", "code": 404}
        else:
            assert result["data"]["i"]["value"] == i
            assert result["batch_images"] <= 4


def test_multi_image_request_is_one_request_counting_its_images(apps_server):
    with client_for(apps_server) as client:
        results = client.infer([[{"body": b"a"}, {"body": b"bb"}, {"uri": "/x.png"}], {"body": b"c"}])
    assert len(results) == 2
    assert results[0]["data"] == [{"body": {"type": "bytes", "len": 1}}, {"body": {"type": "bytes", "len": 2}},
                                  {"uri": {"type": "str", "value": "/x.png"}}]
    assert results[0]["batch_images"] == 4 and results[0]["batch_requests"] == 2


def test_multi_image_request_over_batch_size_is_refused(apps_server):
    with client_for(apps_server) as client:
        result = client.infer([[{"body": b"a"}] * 5])
    assert result["code"] == 400 and "batch_size" in result["error"]


def test_request_id_reaches_the_eval_and_comes_back(apps_server):
    with client_for(apps_server, request_id="job-42") as client:
        [result] = client.infer({"i": 1})
    assert result["reqid"] == "job-42"
    response, code, _, _ = raw_infer(apps_server, pb.InferRequest(app="probe", instances=[pb.Instance(uri="u")]),
                                     metadata=(("x-request-id", "abc"),))
    assert code == grpc.StatusCode.OK and response.request_id == "abc"


# ---- batching --------------------------------------------------------------------------------------------------------

def test_batches_form_under_concurrency_and_never_exceed_batch_size(apps_server):
    host, port = apps_server.target.split(":")

    async def run():
        async with AsyncClient(host, int(port), "probe") as client:
            calls = [client.infer({"i": i}, params={"sleep_ms": 20}) for i in range(48)]
            return await asyncio.gather(*calls)

    results = [r[0] for r in asyncio.run(run())]
    assert [r["data"]["i"]["value"] for r in results] == list(range(48))
    sizes = [r["batch_images"] for r in results]
    assert max(sizes) <= 4
    assert max(sizes) == 4, f"no full batch formed under 48 concurrent calls: {sizes}"
    assert all(r["same_thread"] for r in results)


def test_a_lone_request_does_not_wait_for_the_window(tmp_path):
    # A lone request must not pay the batch window (no other request is on its way). The probe's window is 20 ms,
    # too close to a loaded machine's own delays to tell apart; this copy of it has a 5 s window, so a call that
    # waited for it takes seconds, one that did not a few milliseconds.
    evals = tmp_path / "evals"
    shutil.copytree(TESTS / "apps" / "probe", evals / "probe", ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((evals / "probe" / "app.json").read_text())
    config.update(batch_window_ms=5000, request_timeout_s=60)
    (evals / "probe" / "app.json").write_text(json.dumps(config))
    server = RunningServer(["--evals", str(evals)])
    try:
        with client_for(server, timeout=30) as client:
            for i in range(5):
                started = time.perf_counter()
                [result] = client.infer({"i": i})
                took = time.perf_counter() - started
                assert result["batch_images"] == 1 and result["data"]["i"]["value"] == i, result
                assert took < 2.5, f"a lone call took {took:.2f}s: the 5 s window was waited for"
    finally:
        assert server.stop() == 0, server.output


# ---- errors on the wire -----------------------------------------------------------------------------------------------

def test_unknown_app_is_not_found_with_code_in_trailing_metadata(apps_server):
    _, code, details, trailing = raw_infer(apps_server, pb.InferRequest(app="nope", instances=[pb.Instance()]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "unknown app 'nope'" in details and "probe" in details
    assert trailing["serving-code"] == "404"
    with client_for(apps_server, app="nope") as client:
        assert client.infer({"i": 1}) == {"error": details, "code": 404}


def test_unknown_method_is_not_found(apps_server):
    with client_for(apps_server, method_name="train") as client:
        result = client.infer({"i": 1})
    assert result["code"] == 404 and "no method 'train'" in result["error"]


@pytest.mark.parametrize("instance, params, expected", [
    (pb.Instance(inputs={"x": pb.Value(tensor=pb.Tensor(dtype="complex64", shape=[1], data=b"12345678"))}), "",
     "unknown dtype 'complex64'"),
    (pb.Instance(inputs={"x": pb.Value(tensor=pb.Tensor(dtype="float32", shape=[2, 2], data=b"123"))}), "",
     "needs 16 bytes, got 3"),
    (pb.Instance(inputs={"x": pb.Value(tensor=pb.Tensor(dtype="int8", shape=[-1], data=b""))}), "",
     "negative dimension"),
    (pb.Instance(attribute="{not json"), "", "attribute is not valid JSON"),
    (pb.Instance(uri="a"), "[1, 2]", "params must be a JSON object"),
    (pb.Instance(uri="a"), "{bad", "params is not valid JSON"),
    (pb.Instance(inputs={"body": pb.Value(string_value="x")}), "", "must use its own field"),
    (pb.Instance(inputs={"x": pb.Value()}), "", "empty value"),
    (pb.Instance(attribute="[" * 40 + "]" * 40), "", "attribute nests deeper than 32 levels"),
    (pb.Instance(attribute="[" * 100000 + "]" * 100000), "", "attribute is not valid JSON"),
    (pb.Instance(uri="a"), json.dumps({"k": "x" * (1024 * 1024)}), "over the limit of 1048576"),
    (pb.Instance(uri="a", images=[pb.Instance(uri="b")]), "", "multi-image instance"),
])
def test_malformed_instances_are_invalid_argument(apps_server, instance, params, expected):
    request = pb.InferRequest(app="probe", instances=[instance], params=params)
    _, code, details, trailing = raw_infer(apps_server, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in details
    assert trailing["serving-code"] == "400"


def test_a_call_without_instances_is_invalid_argument(apps_server):
    _, code, details, _ = raw_infer(apps_server, pb.InferRequest(app="probe"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no instances" in details


def test_undecodable_image_bytes_are_400_from_the_eval(apps_server):
    with client_for(apps_server, app="legacy_style") as client:
        [result] = client.infer({"body": b"this is not an image"})
    assert result["code"] == 400 and "cv2 load" in result["error"]


def test_oversized_message_is_refused_and_the_server_keeps_serving(apps_server):
    host, port = apps_server.target.split(":")
    with Client(host, int(port), "probe", max_message_bytes=128 * 2**20) as client:
        result = client.infer({"body": b"\0" * (40 * 2**20)})
        assert result["code"] == 413 and "larger than max" in result["error"]
        assert client.infer({"i": 1})[0]["data"]["i"]["value"] == 1


def test_an_eval_that_raises_fails_its_batch_with_599_only(apps_server):
    with client_for(apps_server) as client:
        result = client.infer({"i": 1}, params={"raise": True})
        assert result == [{"error": "boom in eval", "code": 599}]
        assert client.infer({"i": 2})[0]["data"]["i"]["value"] == 2


def test_an_eval_calling_sys_exit_fails_its_requests_not_the_server(apps_server):
    with client_for(apps_server) as client:
        assert client.infer({"i": 1}, params={"exit": True}) == [{"error": "eval gave up", "code": 599}]
        assert client.infer({"attribute": {"pre_exit": True}}) == [{"error": "preprocess gave up", "code": 599}]
        assert client.infer({"i": 2})[0]["data"]["i"]["value"] == 2


def test_wrong_number_of_rets_fails_the_batch_with_500(apps_server):
    with client_for(apps_server) as client:
        results = client.infer([{"i": 1}, {"i": 2}], params={"wrong_count": True})
    assert all(r["code"] == 500 for r in results)
    assert "returned 1 rets for 2 requests" in results[0]["error"]


def test_rets_the_runtime_cannot_read_fail_their_batch_at_once(apps_server):
    # A body that is a numpy array (what cv2.imencode returns) has no truth value: reading the rets raises. Its
    # callers get 599 with the reason at once, not a 504 when their deadline (5 s for probe) has passed.
    with client_for(apps_server) as client:
        started = time.monotonic()
        results = client.infer([{"i": 1}, {"i": 2}], params={"array_body": True})
    assert time.monotonic() - started < 3
    assert all(r["code"] == 599 and "truth value of an array" in r["error"] for r in results), results


@pytest.mark.parametrize("code", [503, 571, 500])
def test_batch_level_code_with_message_fails_every_request(apps_server, code):
    with client_for(apps_server) as client:
        results = client.infer([{"i": 1}, {"i": 2}], params={"batch_fail": [code, "model busy"]})
    assert results == [{"error": "model busy", "code": code}] * 2


def test_eval_codes_and_messages_the_wire_cannot_carry_come_back_as_errors(apps_server):
    with client_for(apps_server) as client:
        # Codes travel as int32: a larger one is the eval's error (500), its neighbours unharmed.
        results = client.infer([{"attribute": {"fail": 2**40}}, {"i": 2}])
        assert results[0]["code"] == 500 and "code 1099511627776, outside the 32-bit range" in results[0]["error"]
        assert results[1]["data"]["i"]["value"] == 2
        # A lone surrogate (what os.fsdecode makes of an undecodable file name) cannot be UTF-8: it is escaped.
        results = client.infer([{"i": 1}], params={"batch_fail": [404, "no such file: caf\udce9.png"]})
        assert results == [{"error": "no such file: caf\\udce9.png", "code": 404}]


def test_failures_are_told_by_their_type(apps_server):
    with client_for(apps_server) as client:
        (result,), (failed,) = client.infer({"i": 1}), client.infer({"attribute": {"fail": 404}})
    with client_for(apps_server, app="nope") as client:
        gone = client.infer({"i": 1})
    assert not isinstance(result, codec.Failure)
    assert isinstance(failed, codec.Failure) and failed == {"error": "instance refused with 404", "code": 404}
    assert isinstance(gone, codec.Failure) and gone["code"] == 404


def test_preprocess_failure_fails_that_instance_only(apps_server):
    with client_for(apps_server) as client:
        results = client.infer([{"attribute": {"pre_fail": 415}}, {"i": 2}])
    assert results[0] == {"error": "refused in preprocess", "code": 415}
    assert results[1]["data"]["i"]["value"] == 2


def test_full_queue_refuses_at_once_with_a_retryable_code(apps_server):
    host, port = apps_server.target.split(":")

    async def run():
        async with AsyncClient(host, int(port), "probe") as client:
            calls = [client.infer([{"i": i}] * 4, params={"sleep_ms": 100}) for i in range(24)]
            return await asyncio.gather(*calls)

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, dict)]
    served = [r for r in results if isinstance(r, list)]
    assert refused and served, "a queue of 64 images must refuse some of 96 and serve the rest"
    assert all(r["code"] == 429 and "queue is full" in r["error"] for r in refused)
    assert all(not any("error" in x for x in r) for r in served)


@pytest.fixture
def fresh_metered_server():
    """A server of tests/apps of a test's own, with metrics: the queue depth tells what it admitted."""
    server = RunningServer(["--evals", str(TESTS / "apps"), "--metrics-port", "0"])
    yield server
    server.stop()


def queue_depth(server, app="probe"):
    return metric(metric_samples(server), "serving_queue_depth", app=app)


def test_callers_that_cancel_give_their_queue_places_back(fresh_metered_server):
    # probe: batch_size 4, queue_size 64. One call holds net_inference while 15 calls of 4 images fill the rest of
    # the queue; those 15 callers cancel. If their places were not given back, every later call would get 429.
    with fresh_metered_server.channel() as channel:
        stub = pb_grpc.InferenceStub(channel)

        def call(params=None):
            request = codec.instances_to_request("probe", "inference", [{"i": 1}] * 4, params)
            return stub.Infer.future(request, timeout=10)

        busy = call({"sleep_ms": 700})
        assert wait_until(lambda: queue_depth(fresh_metered_server) == 4, 5, 0.01)
        waiting = [call() for _ in range(15)]
        # The queue is full (4 + 15 x 4 images admitted) while the busy call runs.
        assert wait_until(lambda: queue_depth(fresh_metered_server) == 64, 5, 0.01)
        assert not busy.done() and not any(future.done() for future in waiting), "the queue must still hold them"
        for future in waiting:
            future.cancel()
        # The server learns of a cancellation as the client's RST_STREAM is processed, not before the next call.
        assert wait_until(lambda: queue_depth(fresh_metered_server) == 4, 5, 0.01)
        later = [call() for _ in range(15)]
        assert all(len(future.result().results) == 4 for future in [busy, *later])
        assert all(result.code == 0 for future in later for result in future.result().results)


def test_never_returning_eval_gives_deadline_exceeded_and_health_says_so(fresh_apps_server):
    server = fresh_apps_server
    host, port = server.target.split(":")
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def status(service):
            return health.Check(health_pb2.HealthCheckRequest(service=service)).status

        assert status("probe") == health_pb2.HealthCheckResponse.SERVING
        with Client(host, int(port), "probe", timeout=0.5) as client:
            # A second caller that gives up while the first call hangs: dropped before net_inference.
            with Client(host, int(port), "probe", timeout=0.3) as impatient:
                hung = client.infer({"i": 1}, params={"hang_s": 3})
                assert hung["code"] == 504
                assert impatient.infer({"attribute": {"mark": "gave-up"}})["code"] == 504
            # inference_timeout_s is 1: the app is reported stuck, and refuses at once with a retryable code.
            assert wait_until(lambda: status("probe") == health_pb2.HealthCheckResponse.NOT_SERVING, 3)
            assert status("legacy_style") == health_pb2.HealthCheckResponse.SERVING
            stuck = client.infer({"i": 2})
            assert stuck["code"] == 503 and "stuck" in stuck["error"]
            apps = {a["name"]: a for a in client.apps()}
            assert apps["probe"]["state"] == "STUCK"
        assert wait_until(lambda: status("probe") == health_pb2.HealthCheckResponse.SERVING, 5)
        with Client(host, int(port), "probe", timeout=5) as client:
            [result] = client.infer({"i": 3})
        assert "gave-up" not in result["seen_marks"]


# ---- health, reflection, metrics, settings ---------------------------------------------------------------------------

def test_health_overall_and_per_app_and_reflection(apps_server):
    with apps_server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "probe", "legacy_style", "serving.v1.Inference"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"serving.v1.Inference", "grpc.health.v1.Health"} <= names


def test_effective_settings_are_visible_to_clients(apps_server):
    with client_for(apps_server) as client:
        apps = {a["name"]: a for a in client.apps()}
    probe = apps["probe"]
    assert probe["state"] == "READY" and probe["methods"] == ["inference"]
    assert probe["config"]["batch_size"] == 4 and probe["config"]["batch_window_ms"] == 20
    assert probe["config"]["custom_params"] == {"note": "probe"}
    assert apps["legacy_style"]["config"]["queue_size"] == 256  # a default, made visible
    assert apps["legacy_style"]["config"]["preprocess_workers"] == 0  # preprocessing inline on the loop
    assert "app probe: effective settings" in apps_server.output


def metric_samples(server):
    """{(sample name, ((label, value), ...) sorted): value} of the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric(samples, name, **labels):
    """The value of one sample (0 when the series is not exported yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_export_requests_batches_queue_and_eval_histogram(apps_server):
    before = metric_samples(apps_server)
    with client_for(apps_server, app="legacy_style") as client:
        import cv2

        ok, png = cv2.imencode(".png", np.full((40, 50, 3), 128, np.uint8))
        [result] = client.infer({"body": png.tobytes()})
        assert "error" not in result, result
    with client_for(apps_server) as client:
        client.infer({"i": 1})
        assert client.infer({"attribute": {"fail": 404}}) == [{"error": "instance refused with 404", "code": 404}]
    after = metric_samples(apps_server)

    def grew(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Each call counted once, under its app and the code its instance got.
    assert grew("serving_requests_total", app="probe", code="0") == 1
    assert grew("serving_requests_total", app="probe", code="404") == 1
    assert grew("serving_requests_total", app="legacy_style", code="0") == 1
    # Two net_inference calls of probe, one image each: both in the batch-size bucket of 1.
    assert grew("serving_batch_size_count", app="probe") == 2
    assert grew("serving_batch_size_bucket", app="probe", le="1.0") == 2
    assert grew("serving_batch_size_sum", app="probe") == 2
    assert grew("serving_inference_seconds_count", app="probe") == 2
    assert grew("serving_request_latency_seconds_count", app="probe") == 2
    assert grew("serving_request_latency_seconds_sum", app="probe") > 0
    # The eval's own histogram: legacy_style timed one forward pass of a batch of 1.
    assert grew("ava_serving_eval_response_time_count", method="py.forward", error="NIL", number="1") == 1
    assert metric(after, "serving_queue_depth", app="probe") == 0

    # The queue depth counts the images admitted and not yet answered, while they are (700 ms: probe's
    # inference_timeout_s is 1).
    with client_for(apps_server) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.infer, [{"i": 1}, {"i": 2}], {"sleep_ms": 700})
        assert wait_until(lambda: metric(metric_samples(apps_server), "serving_queue_depth", app="probe") == 2,
                          5, 0.01)
        assert [r["data"]["i"]["value"] for r in slow.result(10)] == [1, 2]
    assert metric(metric_samples(apps_server), "serving_queue_depth", app="probe") == 0


# ---- the CLI -----------------------------------------------------------------------------------------------------------

def test_cli_infer_prints_one_json_line_per_file(apps_server, tmp_path):
    import cv2

    files = []
    for i, size in enumerate((40, 64)):
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), np.full((size, size, 3), 30 * (i + 1), np.uint8))
        files.append(path)
    run = subprocess.run([sys.executable, "-m", "serving.cli", "infer", "--target", apps_server.target,
                          "--app", "legacy_style", *map(str, files)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert [line["height"] for line in lines] == [40, 64]


def test_ctrl_c_ends_a_cli_command_with_one_line_and_status_130(fresh_metered_server, tmp_path):
    """SIGINT (Ctrl-C) while `serving infer` waits on a slow call: no KeyboardInterrupt traceback."""
    image = tmp_path / "a.png"
    image.write_bytes(b"not decoded by probe")
    run = subprocess.Popen([sys.executable, "-m", "serving.cli", "infer", "--target", fresh_metered_server.target,
                            "--app", "probe", "--params", '{"sleep_ms": 5000}', str(image)], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The call is in the server's hands (it holds the probe's one image) before the interrupt.
        assert wait_until(lambda: queue_depth(fresh_metered_server) == 1, 15, 0.01)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=15)
    finally:
        run.kill()
    assert run.returncode == 130, stderr
    assert stderr.strip() == "serving infer: interrupted", stderr


def test_sigterm_finishes_calls_in_flight_and_exits_0(fresh_metered_server):
    server = fresh_metered_server
    host, port = server.target.split(":")
    import threading

    results = {}

    def call():
        with Client(host, int(port), "probe", timeout=10) as client:
            results["r"] = client.infer({"i": 7}, params={"sleep_ms": 700})

    caller = threading.Thread(target=call)
    caller.start()
    assert wait_until(lambda: queue_depth(server) == 1, 5, 0.01)  # admitted: in flight when the signal comes
    server.proc.terminate()
    caller.join(10)
    assert server.proc.wait(10) == 0
    assert results["r"][0]["data"]["i"]["value"] == 7


def test_sigterm_during_start_up_exits_0_at_once_without_serving(tmp_path):
    proc, lines = start_until(["--no-supervise", "--evals", str(TESTS / "apps_slow_start"), "--data-dir",
                               str(tmp_path)], "create_net started")
    code, took = stop_within(proc, 10)  # create_net sleeps 60 s
    time.sleep(0.2)
    assert code == 0 and took < 10, (code, took, "".join(lines))
    assert "serving on" not in "".join(lines)


# ---- start-up errors: one line naming the problem, a non-zero exit, no traceback ----------------------------------

def serve_fails(tmp_path, *args):
    """`serving serve --no-supervise ARGS` that must fail at start-up: its last line of output."""
    run = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--no-supervise", "--host", "127.0.0.1",
                          "--data-dir", str(tmp_path / "data"), "--evals", str(TESTS / "apps"), *args],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr and "serving on" not in run.stdout, run.stderr
    return run.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """Two self-signed certificates for 127.0.0.1 with their keys: {name: (cert path, key path)}, and broken
    PEM files: empty, garbage, and a certificate whose body is corrupt."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {}
    for name in ("a", "b"):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        out[name] = (folder / f"{name}.pem", folder / f"{name}.key")
    (folder / "empty.pem").write_bytes(b"")
    (folder / "garbage.pem").write_bytes(b"garbage\n")
    lines = (folder / "a.pem").read_bytes().splitlines(keepends=True)
    (folder / "corrupt.pem").write_bytes(lines[0] + b"AAAA" + lines[1][4:] + b"".join(lines[2:]))
    out["folder"] = folder
    return out


@pytest.mark.parametrize("cert, key, client_ca, expected", [
    ("garbage.pem", "a.key", None, "TLS certificate {cert} holds no PEM certificate"),
    ("empty.pem", "a.key", None, "TLS certificate {cert} is empty"),
    ("corrupt.pem", "a.key", None, "TLS certificate {cert} is not a valid PEM certificate"),
    ("a.pem", "b.key", None, "TLS key {key} is not the key of TLS certificate {cert}"),
    ("a.pem", "a.pem", None, "TLS key {key} holds no PEM private key"),
    ("a.pem", "a.key", "garbage.pem", "TLS client CA {client_ca} holds no PEM certificate"),
    ("a.pem", "a.key", "empty.pem", "TLS client CA {client_ca} is empty"),
])
def test_bad_tls_material_stops_start_up_with_a_message_naming_the_file(certificates, tmp_path, cert, key,
                                                                         client_ca, expected):
    folder = certificates["folder"]
    args = ["--port", "0", "--tls-cert", str(folder / cert), "--tls-key", str(folder / key)]
    if client_ca:
        args += ["--tls-client-ca", str(folder / client_ca)]
    last = serve_fails(tmp_path, *args)
    expected = expected.format(cert=folder / cert, key=folder / key, client_ca=folder / str(client_ca))
    assert last.startswith("serving: " + expected), last


def test_a_port_in_use_stops_start_up_with_a_message_naming_it(tmp_path):
    with socket.socket() as taken:  # no SO_REUSEPORT: gRPC cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        last = serve_fails(tmp_path, "--port", str(port))
    assert last == f"serving: cannot listen on 127.0.0.1:{port}: port in use or address not available", last


def test_a_metrics_port_in_use_stops_start_up_with_a_message_naming_it(tmp_path):
    grpc_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics_port = taken.getsockname()[1]
        last = serve_fails(tmp_path, "--port", str(grpc_port), "--metrics-port", str(metrics_port))
    assert last.startswith(f"serving: cannot serve metrics on 127.0.0.1:{metrics_port}: port in use"), last


def test_a_cli_command_whose_reader_goes_away_stops_quietly(apps_server):
    """`serving apps | true`: the reader has gone when the command writes; no BrokenPipeError traceback, and the
    status of a process killed by SIGPIPE (141), as Unix tools end."""
    command = f"{sys.executable} -m serving.cli apps --target {apps_server.target} | true; echo ${{PIPESTATUS[0]}}"
    run = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "141", run.stdout + run.stderr
    assert run.stderr == "", run.stderr


def test_cli_version_is_the_installed_one():
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    run = subprocess.run([sys.executable, "-m", "serving.cli", "--version"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == f"serving {config['metadata']['version']}", run
