"""The gRPC server: the native inference service, grpc.health.v1 (overall and per app), server reflection and
Prometheus metrics, with graceful shutdown on SIGTERM/SIGINT."""
import asyncio
import contextlib
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from evals.utils.image import set_uri_policy
from serving.apps import READY, AppRegistry
from serving.auth import TokenAuthInterceptor
from serving.codec import DEFAULT_MAX_MESSAGE_BYTES
from serving.limits import DEFAULT_MAX_CONCURRENT_RPCS
from serving.request_decoding import DecodingRegistrar
from serving.dataplane import DataPlane
from serving.errors import BAD_REQUEST, ServingError
from serving.proto import inference_pb2, inference_pb2_grpc, store_pb2, store_pb2_grpc
from serving.frontend import MAX_METADATA_BYTES, NativeFrontend, resolve_mode
from serving.servicers.kserve import KSERVE_SERVICE, add_kserve_servicer_to_server
from serving.servicers.native import NativeServicer
from serving.inspection import Inspection
from serving.jobs.export import exported_apps_dir
from serving.jobs.manager import DEFAULT_MAX_JOBS, DEFAULT_TRAINER_APP, JobManager
from serving.servicers.mvp import add_mvp_servicers_to_server
from serving.servicers.store import StoreServicer
from serving.store import Store
from serving.workers import RELEASE_METRICS_SIGNAL, notify_ready

log = logging.getLogger("serving.server")

NATIVE_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
STORE_SERVICE = store_pb2.DESCRIPTOR.services_by_name["Store"].full_name
_HEALTH_INTERVAL_S = 0.25


_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ServingServer:
    """Serves the apps of an evals dir on one port.

    Health: service "" (overall) is SERVING once the apps are loaded and until shutdown begins; each app name is
    a service of its own, SERVING while the app is READY and NOT_SERVING while it is FAILED, STUCK or stopped.

    Security (see serving.auth, serving.tls): `tokens` (a serving.auth.TokenTable) requires a bearer token on every
    call but health; `tls` (a serving.tls.ServerTls) serves TLS instead of plaintext; `data_roots` are the only
    folders a request's `uri` may name (none: every uri is refused).

    Front end (serving.frontend): `frontend` "native" serves the port from C++ threads in front of the grpc.aio
    server, which then listens on a private Unix socket; "python" serves it from grpc.aio; "auto" is native when
    the extension is built.
    """

    def __init__(self, evals_dir, *, host="0.0.0.0", port=9000, app_name=None,
                 max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, metrics_port=None, strict=False, tokens=None,
                 tls=None, data_roots=(), data_dir="var", max_jobs=DEFAULT_MAX_JOBS,
                 trainer_app=DEFAULT_TRAINER_APP, max_concurrent_rpcs=DEFAULT_MAX_CONCURRENT_RPCS, quarantined=None,
                 share_port=False, frontend="auto"):
        # Apps exported from training snapshots (serving.jobs.export) are served beside the evals dir's.
        self.registry = AppRegistry(evals_dir, classic_name=app_name, extra_dirs=(exported_apps_dir(data_dir),))
        self.dataplane = DataPlane(self.registry)
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.quarantined = dict(quarantined or {})  # {app: reason}: apps not to load (serving.workers)
        # Only the workers of one supervisor share a port (SO_REUSEPORT, gRPC's default on Linux); a server on
        # its own refuses a port another process listens on instead of splitting that port's connections with it.
        self.share_port = share_port
        self.metrics_port = metrics_port
        self.strict = strict
        self.tokens = tokens
        self.tls = tls
        self.frontend_mode = resolve_mode(frontend)  # ServingError for "native" when it is not built
        self._frontend = None  # the NativeFrontend, in native mode
        self.data_roots = tuple(data_roots or ())
        self.data_dir = data_dir
        self._store = None
        # MVP training/test tasks (serving.jobs): records in DATA/jobs.sqlite3, one worker process per task.
        self.jobs = JobManager(data_dir, evals_dir, lambda: self.store, self.registry, app_name=app_name,
                               max_jobs=max_jobs, trainer_app=trainer_app)
        self.health = health.aio.HealthServicer()
        self._server = None
        self._grpc_start = None  # grpc's start of self._server (see stop)
        self._metrics_httpd = None
        self._health_task = None
        self._health_apps = set()  # app names health was last set for, to see unloaded ones

    @property
    def store(self):
        """The embedded store under `data_dir`, opened on first use (SQLite + blob files)."""
        if self._store is None:
            self._store = Store(self.data_dir)
        return self._store

    async def start(self):
        """Bind the metrics port, then the gRPC port (0: an OS-assigned one, then in self.port), start serving,
        then load the apps. A port that cannot be bound raises ServingError naming it."""
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", int(self.share_port)),
        ]
        try:
            # Before any app code runs: eval code reading a request's uri goes through this policy.
            set_uri_policy(self.data_roots)
        except ValueError as exc:
            raise ServingError(BAD_REQUEST, str(exc)) from None
        # Metrics first: a process that cannot export its metrics must fail before it accepts a single call (a
        # supervised replacement worker would otherwise serve unseen, or die after clients reached it).
        if self.metrics_port is not None:
            self._serve_metrics()
        interceptors = [TokenAuthInterceptor(self.tokens)] if self.tokens is not None else []
        native = self.frontend_mode == "native"
        if native:
            # The front end has applied the metadata limit (serving.frontend.MAX_METADATA_BYTES) to what it relays:
            # grpc.aio's own soft limit would then refuse some of the calls it let through, at random.
            options += [("grpc.max_metadata_size", 2 * MAX_METADATA_BYTES),
                        ("grpc.absolute_max_metadata_size", 2 * MAX_METADATA_BYTES)]
        # Behind the native front end, which counts every call against the limit, the grpc.aio server sees only the
        # relayed ones: a second count there would refuse nothing the first one let through.
        self._server = grpc.aio.server(options=options, interceptors=interceptors,
                                       maximum_concurrent_rpcs=None if native else self.max_concurrent_rpcs)
        # Every service registers through it: a request that does not decode gets 400, not gRPC's UNKNOWN.
        registrar = DecodingRegistrar(self._server)
        inference_pb2_grpc.add_InferenceServicer_to_server(NativeServicer(self.dataplane), registrar)
        # KServe v2 ServerReady follows overall health: true once the apps are loaded, until shutdown begins.
        add_kserve_servicer_to_server(self.dataplane, registrar, started=lambda: self._health_task is not None)
        # The servicer keeps its replies under the send limit set above (413 rather than gRPC's bare refusal).
        store_pb2_grpc.add_StoreServicer_to_server(
            StoreServicer(lambda: self.store, max_message_bytes=self.max_message_bytes), registrar)
        inspection = Inspection(self.dataplane, lambda: self.store, self.jobs)
        mvp_services = add_mvp_servicers_to_server(self.jobs, inspection, registrar)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        # What reflection.enable_server_reflection does for an aio server, through the registrar.
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
            (NATIVE_SERVICE, STORE_SERVICE, *mvp_services, health.SERVICE_NAME, reflection.SERVICE_NAME)),
            registrar)
        address = f"{self.host}:{self.port}"
        if native:
            try:
                self._frontend = NativeFrontend(address, registrar.generic_handlers, interceptors,
                                                max_message_bytes=self.max_message_bytes,
                                                max_concurrent_rpcs=self.max_concurrent_rpcs,
                                                share_port=self.share_port, tls=self.tls)
                try:
                    self._server.add_insecure_port(self._frontend.backend_address)
                except RuntimeError as exc:
                    raise ServingError(BAD_REQUEST, f"cannot listen on {self._frontend.backend_address}: "
                                                    f"{exc}") from None
                # Calls relayed before the grpc.aio server starts wait for it (within their deadlines).
                port = self._frontend.start()
            except ServingError:
                if self._frontend is not None:
                    await self._frontend.stop(0)  # never started: removes its socket folder
                await self._close_metrics()
                raise
        else:
            try:
                if self.tls is not None:
                    port = self._server.add_secure_port(address, self.tls.credentials())
                else:
                    port = self._server.add_insecure_port(address)
            except RuntimeError:  # grpc's "Failed to bind to address", which names neither cause nor remedy
                port = 0
            if not port:
                # The TLS material was checked before (serving.tls.server_tls): what is left is the address.
                await self._close_metrics()
                raise ServingError(BAD_REQUEST, f"cannot listen on {address}: port in use or address not available")
        self.port = port
        await self.health.set("", _NOT_SERVING)
        await self.jobs.start()  # before the first call: recovers what a previous server left RUNNING
        # Shielded: a stop during start-up cancels start(), and a server whose own start was cut short can be
        # neither used nor stopped (grpc raises InvalidStateError); stop() lets it finish instead.
        self._grpc_start = asyncio.ensure_future(self._server.start())
        await asyncio.shield(self._grpc_start)
        log.info("listening on %s:%d (%s front end, %s, %s, uri %s)", self.host, self.port, self.frontend_mode,
                 "TLS" if self.tls is not None else "plaintext",
                 f"{len(self.tokens)} tokens" if self.tokens is not None else "no authentication",
                 "under " + ", ".join(self.data_roots) if self.data_roots else "refused")
        try:
            await self.registry.load_all(strict=self.strict, skip=self.quarantined)
        except Exception:
            await self.stop(grace=0)
            raise
        await self._update_health()
        await self.health.set("", _SERVING)
        await self.health.set(NATIVE_SERVICE, _SERVING)
        await self.health.set(KSERVE_SERVICE, _SERVING)
        self._health_task = asyncio.get_running_loop().create_task(self._watch_health())
        for app in self.registry.apps.values():
            log.info("app %s: %s%s", app.name, app.effective_state, f" ({app.reason})" if app.reason else "")
        return self.port

    def _serve_metrics(self):
        try:
            self._metrics_httpd, _thread = start_http_server(self.metrics_port, addr=self.host)
        except OSError as exc:
            raise ServingError(BAD_REQUEST, f"cannot serve metrics on {self.host}:{self.metrics_port}: port in use "
                                            f"or address not available ({exc.strerror or exc})") from None
        self.metrics_port = self._metrics_httpd.server_address[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.metrics_port)

    async def _close_metrics(self):
        httpd, self._metrics_httpd = self._metrics_httpd, None
        if httpd is not None:
            # shutdown() waits for the serving thread's next poll (up to half a second): not on the event loop.
            await asyncio.to_thread(lambda: (httpd.shutdown(), httpd.server_close()))

    async def release_metrics(self):
        """Stop exporting metrics and free the metrics port, serving calls on: the supervisor's handoff of the
        port to the worker replacing this one (serving.workers, --max-rss-mb)."""
        if self._metrics_httpd is not None:
            await self._close_metrics()
            log.info("metrics port %d released for this worker's replacement", self.metrics_port)

    async def _update_health(self):
        # A snapshot: RepositoryModelLoad/Unload may add or remove apps while health.set awaits.
        for app in list(self.registry.apps.values()):
            await self.health.set(app.name, _SERVING if app.effective_state == READY else _NOT_SERVING)
        # An app unloaded at run time (KServe RepositoryModelUnload) left the registry: it no longer serves.
        for name in self._health_apps - self.registry.apps.keys():
            await self.health.set(name, _NOT_SERVING)
        self._health_apps = set(self.registry.apps)

    async def _watch_health(self):
        # A net_inference call that never returns cannot be interrupted; health is how it is seen.
        while True:
            await asyncio.sleep(_HEALTH_INTERVAL_S)
            await self._update_health()

    async def stop(self, grace=5.0):
        """Stop accepting calls, let calls in flight finish within `grace` seconds, then stop the apps."""
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        await self.health.enter_graceful_shutdown()
        # Before the calls in flight finish: no queued task may start now, only to be interrupted.
        await self.jobs.stop_scheduling()
        if self._grpc_start is not None:
            await self._grpc_start  # see start
        if self._frontend is not None:
            # The port first: its calls in flight, relayed ones included, end within the grace while the grpc.aio
            # server behind it still answers them.
            await self._frontend.stop(grace)
        if self._server is not None:
            await self._server.stop(grace)
        # Running tasks checkpoint and end INTERRUPTED (resumable); workers that do not are killed.
        await self.jobs.close()
        await self.registry.close()
        if self._store is not None:
            self._store.close()
            self._store = None
        await self._close_metrics()

    async def wait(self):
        await self._server.wait_for_termination()


async def serve_until_signalled(server, grace=5.0):
    """Start `server` and serve until SIGTERM or SIGINT, then shut down gracefully.

    A signal during start-up (an app's create_net can take minutes) ends it at once: start-up is abandoned where
    it is (a create_net still running is left to its daemon thread, which dies with the process), the server is
    stopped, nothing says "serving on" and the supervisor is never told the worker is ready; the exit is normal
    (status 0), as a stop asked for. RELEASE_METRICS_SIGNAL frees the metrics port for a replacement worker."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    releasing = set()  # the loop keeps only weak references to tasks
    loop.add_signal_handler(RELEASE_METRICS_SIGNAL, lambda: _keep(releasing, server.release_metrics()))
    starting = asyncio.ensure_future(server.start())
    stopped = asyncio.ensure_future(stopping.wait())
    await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
    if not stopping.is_set():
        stopped.cancel()
        starting.result()  # a start-up failure raises here
        print(f"serving on {server.host}:{server.port}", flush=True)
        notify_ready()
        await stopping.wait()
    elif not starting.done() or starting.cancelled() or starting.exception() is None:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("stop asked for during start-up")
    else:
        starting.result()  # start-up failed as the stop came: that failure is the outcome
    log.info("shutting down (grace %.1fs)", grace)
    await server.stop(grace)


def _keep(tasks, coroutine):
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
