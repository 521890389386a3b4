"""`serving serve --workers N`: N serving processes on one port, supervised.

Each worker is a full `serving serve` process (its own copy of every app: memory grows with N) bound to the same
port with SO_REUSEPORT, which gRPC sets on Linux; the kernel spreads connections across them. It pays where one
process's Python cannot keep the cores busy: many clients (connections), CPU-heavy Python pre/post-processing. A
single connection stays on one worker.

The supervisor restarts a worker that exits unexpectedly (exit status 1 on a worker's first run is a start-up
failure, such as a bad app under --strict: then everything stops with status 1), with exponential backoff (1 s doubling to 30 s, reset
after a minute of uptime), and forwards SIGTERM/SIGINT so every worker shuts down gracefully; it exits 0 when all
workers exited cleanly. Worker i exports metrics on `--metrics-port + i`.
"""
import logging
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("serving.workers")

_BACKOFF_START_S, _BACKOFF_MAX_S, _HEALTHY_AFTER_S = 1.0, 30.0, 60.0


def reserve_port(host):
    """A free port for the workers to share, when the command line asked for port 0."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _Worker:
    def __init__(self, index, argv):
        self.index = index
        self.argv = argv
        self.proc = None
        self.started_at = 0.0
        self.backoff = _BACKOFF_START_S
        self.restart_at = None
        self.runs = 0

    def start(self):
        self.runs += 1
        self.proc = subprocess.Popen(self.argv)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("worker %d: pid %d", self.index, self.proc.pid)


def supervise(worker_args, workers, port, metrics_port):
    """Run `workers` processes of `python -m serving.cli serve <worker_args> --port PORT` until signalled.

    `worker_args` are the serve options without --port, --metrics-port and --workers."""
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pool = []
    for index in range(workers):
        argv = [sys.executable, "-m", "serving.cli", "serve", *worker_args, "--port", str(port)]
        if metrics_port is not None:
            argv += ["--metrics-port", str(metrics_port + index)]
        worker = _Worker(index, argv)
        worker.start()
        pool.append(worker)
    print(f"supervising {workers} workers on port {port}", flush=True)
    while not stopping:
        time.sleep(0.2)
        now = time.monotonic()
        for worker in pool:
            code = worker.proc.poll()
            if code is None:
                if now - worker.started_at > _HEALTHY_AFTER_S:
                    worker.backoff = _BACKOFF_START_S
                continue
            if code == 1 and worker.runs == 1:
                # Exit status 1 on a first run is a start-up failure (bad config, --strict): no restart fixes it.
                log.error("worker %d failed to start; stopping", worker.index)
                stopping.append(None)
                break
            if worker.restart_at is None:
                worker.restart_at = now + worker.backoff
                log.warning("worker %d exited with %s; restarting in %.0fs", worker.index, code, worker.backoff)
                worker.backoff = min(worker.backoff * 2, _BACKOFF_MAX_S)
            elif now >= worker.restart_at:
                worker.start()
    for worker in pool:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
    codes = [worker.proc.wait() for worker in pool]
    return 0 if stopping[0] is not None and all(code == 0 for code in codes) else 1
