"""`serving serve --workers N`: N supervised processes on one port."""
import os
import signal
import time

from conftest import TESTS, RunningServer, wait_until
from serving.client import Client


def pids_answering(target, calls=24):
    host, port = target.split(":")
    pids = set()
    for _ in range(calls):
        # A new channel per call: connections, not calls, are spread across the workers.
        with Client(host, int(port), "probe", timeout=10) as client:
            result = client.infer({"i": 1})
        assert isinstance(result, list) and "error" not in result[0], result
        pids.add(result[0]["pid"])
    return pids


def test_workers_share_one_port_restart_after_a_crash_and_stop_cleanly():
    server = RunningServer(["--evals", str(TESTS / "apps"), "--workers", "2"])
    try:
        assert wait_until(lambda: server.output.count("serving on") >= 2, 30), server.output
        pids = pids_answering(server.target)
        assert len(pids) == 2, f"both workers should answer: {pids}"
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: "restarting in" in server.output, 10), server.output
        assert wait_until(lambda: server.output.count("serving on") >= 3, 30), server.output
        time.sleep(0.5)
        after = pids_answering(server.target)
        assert victim not in after and len(after) == 2
    finally:
        assert server.stop() == 0


def test_a_worker_that_cannot_start_stops_everything():
    server_args = ["--evals", str(TESTS / "apps_mixed"), "--strict", "--workers", "2"]
    try:
        RunningServer(server_args, timeout=30)
    except RuntimeError as exc:
        assert "failed to start; stopping" in str(exc)
    else:
        raise AssertionError("a --strict start-up failure must stop the supervisor")
