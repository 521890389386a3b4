"""The supervisor of `serving serve` (serving/workers.py) against real workers: a worker that served and then
exited with status 1 is restarted, and a worker over --max-rss-mb that does not give its fixed metrics port up
is stopped after METRICS_HANDOFF_S and replaced by one that exports metrics on that port.

The app, tests/apps_supervision/fragile, ends its process (os._exit), leaks, or ignores the supervisor's
"release your metrics port" signal, on request."""
import time

import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import TESTS, RunningServer, wait_until
from serving.client import Client, Failure
from serving.workers import METRICS_HANDOFF_S
from test_workers import free_port, scrape

APPS = TESTS / "apps_supervision"
TIMEOUT = 10


def infer(server, params=None):
    host, port = server.target.split(":")
    with Client(host, int(port), "fragile", timeout=TIMEOUT) as client:
        result = client.infer({"attribute": {}}, params)
    return result[0] if isinstance(result, list) else result


def pids_answering(server, calls=24):
    """The worker pids that answer `calls` calls, each on a connection of its own (the kernel spreads
    connections, not calls, across the workers)."""
    pids = set()
    for _ in range(calls):
        result = infer(server)
        assert not isinstance(result, Failure), result
        pids.add(result["pid"])
    return pids


def overall_health(server):
    with server.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_worker_that_served_and_then_exited_1_is_restarted_and_the_port_serves_on():
    # Exit status 1 on a worker's first run used to read as a start-up failure (bad config, --strict) even when
    # the worker had served for hours: an app's native code calling exit(1) then stopped the whole server.
    server = RunningServer(["--evals", str(APPS), "--workers", "2", "--restart-backoff", "0.2"])
    try:
        assert wait_until(lambda: server.output.count("serving on") >= 2, 30), server.output
        before = pids_answering(server)
        assert len(before) == 2, f"both workers should answer: {before}"

        # The call that ends its worker fails retryable (the connection drops); the worker is gone.
        dying = infer(server, {"exit_status": 1})
        assert isinstance(dying, Failure) and dying["code"] == 503, dying
        assert wait_until(lambda: any(gone(pid) for pid in before), TIMEOUT)
        [victim] = [pid for pid in before if gone(pid)]

        # A replacement comes up and both slots answer again; the supervisor did not stop.
        assert wait_until(lambda: server.output.count("serving on") >= 3 or server.proc.poll() is not None, 30)
        assert server.proc.poll() is None, "the supervisor stopped:\n" + server.output
        assert server.output.count("serving on") >= 3, server.output
        time.sleep(0.3)
        after = pids_answering(server)
        assert len(after) == 2 and victim not in after and len(after & before) == 1, (before, after)
        assert overall_health(server) == "SERVING"
        assert f"(pid {victim}) exited with status 1; restarting in" in server.output, server.output
        assert "failed to start" not in server.output
    finally:
        assert server.stop() == 0, server.output


def test_a_worker_that_keeps_its_metrics_port_past_the_handoff_bound_is_stopped_then_replaced():
    # --max-rss-mb with a fixed --metrics-port: the supervisor asks the old worker to release the port (SIGUSR1)
    # before its replacement binds it. This worker ignores the request (as native code that changed the signal's
    # disposition would): after METRICS_HANDOFF_S the supervisor stops it gracefully, and the replacement starts
    # once it has exited, never a replacement that cannot bind the port.
    metrics_port = free_port()
    server = RunningServer(["--evals", str(APPS), "--metrics-port", str(metrics_port), "--max-rss-mb", "200",
                            "--restart-backoff", "0.2"])
    try:
        old = infer(server, {"ignore_release": True})["pid"]
        assert infer(server, {"leak_mb": 300})["pid"] == old  # a worker of ~60 MiB now holds ~360
        assert wait_until(lambda: f"asking pid {old} to release metrics port {metrics_port}" in server.output,
                          TIMEOUT), server.output
        asked = time.monotonic()

        # Within the bound, the old worker serves calls on and still exports its own metrics (it kept the port).
        time.sleep(1.0)
        assert infer(server)["pid"] == old
        assert 'serving_requests_total{app="fragile",code="0"} 3.0' in scrape(metrics_port)

        # Then it is stopped, and its replacement serves calls and exports metrics on the same port.
        assert wait_until(lambda: server.output.count("serving on") >= 2, METRICS_HANDOFF_S + 20), server.output
        waited = time.monotonic() - asked
        new = infer(server)["pid"]
        assert new != old and gone(old)
        text = scrape(metrics_port)
        assert 'serving_requests_total{app="fragile",code="0"} 1.0' in text, text  # the replacement's one call
        assert waited >= METRICS_HANDOFF_S - 1.5, f"replaced after {waited:.1f}s, before the handoff bound"
        assert f"did not release metrics port {metrics_port}" in server.output, server.output
        assert f"replaced pid {old} (exited with status 0)" in server.output, server.output
        for bad in ("restarting in", "cannot serve metrics", "killing it"):
            assert bad not in server.output, server.output
    finally:
        assert server.stop() == 0, server.output
