"""Shared fixtures: real servers in subprocesses on OS-assigned loopback ports."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from evals.utils.image import cap_decoder_pixels

# As `serving` does before anything imports OpenCV: tests that decode hostile images in this process (the decoder
# fuzz tests) get the same bound on what a decode may allocate.
cap_decoder_pixels()

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
#: The front ends a server can have (serving.frontend): tests of what the wire carries run against both.
FRONTENDS = ("native", "python")


class RunningServer:
    """A `serving serve` process; its output is collected in `lines` as it comes.

    `args` are added to `serving serve` on an OS-assigned loopback port; `command` (with `cwd`) runs another
    command line instead, which must print the same "serving on HOST:PORT" line."""

    def __init__(self, args, env=None, timeout=60, *, command=None, cwd=REPO):
        # A store of its own unless the test names one: no test writes into the checkout's ./var.
        self._data_dir = None
        if command is None and "--data-dir" not in args:
            self._data_dir = tempfile.mkdtemp(prefix="serving-test-store-")
            args = [*args, "--data-dir", self._data_dir]
        cmd = command or [sys.executable, "-m", "serving.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env)
        self.lines = []
        self.port = None
        self.metrics_port = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + self.output)
        self.target = f"127.0.0.1:{self.port}"

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            metrics = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", line)
            if metrics:
                self.metrics_port = int(metrics.group(1))
            started = re.match(r"serving on [\d.]+:(\d+)", line)
            if started:
                self.port = int(started.group(1))
                self._ready.set()
        self._ready.set()

    @property
    def output(self):
        return "".join(self.lines)

    def channel(self):
        return grpc.insecure_channel(self.target)

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
        return self.proc.returncode


@pytest.fixture(scope="module", params=FRONTENDS)
def frontend(request):
    """Each front end in turn: a module's servers built with `--frontend <this>` run its tests once for each."""
    return request.param


def wait_until(predicate, timeout=10.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="module")
def apps_server():
    """A server of tests/apps (probe, legacy_style) with metrics."""
    server = RunningServer(["--evals", str(TESTS / "apps"), "--metrics-port", "0"])
    yield server
    server.stop()


@pytest.fixture
def fresh_apps_server():
    """A server of tests/apps of a test's own, for tests that hang or stop it."""
    server = RunningServer(["--evals", str(TESTS / "apps")])
    yield server
    server.stop()
