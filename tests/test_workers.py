"""`serving serve --workers N`: N supervised processes on one port."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from conftest import REPO, TESTS, RunningServer, wait_until
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


def free_port():
    """A port nothing listens on now (the OS's pick, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def infer_pid(server, app, params=None):
    host, port = server.target.split(":")
    with Client(host, int(port), app, timeout=30) as client:
        [result] = client.infer({}, params)
    assert "pid" in result, result
    return result["pid"]


def test_a_worker_over_max_rss_with_a_fixed_metrics_port_is_replaced_and_its_replacement_serves_metrics():
    # The Docker images set a fixed metrics port: the replacement needs the very port the old worker holds.
    metrics_port = free_port()
    server = RunningServer(["--evals", str(TESTS / "apps_faults"), "--metrics-port", str(metrics_port),
                            "--max-rss-mb", "200"])
    try:
        old = infer_pid(server, "steady")
        assert 'serving_requests_total{app="steady",code="0"} 1.0' in scrape(metrics_port)
        infer_pid(server, "crashy", {"leak_mb": 300})  # a worker of ~60 MiB now holds ~360
        assert wait_until(lambda: "replaced pid" in server.output, 60), server.output
        new = infer_pid(server, "steady")
        assert new != old and not psutil.pid_exists(old)
        # The port now exports the replacement: one steady call, and no crashy call (the old worker's).
        text = scrape(metrics_port)
        assert 'serving_requests_total{app="steady",code="0"} 1.0' in text, text
        assert 'serving_requests_total{app="crashy"' not in text, text
        assert "restarting in" not in server.output and "Address already in use" not in server.output
    finally:
        assert server.stop(30) == 0, server.output


def start_until(args, line, timeout=60):
    """`serving serve ARGS` on a free loopback port, once its output shows `line`: (process, output lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                             *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    if not wait_until(lambda: any(line in seen for seen in lines) or proc.poll() is not None, timeout):
        proc.kill()
    assert any(line in seen for seen in lines), "".join(lines)
    return proc, lines


def stop_within(proc, seconds):
    """SIGTERM `proc`: (exit status, seconds it took); killed and None when it took longer than `seconds`."""
    started = time.monotonic()
    proc.terminate()
    try:
        return proc.wait(seconds), time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, time.monotonic() - started


def test_sigterm_to_the_supervisor_while_its_worker_runs_create_net_exits_0_at_once(tmp_path):
    proc, lines = start_until(["--evals", str(TESTS / "apps_slow_start"), "--data-dir", str(tmp_path)],
                              "create_net started")
    code, took = stop_within(proc, 10)  # create_net sleeps 60 s; the supervisor's own limit is grace + 30 s
    time.sleep(0.2)
    output = "".join(lines)
    assert code == 0 and took < 10, (code, took, output)
    assert "serving on" not in output and "did not stop" not in output


def test_sigterm_to_the_supervisor_right_after_it_started_exits_0(tmp_path):
    # The worker is still importing (no SIGTERM handler yet) or already loading apps: either way a clean stop.
    proc, lines = start_until(["--evals", str(TESTS / "apps"), "--data-dir", str(tmp_path)], "worker 0: pid")
    code, took = stop_within(proc, 20)
    assert code == 0, "".join(lines)


@pytest.mark.parametrize("first, second", [([], []), (["--no-supervise"], ["--no-supervise"]), ([], ["--no-supervise"])],
                         ids=["supervisor-then-supervisor", "single-then-single", "supervisor-then-single"])
def test_a_second_server_on_a_served_port_is_refused(tmp_path, first, second):
    """gRPC binds with SO_REUSEPORT, which lets the workers of one supervisor share a port; a second server on
    that port must not join them (the kernel would split the clients' connections between the two)."""
    server = RunningServer([*first, "--evals", str(TESTS / "apps")])
    try:
        again = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1", "--port",
                                str(server.port), *second, "--evals", str(TESTS / "apps"),
                                "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert again.returncode == 1, again.stdout + again.stderr
        assert f"serving: cannot listen on 127.0.0.1:{server.port}: port in use" in again.stderr
        assert "serving on" not in again.stdout + again.stderr and "Traceback" not in again.stderr
        with Client("127.0.0.1", server.port, "probe", timeout=10) as client:
            assert "error" not in client.infer({"i": 1})[0]
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])  # TEST-NET-1: assigned to no machine
def test_an_address_the_machine_does_not_have_stops_start_up_in_one_line(tmp_path, host):
    run = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--host", host, "--port", "0",
                          "--evals", str(TESTS / "apps"), "--data-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 1
    assert run.stderr.startswith(f"serving: cannot listen on {host}:0: port in use or address not available (")
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
