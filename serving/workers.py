"""Supervised serving: `serving serve` runs its serving processes ("workers") under a supervisor.

`serving serve` is a supervisor by default (`--workers N`, default 1; `--no-supervise` serves in the process
itself, for running under a supervisor of your own or in a debugger). Each worker is a full `serving serve
--no-supervise` process with its own copy of every app, bound to the same port with SO_REUSEPORT (which gRPC
sets on Linux); the kernel spreads connections across them. Why supervise even one worker: an app's native code
can crash the process (segfault, abort) or leak, and nothing in Python can catch that. The supervisor is small
(it imports no app, no gRPC) and outlives it.

What the supervisor does:

- Restarts a worker that dies (a signal, or an exit it did not ask for) after a backoff: `--restart-backoff`
  (default 1 s) doubling to 30 s, reset once a worker has served a minute. Calls in flight on the dead worker
  end with UNAVAILABLE (the connection drops: retryable); with N > 1 the other workers keep serving, with one
  the port refuses connections (UNAVAILABLE too, and health checks fail) until the new worker is up. Exit
  status 1 on a worker's first run is a start-up failure (bad token file, --strict and a bad app): no restart
  fixes that, everything stops with status 1.
- Blames crashes on apps. Each worker writes Python's faulthandler report to a crash file; when a worker dies
  of a fatal signal, the supervisor logs the report and blames the app whose code is innermost on the crashing
  thread (or, when that thread ran no app code, the only app found on any thread). An app blamed for
  `QUARANTINE_CRASHES` crashes within `QUARANTINE_WINDOW_S` is quarantined: workers started afterwards do not
  load it (FAILED, health NOT_SERVING, calls 503 with the reason), so one app fed a poison input cannot keep
  every other app down. The quarantine lasts until the supervisor restarts.
- Replaces a worker whose memory grows past `--max-rss-mb` (sampled every second): a new worker is started
  beside it, and once it is serving the old one is stopped gracefully (SIGTERM: it stops accepting, finishes
  its calls in flight, checkpoints its training tasks). Nothing is refused meanwhile. With metrics, the metrics
  port is handed over first (below).
- On SIGTERM or SIGINT: forwards SIGTERM to every worker (graceful, see serving.server), waits for them (killing
  those still running `stop_timeout_s` later), and exits 0 when all exited cleanly; a worker still starting
  stops at once and counts as clean (one killed by the SIGTERM before it could install its handler, too).
- If the supervisor itself is killed, its workers get SIGTERM from the kernel (PR_SET_PDEATHSIG) and shut down
  gracefully instead of serving on unsupervised.

Worker i exports metrics on `--metrics-port + i`, and a worker binds its metrics port before its gRPC port, so
one that cannot export metrics fails before it accepts a call. One port is one process at any time: when worker
i is replaced (--max-rss-mb), the supervisor first asks the old process to release the port
(`RELEASE_METRICS_SIGNAL`; it serves calls on, unscraped), waits until it no longer listens there, and only then
starts the replacement, which binds it. Sharing the port (SO_REUSEPORT) was rejected: the kernel would hand each
scrape to either process, and Prometheus would see counters jump between two unrelated processes. With the
handoff, a scrape sees one process and a replacement looks like a restart (counters reset, which rate()
handles); the old process's last seconds of calls are not exported. An old process that does not release the
port within `METRICS_HANDOFF_S` is stopped gracefully first (killed `stop_timeout_s` later if it still runs),
and the replacement starts once it has exited: a gap in serving with one worker, never a replacement that
cannot bind.

The worker side of the protocol (environment variables and signals of the supervisor) is
`init_supervised_worker`, `notify_ready` and `RELEASE_METRICS_SIGNAL` (serving.server handles it).
"""
import contextlib
import ctypes
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("serving.workers")

DEFAULT_RESTART_BACKOFF_S = 1.0
_BACKOFF_MAX_S, _HEALTHY_AFTER_S = 30.0, 60.0
QUARANTINE_CRASHES, QUARANTINE_WINDOW_S = 3, 600.0
_POLL_S = 0.2
_RSS_EVERY_S = 1.0
METRICS_HANDOFF_S = 10.0  # how long an old worker may take to release its metrics port to its replacement

# The supervisor -> worker protocol, in the worker's environment.
SUPERVISOR_PID_ENV = "SERVING_SUPERVISOR_PID"  # the worker dies with the supervisor
READY_FD_ENV = "SERVING_READY_FD"              # the worker writes one byte there once it serves
CRASH_FILE_ENV = "SERVING_CRASH_FILE"          # faulthandler's report of a fatal signal
QUARANTINE_ENV = "SERVING_QUARANTINE"          # JSON {app: reason}: apps the worker must not load
RELEASE_METRICS_SIGNAL = signal.SIGUSR1        # to a worker: free your metrics port, keep serving

_PR_SET_PDEATHSIG = 1
# The signals faulthandler reports (a negative exit status of the worker).
_FATAL_SIGNALS = {int(s) for s in (signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGFPE, signal.SIGILL)}
_FRAME = re.compile(r'^\s+File "(?P<path>[^"]+)", line \d+')


# ---- the worker side --------------------------------------------------------------------------------------------

_crash_file = None  # kept open for faulthandler for the life of the process


def init_supervised_worker():
    """In a worker the supervisor started: die with the supervisor, report fatal signals to the crash file.
    Returns {app: reason} of the quarantined apps. A no-op (returning {}) in a process nobody supervises."""
    global _crash_file
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if not supervisor:
        return {}
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(supervisor):  # the supervisor died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)
    crash_path = os.environ.get(CRASH_FILE_ENV)
    if crash_path:
        import faulthandler

        _crash_file = open(crash_path, "w")  # noqa: SIM115: faulthandler writes to it until the process ends
        faulthandler.enable(file=_crash_file, all_threads=True)
    try:
        quarantined = json.loads(os.environ.get(QUARANTINE_ENV) or "{}")
    except ValueError:
        quarantined = {}
    return quarantined if isinstance(quarantined, dict) else {}


def notify_ready():
    """Tell the supervisor (if any) that this worker serves."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None:
        return
    with contextlib.suppress(OSError, ValueError):
        os.write(int(fd), b"R")
        os.close(int(fd))


# ---- crash reports ----------------------------------------------------------------------------------------------

def blame(report, app_dirs):
    """The app to blame for a faulthandler `report`, given {app name: app folder}; None when it cannot tell.

    The innermost frame of the crashing thread ("Current thread") that lies in an app folder names it; when
    that thread ran no app code (a crash in a native library's own thread), the app is the only one found on
    any thread's stack."""
    folders = [(str(Path(folder).resolve()) + os.sep, name) for name, folder in app_dirs.items()]

    def app_of(path):
        path = str(Path(path).resolve()) if os.path.isabs(path) else path
        return next((name for prefix, name in folders if path.startswith(prefix)), None)

    current, everywhere, in_current = [], set(), False
    for line in report.splitlines():
        if line.startswith(("Current thread", "Thread ")):
            in_current = line.startswith("Current thread")
            continue
        match = _FRAME.match(line)
        app = app_of(match.group("path")) if match else None
        if app is None:
            continue
        everywhere.add(app)
        if in_current:
            current.append(app)
    if current:
        return current[0]  # most recent call first
    return next(iter(everywhere)) if len(everywhere) == 1 else None


def app_folders(evals_dir, classic_name=None):
    """{app name: folder} of the evals dir the workers serve, for `blame` (empty when it cannot be read)."""
    from serving.apps import discover

    try:
        return {name: folder for name, folder, _ in discover(evals_dir, classic_name)}
    except Exception:  # the workers report a bad evals dir themselves
        return {}


def _describe(returncode):
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ---- the supervisor ---------------------------------------------------------------------------------------------

class PortUnavailable(Exception):
    """The port `serve` was asked for cannot be had; the message names it and why."""


def claim_port(host, port):
    """A bound (not listening) SO_REUSEPORT socket on `port` (0: a free one) for the workers to share. Kept open
    while the supervisor runs, so that no other program takes the port while a worker restarts; it never
    accepts connections.

    A port that another process listens on is refused (PortUnavailable, naming it), even when that process
    allows sharing it: the workers bind with SO_REUSEPORT, so a second `serving serve` on a port the first one
    serves would otherwise start without an error, and the kernel would split the clients' connections between
    two unrelated servers. The check binds the port once without SO_REUSEPORT (with SO_REUSEADDR, so that
    connections of an earlier server still in TIME_WAIT do not count as in use)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = None
    try:
        if port:
            with socket.socket(family) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:  # socket.gaierror (a host that does not resolve) included
        if sock is not None:
            sock.close()
        reason = exc.strerror or str(exc)
        raise PortUnavailable(f"cannot listen on {host}:{port}: port in use or address not available "
                              f"({reason})") from None
    return sock


def is_supervised_worker():
    """Whether this process is a worker a supervisor started (one of several sharing a port)."""
    return bool(os.environ.get(SUPERVISOR_PID_ENV))


def listens_on(pid, port):
    """Whether process `pid` has a listening TCP socket on `port` (False when it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        # net_connections since psutil 6; setup.cfg allows 5.9, where it is connections.
        connections = (getattr(process, "net_connections", None) or process.connections)(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


def rss_bytes(pid):
    """Resident memory of a process in bytes, or None when it is gone."""
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


class _Worker:
    """One worker slot: the process serving it now, and how often and when it was (re)started."""

    def __init__(self, index, argv, crash_dir, metrics_port=None):
        self.index = index
        self.argv = argv
        self.metrics_port = metrics_port  # fixed, or None (no metrics, or an OS-assigned port: nothing to hand over)
        self.crash_path = Path(crash_dir) / f"worker-{index}.crash"
        self.proc = None
        self.ready_fd = None
        self.ready = False
        self.started_at = 0.0
        self.backoff = None
        self.restart_at = None
        self.runs = 0
        self.retiring = None  # the process being replaced (memory) until it has exited
        self.retire_asked = False  # whether it was sent SIGTERM yet (once its replacement serves)
        self.handoff_until = None  # while the old process is releasing its metrics port: when to stop waiting

    def start(self, quarantined):
        """Start the slot's process. With a fixed metrics port the port must be free by now (see the module
        docstring): the process binds it before its gRPC port and exits 1 when it cannot."""
        self.runs += 1
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.crash_path.write_text("")
        env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid()), READY_FD_ENV: str(write_fd),
               CRASH_FILE_ENV: str(self.crash_path), QUARANTINE_ENV: json.dumps(quarantined)}
        try:
            self.proc = subprocess.Popen(self.argv, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        if self.ready_fd is not None:
            os.close(self.ready_fd)
        self.ready_fd, self.ready = read_fd, False
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("worker %d: pid %d", self.index, self.proc.pid)

    def poll_ready(self):
        """True once the current process has said it serves."""
        if not self.ready and self.ready_fd is not None:
            with contextlib.suppress(BlockingIOError):
                self.ready = bool(os.read(self.ready_fd, 1))
        return self.ready

    def crash_report(self):
        with contextlib.suppress(OSError):
            return self.crash_path.read_text(errors="replace").strip()
        return ""


class Supervisor:
    """Runs `workers` processes of `argv` (a `serving serve --no-supervise ...` command line without --port and
    --metrics-port) on `port`; see the module docstring."""

    def __init__(self, argv, workers, port, metrics_port=None, *, restart_backoff_s=DEFAULT_RESTART_BACKOFF_S,
                 max_rss_mb=None, stop_timeout_s=60.0, app_dirs=None):
        self.argv = list(argv)
        self.port = port
        self.metrics_port = metrics_port
        self.restart_backoff_s = float(restart_backoff_s)
        self.max_rss_bytes = int(max_rss_mb * 2**20) if max_rss_mb else None
        self.stop_timeout_s = stop_timeout_s
        self.app_dirs = app_dirs or {}
        self.quarantined = {}  # app -> reason
        self._crashes = {}     # app -> [monotonic times of crashes blamed on it]
        self._stopping = []
        self._crash_dir = tempfile.mkdtemp(prefix="serving-crash-")
        self.pool = []
        for index in range(workers):
            argv = [*self.argv, "--port", str(port)]
            # Port 0 gives every process a port of its own (not 0 + i, a privileged port): only a fixed port is
            # handed over on a replacement.
            fixed = metrics_port + index if metrics_port else None
            if metrics_port is not None:
                argv += ["--metrics-port", str(fixed or 0)]
            self.pool.append(_Worker(index, argv, self._crash_dir, fixed))

    def run(self):
        """Supervise until SIGTERM/SIGINT; the exit status."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for worker in self.pool:
            worker.backoff = self.restart_backoff_s
            worker.start(self.quarantined)
        print(f"supervising {len(self.pool)} worker{'s' if len(self.pool) > 1 else ''} on port {self.port}",
              flush=True)
        next_rss = time.monotonic() + _RSS_EVERY_S
        while not self._stopping:
            self._wait()
            now = time.monotonic()
            for worker in self.pool:
                self._check(worker, now)
                if self._stopping:
                    break
            if self.max_rss_bytes and now >= next_rss:
                next_rss = now + _RSS_EVERY_S
                for worker in self.pool:
                    self._check_memory(worker)
        return self._shutdown()

    def _on_signal(self, signum, _frame):
        self._stopping.append(signum)

    def _wait(self):
        fds = [w.ready_fd for w in self.pool if w.ready_fd is not None and not w.ready]
        with contextlib.suppress(InterruptedError):
            select.select(fds, [], [], _POLL_S)

    def _check(self, worker, now):
        worker.poll_ready()
        if worker.retiring is not None:
            self._check_retiring(worker, now)
        if worker.handoff_until is not None:
            return  # worker.proc is the old process, waited for by _check_retiring
        code = worker.proc.poll()
        if code is None:
            if now - worker.started_at > _HEALTHY_AFTER_S:
                worker.backoff = self.restart_backoff_s
            return
        if code == 1 and worker.runs == 1 and not worker.ready:
            # Exit status 1 on a first run that never served is a start-up failure (bad config, --strict): no
            # restart fixes it. One that served and then died is restarted like any other.
            log.error("worker %d failed to start; stopping", worker.index)
            self._stopping.append(None)
            return
        if worker.restart_at is None:
            self._after_death(worker, code)
            worker.restart_at = now + worker.backoff
            log.warning("worker %d (pid %d) %s; restarting in %.1fs", worker.index, worker.proc.pid,
                        _describe(code), worker.backoff)
            worker.backoff = min(worker.backoff * 2, _BACKOFF_MAX_S)
        elif now >= worker.restart_at:
            worker.start(self.quarantined)

    def _after_death(self, worker, code):
        """Log a fatal signal's report, blame an app, and quarantine it when it keeps crashing."""
        if code >= 0 or -code not in _FATAL_SIGNALS:
            return
        report = worker.crash_report()
        if report:
            log.error("worker %d crash report:\n%s", worker.index, report)
        app = blame(report, self.app_dirs)
        if app is None:
            return
        now = time.monotonic()
        times = [t for t in self._crashes.get(app, []) if now - t < QUARANTINE_WINDOW_S] + [now]
        self._crashes[app] = times
        log.error("worker %d: app %s crashed the process (%s; %d in %.0fs)", worker.index, app, _describe(code),
                  len(times), QUARANTINE_WINDOW_S)
        if len(times) >= QUARANTINE_CRASHES and app not in self.quarantined:
            self.quarantined[app] = (f"quarantined: crashed the serving process {len(times)} times in "
                                     f"{QUARANTINE_WINDOW_S:.0f}s (last: {_describe(code)}); fix it and restart "
                                     "the server")
            log.error("app %s quarantined: workers started from now on do not load it", app)

    def _check_memory(self, worker):
        if worker.retiring is not None or not worker.ready or worker.proc.poll() is not None:
            return
        rss = rss_bytes(worker.proc.pid)
        if rss is None or rss <= self.max_rss_bytes:
            return
        log.warning("worker %d (pid %d) uses %.0f MiB, over --max-rss-mb %.0f: starting its replacement",
                    worker.index, worker.proc.pid, rss / 2**20, self.max_rss_bytes / 2**20)
        worker.retiring, worker.retire_asked = worker.proc, False
        if worker.metrics_port is None:
            worker.start(self.quarantined)  # beside the old one, on the same port
            return
        # The replacement binds the metrics port before anything else: the old process releases it first.
        log.info("worker %d: asking pid %d to release metrics port %d", worker.index, worker.proc.pid,
                 worker.metrics_port)
        worker.proc.send_signal(RELEASE_METRICS_SIGNAL)
        worker.handoff_until = time.monotonic() + METRICS_HANDOFF_S

    def _check_retiring(self, worker, now):
        # The old process keeps serving until its replacement does (a replacement that dies is restarted as
        # any worker is), then stops gracefully.
        old = worker.retiring
        if worker.handoff_until is not None:
            self._check_handoff(worker, now)
            return
        if old.poll() is not None:
            log.info("worker %d: replaced pid %d (%s)", worker.index, old.pid, _describe(old.returncode))
            worker.retiring = None
        elif worker.ready and not worker.retire_asked:
            old.send_signal(signal.SIGTERM)  # graceful: finishes its calls in flight
            worker.retire_asked = True
            self._check_fresh_memory(worker)

    def _check_fresh_memory(self, worker):
        """A replacement that has just said it serves uses what any fresh worker does: when that is over
        --max-rss-mb already, replacing workers cannot bring them under it, and every replacement would start
        another at once (a restart loop that interrupts training tasks each time). Say so, once, and replace no
        worker for memory from then on."""
        rss = rss_bytes(worker.proc.pid)
        if self.max_rss_bytes and rss is not None and rss > self.max_rss_bytes:
            log.error("worker %d (pid %d) uses %.0f MiB as it starts, over --max-rss-mb %.0f: replacing workers "
                      "cannot bring them under it, so none is replaced for memory any more; raise --max-rss-mb "
                      "above what a fresh worker uses", worker.index, worker.proc.pid, rss / 2**20,
                      self.max_rss_bytes / 2**20)
            self.max_rss_bytes = None

    def _check_handoff(self, worker, now):
        """Start the replacement once the old process no longer listens on the metrics port."""
        old = worker.retiring
        if old.poll() is None and listens_on(old.pid, worker.metrics_port):
            if now < worker.handoff_until:
                return
            if not worker.retire_asked:
                log.warning("worker %d (pid %d) did not release metrics port %d within %.0fs: stopping it before "
                            "its replacement starts", worker.index, old.pid, worker.metrics_port, METRICS_HANDOFF_S)
                old.send_signal(signal.SIGTERM)
                worker.retire_asked = True
                worker.handoff_until = now + self.stop_timeout_s
            else:
                log.error("pid %d did not stop within %.0fs; killing it", old.pid, self.stop_timeout_s)
                old.kill()
                worker.handoff_until = now + 1.0  # the kernel frees the port once the process is reaped
            return
        worker.handoff_until = None
        worker.start(self.quarantined)

    def _shutdown(self):
        processes = [w.proc for w in self.pool]
        processes += [w.retiring for w in self.pool if w.retiring is not None and w.retiring is not w.proc]
        # A worker that has not said it serves yet is still starting; see _clean_stop.
        starting = {w.proc.pid for w in self.pool if not w.poll_ready() and w.proc.poll() is None}
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        codes = []
        for proc in processes:
            try:
                code = proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("pid %d did not stop within %.0fs; killing it", proc.pid, self.stop_timeout_s)
                proc.kill()
                code = proc.wait()
            codes.append(_clean_stop(code, proc.pid in starting))
        for worker in self.pool:
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
            worker.crash_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            os.rmdir(self._crash_dir)
        return 0 if self._stopping[0] is not None and all(code == 0 for code in codes) else 1


def _clean_stop(code, was_starting):
    """A worker's exit status as the supervisor's shutdown counts it: a worker still starting exits 0 on SIGTERM
    (serving.server), or dies of it when it came before Python installed the handler; both are a clean stop."""
    return 0 if was_starting and code == -signal.SIGTERM else code
