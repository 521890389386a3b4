"""Eval apps: finding them, importing them inside the `evals` namespace, and running them.

Two layouts are served:

- apps: `DIR/<app>/eval.py` (+ optional `app.json`, sibling modules, model files); the folder name is the app
  name; the app's code imports its siblings as `evals.<app>.<module>` (a name that is not a Python identifier,
  such as `text-detection`, is importable as `evals.text_detection`);
- classic: `DIR/eval.py` with sibling code under `DIR/src/`, imported as `evals.eval` and `evals.src.*`, served
  under the name given on the command line (`--app-name`).

In both, DIR is appended to `evals.__path__`, so any shared package under it is importable as `evals.<name>`;
`evals.utils` always resolves to the runtime's own eval API.

An app that fails to import or whose create_net fails is FAILED with its reason: it is logged, its health is
NOT_SERVING and its requests get 503 with the reason; the other apps keep serving.

The `serving_app_ready{app}` gauge is written by the registry only, from the version it serves: during a reload
two App objects share one name, and the one being retired (or a new one that failed to load) must not mark the
version that serves not ready.
"""
import asyncio
import concurrent.futures
import gc
import importlib
import importlib.machinery
import importlib.util
import logging
import re
import sys
import traceback
from pathlib import Path

from serving import metrics
from serving.batcher import Batcher
from serving.config import ConfigError, load_app_config
from serving.errors import INTERNAL, NOT_FOUND, UNAVAILABLE, ServingError, is_ok
from serving.worker_thread import WorkerThread

log = logging.getLogger("serving.apps")

READY, LOADING, FAILED, STUCK, STOPPED = "READY", "LOADING", "FAILED", "STUCK", "STOPPED"
METHODS = ("inference",)

# Folder names under an evals dir that are not apps.
_RESERVED = {"utils", "src", "__pycache__"}
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# How often a draining app checks whether its last admitted request has been answered.
_DRAIN_POLL_S = 0.01
#: How long closing an app waits for its inference thread to end (seconds).
THREAD_END_WAIT_S = 2.0


def module_name_for(app):
    """The package name an app folder is imported under: `evals.<app>` with non-identifier characters as _."""
    return "evals." + re.sub(r"\W", "_", app)


def discover(evals_dir, classic_name=None):
    """[(app name, app folder, package name or None for the classic layout)] of an evals dir, sorted by name."""
    evals_dir = Path(evals_dir).resolve()
    if not evals_dir.is_dir():
        raise ConfigError(f"evals dir not found: {evals_dir}")
    if (evals_dir / "eval.py").is_file():
        if not classic_name:
            raise ConfigError(f"{evals_dir} holds eval.py (classic single-app layout): name the app with --app-name")
        return [(classic_name, evals_dir, None)]
    found, packages = [], {}
    for folder in sorted(evals_dir.iterdir()):
        if not folder.is_dir() or folder.name in _RESERVED or folder.name.startswith((".", "_")):
            continue
        if not (folder / "eval.py").is_file():
            continue
        if not _APP_NAME.fullmatch(folder.name):
            raise ConfigError(f"app folder name {folder.name!r} is not a valid app name")
        package = module_name_for(folder.name)
        if package in packages:
            raise ConfigError(f"app folders {packages[package]!r} and {folder.name!r} import as the same {package}")
        packages[package] = folder.name
        found.append((folder.name, folder, package))
    return found


def _add_to_evals_path(evals_dir):
    import evals

    entry = str(evals_dir)
    if entry not in evals.__path__:
        evals.__path__.append(entry)


def _forget_modules(prefix):
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


def import_eval_module(app_dir, package):
    """Import `app_dir/eval.py`: as `<package>.eval` with the folder as package `package`, or as `evals.eval`
    for the classic layout (package None). A fresh import each time (reload re-reads the code)."""
    import evals

    if package is None:
        _forget_modules("evals.eval")
        _forget_modules("evals.src")
        return importlib.import_module("evals.eval")
    _forget_modules(package)
    init = app_dir / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(package, init, submodule_search_locations=[str(app_dir)])
    else:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(app_dir)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
    setattr(evals, package.split(".", 1)[1], module)
    return importlib.import_module(package + ".eval")


def _short_reason(exc):
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class App:
    """One eval app: its settings, its module, the model create_net made, and its batcher.

    create_net, every net_inference call and nothing else run on the app's one inference thread, so GPU
    contexts and thread-locals made by create_net stay valid. net_preprocess runs on a pool of its own.
    """

    def __init__(self, name, app_dir, package):
        self.name = name
        self.app_dir = Path(app_dir)
        self.package = package
        self.state = LOADING
        self.reason = ""
        self.config = None
        self.model = None
        self.module = None
        self.batcher = None
        self._inference_thread = None
        self._preprocess_executor = None
        self._ctx = None

    # ---- loading ---------------------------------------------------------------------------------------------

    async def load(self):
        """Import eval.py and run create_net on the inference thread; on failure the app is FAILED."""
        try:
            self.config = load_app_config(self.app_dir)
            log.info("app %s: effective settings %s", self.name, self.config.to_dict())
            self._inference_thread = WorkerThread(f"infer-{self.name}")
            await self._inference_thread.run(self._load_on_inference_thread)
        except ConfigError as exc:
            return self._fail(exc.message)
        except _LoadError as exc:
            return self._fail(str(exc))
        except Exception as exc:  # an eval's import can raise anything
            log.error("app %s: import of eval.py failed\n%s", self.name, traceback.format_exc())
            return self._fail(f"import of eval.py failed: {_short_reason(exc)}")
        preprocess = None
        if getattr(self.module, "net_preprocess", None) is not None:
            preprocess = self._preprocess
            if self.config.preprocess_workers:
                self._preprocess_executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self.config.preprocess_workers, thread_name_prefix=f"pre-{self.name}")
        self.batcher = Batcher(self.name, self.config, self._run_batch, self._inference_thread,
                               preprocess=preprocess, preprocess_executor=self._preprocess_executor)
        self.batcher.start()
        self.state = READY
        log.info("app %s: ready (batch_size=%d)", self.name, self.config.batch_size)
        return self

    def _fail(self, reason):
        self.state = FAILED
        self.reason = reason
        log.error("app %s: FAILED: %s", self.name, reason)
        if self._inference_thread is not None:
            self._inference_thread.shutdown()
        return self

    def _load_on_inference_thread(self):
        from evals.utils import CTX

        self._ctx = CTX
        self.module = import_eval_module(self.app_dir, self.package)
        for required in ("create_net", "net_inference"):
            if not callable(getattr(self.module, required, None)):
                raise _LoadError(f"eval.py defines no {required}()")
        configs = self.config.create_net_configs(self.name, self.app_dir)
        output = self.module.create_net(configs)
        if not isinstance(output, (tuple, list)) or len(output) != 3:
            raise _LoadError(f"create_net must return (model, code, message), got {type(output).__name__}")
        model, code, message = output
        if not is_ok(code):
            raise _LoadError(f"create_net failed with code {code}: {message}")
        self.model = model

    # ---- running ---------------------------------------------------------------------------------------------

    def _bind(self, reqid):
        self._ctx.app = self.name
        self._ctx.reqID = reqid

    def _run_batch(self, requests, reqids):
        self._bind(",".join(reqids))
        return self.module.net_inference(self.model, requests)

    def _preprocess(self, request, reqid):
        self._bind(reqid)
        return self.module.net_preprocess(self.model, request)

    @property
    def effective_state(self):
        if self.state == READY and self.batcher is not None and self.batcher.stuck_for() > 0:
            return STUCK
        return self.state

    async def infer(self, requests, reqids, timeout):
        """One Outcome per eval request; ServingError for failures of the whole call."""
        if self.state != READY:
            reason = f": {self.reason}" if self.reason else ""
            raise ServingError(UNAVAILABLE, f"app {self.name} is {self.state}{reason}")
        return await self.batcher.submit(requests, reqids, timeout)

    def info(self):
        return {
            "name": self.name,
            "state": self.effective_state,
            "reason": self.reason if self.state == FAILED else (
                "net_inference is running past inference_timeout_s" if self.effective_state == STUCK else ""),
            "config": self.config.to_dict() if self.config else {},
            "methods": list(METHODS),
        }

    async def drain(self, timeout):
        """Wait until every request admitted to this app has been answered, for at most `timeout` seconds.

        Used after the app left the registry (reload, unload): nothing new is admitted then, so what is pending
        only shrinks. Returns True when drained, False when `timeout` passed first (a stuck net_inference)."""
        if self.batcher is None:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.batcher.pending and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_S)
        return not self.batcher.pending

    async def close(self):
        """Stop the batcher (what is still waiting gets 503) and the inference thread. The thread ends after the
        call it is running: it is waited for up to THREAD_END_WAIT_S, so that a reload or an unload answers once
        the retired version's thread (and what it holds, its model) is gone; a stuck net_inference is not."""
        if self.batcher is not None:
            await self.batcher.stop()
        if self._preprocess_executor is not None:
            self._preprocess_executor.shutdown(wait=False, cancel_futures=True)
        if self._inference_thread is not None:
            self._inference_thread.shutdown()
            if not await self._inference_thread.wait_ended(THREAD_END_WAIT_S):
                log.warning("app %s: its inference thread is still in net_inference; left to end on its own",
                            self.name)
        if self.state != FAILED:
            self.state = STOPPED


def _freeze_heap():
    """Collect, then move every object alive now (modules, apps, models) where the cyclic GC never looks again.

    A full collection walks every tracked object: tens of thousands once the apps are imported, a pause of tens
    of milliseconds every few thousand requests, and about a third of the collector's work per request. What
    the imports and create_net made lives as long as the apps; requests allocate and free their own objects.
    Retiring an app (a KServe reload or unload) unfreezes the heap for good, so that the app's cycles are freed:
    after a reload the collector works as it does by default.
    """
    gc.collect()
    gc.freeze()


def _log_orphaned_outcome(task):
    """Log how a load or unload ended when its caller had gone: nobody else is told."""
    if task.cancelled():
        log.warning("%s: cancelled (the server is stopping)", task.get_name())
    elif task.exception() is not None:
        log.warning("%s: failed: %s", task.get_name(), _short_reason(task.exception()))
    else:
        log.info("%s: done", task.get_name())


class _LoadError(Exception):
    """create_net or the module's shape refused the app; the message is the reason shown to clients."""


class AppRegistry:
    """The apps of one evals dir, by name."""

    def __init__(self, evals_dir, classic_name=None, extra_dirs=()):
        self.evals_dir = Path(evals_dir).resolve()
        self.classic_name = classic_name
        # Further folders of apps (in the app layout), served beside the evals dir: exported training snapshots
        # live in DATA/apps. An app of the evals dir shadows an extra one of the same name.
        self.extra_dirs = tuple(Path(folder).resolve() for folder in extra_dirs)
        self.apps = {}
        self._reloading = asyncio.Lock()  # one load/unload at a time: each reads and swaps self.apps
        # The loads and unloads under way, each a task of its own (see _complete): referenced here so that one
        # whose caller went away is not garbage-collected mid-way, and so that close() can end them.
        self._operations = set()
        self._closed = False

    def _publish_ready(self, name):
        """Set serving_app_ready{app=name} from the version the registry serves now (0 when none: unloaded)."""
        app = self.apps.get(name)
        metrics.APP_READY.labels(name).set(1 if app is not None and app.state == READY else 0)

    def _discover(self):
        """[(name, folder, package)] of every app on disk: the evals dir's, then the extra dirs' not shadowed."""
        found = discover(self.evals_dir, self.classic_name)
        names = {name for name, _, _ in found}
        packages = {package for _, _, package in found}
        for extra in self.extra_dirs:
            if not extra.is_dir():
                continue
            for name, folder, package in discover(extra):
                if name in names or package in packages:
                    log.warning("app folder %s is shadowed by an app of the same name (or module name %s)", folder,
                                package)
                    continue
                names.add(name)
                packages.add(package)
                found.append((name, folder, package))
        return found

    async def load_all(self, strict=False, skip=None, only=None):
        """Load every app of the evals dir (and extra dirs); with `strict`, the first FAILED app raises
        ConfigError. Apps named in `skip` ({name: reason}, the supervisor's quarantine) are not loaded: FAILED
        with that reason. `only` (an app name) loads that app alone (`serving test` in-process: the other apps'
        create_net would cost start-up time and memory for nothing); an unknown one is a 404 naming the apps."""
        found = self._discover()
        if only is not None:
            if only not in {name for name, _, _ in found}:
                known = ", ".join(sorted(name for name, _, _ in found)) or "none"
                raise ServingError(NOT_FOUND, f"unknown app {only!r}; apps served: {known}")
            found = [entry for entry in found if entry[0] == only]
        _add_to_evals_path(self.evals_dir)
        for name, folder, package in found:
            app = App(name, folder, package)
            self.apps[name] = app
            if skip and name in skip:
                app._fail(str(skip[name]))
                self._publish_ready(name)
                continue
            await app.load()
            self._publish_ready(name)
            if strict and app.state == FAILED:
                raise ConfigError(f"app {name} failed to load: {app.reason}")
        _freeze_heap()
        return self.apps

    def get(self, name):
        app = self.apps.get(name)
        if app is None:
            known = ", ".join(sorted(self.apps)) or "none"
            raise ServingError(NOT_FOUND, f"unknown app {name!r}; apps served: {known}")
        return app

    async def close(self):
        """Close every app. A load or unload still under way (its caller may have gone) is cancelled first, as the
        server is stopping: the version it was retiring is closed by _retire, one it was loading by _load_app."""
        self._closed = True
        operations = list(self._operations)
        for task in operations:
            task.cancel()
        if operations:
            await asyncio.gather(*operations, return_exceptions=True)
        for app in self.apps.values():
            await app.close()
            self._publish_ready(app.name)  # closed, it is no longer READY: 0

    def folders(self):
        """{app name: (app folder, package)} of the apps on disk now, loaded or not."""
        return {name: (folder, package) for name, folder, package in self._discover()}

    async def load_app(self, name):
        """(Re)load app `name` from its folder on disk, without a restart and without dropping calls in flight.

        A new App is built and loaded next to the one serving; only once it is READY does it replace the old one
        in the registry, so every later call reaches the new code. The old one then finishes what it had
        admitted (bounded by its request_timeout_s) and is closed. A load that fails leaves the old app serving
        and raises ServingError: 404 when no such folder exists, 400 when its app.json is invalid, 500 when
        eval.py or create_net failed. Returns the new App.

        Once started, a load completes even when its caller goes away (a KServe client's deadline passes while
        the old version drains): see _complete.
        """
        return await self._complete(self._load_app(name), f"load of app {name}")

    async def unload_app(self, name):
        """Stop serving app `name`: later calls get 404; calls it already admitted are answered first (bounded
        by its request_timeout_s), then it is closed. Raises ServingError 404 when no such app is loaded.

        Once started, an unload completes even when its caller goes away: see _complete."""
        return await self._complete(self._unload_app(name), f"unload of app {name}")

    async def _complete(self, operation, what):
        """Run a load or unload as a task of its own and wait for its outcome.

        Cancelling the caller (its RPC's deadline passed, its client hung up) only stops the waiting: were the
        operation cancelled with it, a swap already made would leave the retired version drained but never closed
        (its batcher task, inference thread and model alive for good), and an unload would have removed the app
        without closing it. The registry thus only ever moves from one consistent state to the next; the caller
        is told it gave up, not that the operation was undone."""
        if self._closed:
            operation.close()
            raise ServingError(UNAVAILABLE, f"{what}: the server is stopping")
        task = asyncio.get_running_loop().create_task(operation, name=what)
        self._operations.add(task)
        task.add_done_callback(self._operations.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                log.warning("%s: its caller went away; it completes without it", what)
                task.add_done_callback(_log_orphaned_outcome)
            raise

    async def _load_app(self, name):
        async with self._reloading:
            folder = self.folders().get(name)
            if folder is None:
                raise ServingError(NOT_FOUND, f"no app folder {name!r} in {self.evals_dir}")
            app_dir, package = folder
            # Validate app.json first: a config error is the caller's to fix (400), not a failure of the app.
            load_app_config(app_dir)
            _add_to_evals_path(self.evals_dir)
            new = App(name, app_dir, package)
            try:
                await new.load()
            except asyncio.CancelledError:
                # Only close() cancels a load (the server is stopping): create_net may still be running on the
                # new app's thread, which ends once it returns.
                await new.close()
                raise
            if new.state != READY:
                await new.close()
                raise ServingError(INTERNAL, f"app {name} failed to load, the previous version keeps serving: "
                                             f"{new.reason}")
            old = self.apps.get(name)
            self.apps[name] = new
            self._publish_ready(name)
            if old is not None:
                await self._retire(old)
            log.info("app %s: loaded from %s", name, app_dir)
            return new

    async def _unload_app(self, name):
        async with self._reloading:
            app = self.get(name)
            del self.apps[name]
            # Unloaded, the app does not serve: its gauge reads 0 (kept, not removed, as its health stays
            # NOT_SERVING), until a later load serves it again.
            self._publish_ready(name)
            await self._retire(app)
            log.info("app %s: unloaded", name)

    @staticmethod
    async def _retire(app):
        """Drain and close an app that is no longer in the registry."""
        timeout = app.config.request_timeout_s if app.config is not None else 0.0
        try:
            if not await app.drain(timeout):
                log.warning("app %s: requests still pending after %.1fs; closing anyway", app.name, timeout)
        finally:
            # Closed even when the drain is cut short (close() at shutdown cancels it): an app out of the
            # registry that is never closed is never closed at all.
            await app.close()
            # The retired app's reference cycles (and its model) must be collectable, whenever the last reference
            # to it goes (a call still pending holds it until its deadline): the heap is not frozen again.
            gc.unfreeze()
