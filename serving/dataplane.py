"""The transport-neutral entry to inference: every transport (native gRPC, in-process runner) calls
`DataPlane.infer`, which finds the app, applies deadlines, runs the batcher and counts the outcome."""
import itertools
import logging
import os
import time

from serving import metrics
from serving.apps import METHODS
from serving.errors import NOT_FOUND, ServingError

log = logging.getLogger("serving.dataplane")

_SEQUENCE = itertools.count(1)
_PREFIX = os.urandom(4).hex()


def new_request_id():
    """A short unique request id, for calls that did not bring one in `x-request-id`."""
    return f"{_PREFIX}-{next(_SEQUENCE)}"


class DataPlane:
    """Runs calls against the apps of an AppRegistry."""

    def __init__(self, registry):
        self.registry = registry

    async def infer(self, app_name, method, requests, request_id, timeout=None):
        """One Outcome per eval request, in order. `timeout` is the caller's remaining time in seconds (None: no
        deadline); the app's request_timeout_s caps it. Raises ServingError for failures of the whole call."""
        started = time.perf_counter()
        app = self.registry.apps.get(app_name)
        # Unknown names share one label: callers must not be able to grow the metrics without bound.
        label = app_name if app is not None else "_unknown"
        try:
            if app is None:
                app = self.registry.get(app_name)  # raises NOT_FOUND naming the apps served
            if method and method not in METHODS:
                raise ServingError(NOT_FOUND, f"app {app_name!r} has no method {method!r}; methods: "
                                              f"{', '.join(METHODS)}")
            if app.config is not None:
                cap = app.config.request_timeout_s
                timeout = cap if timeout is None else min(timeout, cap)
            reqids = [request_id] if len(requests) == 1 else [f"{request_id}.{i}" for i in range(len(requests))]
            outcomes = await app.infer(requests, reqids, timeout if timeout is not None else 30.0)
        except ServingError as exc:
            metrics.REQUESTS.inc((label, str(exc.code)), len(requests) or 1)
            log.info("[%s] %s: %d %s", request_id, app_name, exc.code, exc.message)
            raise
        finally:
            metrics.REQUEST_LATENCY.observe((label,), time.perf_counter() - started)
        for outcome in outcomes:
            metrics.REQUESTS.inc((label, str(outcome.code)))
            if not outcome.ok:
                log.info("[%s] %s: instance failed %d %s", request_id, app_name, outcome.code, outcome.message)
        return outcomes
