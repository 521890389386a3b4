"""Run apps in this process, without a server: the same loader, batcher and codec as `serving serve`, so an
in-process result is exactly what a client of the server would get. Used by `serving test --evals`."""
import asyncio
import threading

from serving import codec
from serving.apps import FAILED, AppRegistry
from serving.config import ConfigError
from serving.dataplane import DataPlane, new_request_id
from serving.errors import ServingError


class InProcessRunner:
    """Loads one app of an evals dir on a private event loop thread; `infer` has the Client's interface."""

    def __init__(self, evals_dir, app, *, app_name=None, method="inference", timeout=None):
        self.app = app
        self.method = method
        self.timeout = timeout
        self.registry = AppRegistry(evals_dir, classic_name=app_name)
        self.dataplane = DataPlane(self.registry)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inprocess-loop", daemon=True)
        self._thread.start()
        try:
            self._call(self.registry.load_all(only=app))  # the app under test alone
            loaded = self.registry.get(app)
            if loaded.state == FAILED:
                raise ConfigError(f"app {app} failed to load: {loaded.reason}")
        except Exception:
            self.close()
            raise

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _infer(self, request):
        requests = codec.request_to_eval_requests(request)
        outcomes = await self.dataplane.infer(self.app, self.method, requests, new_request_id(), self.timeout)
        return [codec.result_to_dict(codec.outcome_to_result(outcome)) for outcome in outcomes]

    def infer(self, instances, params=None):
        # Through the wire messages on purpose: the values the eval and the caller see are the served ones.
        request = codec.instances_to_request(self.app, self.method, instances, params)
        try:
            return self._call(self._infer(request))
        except ServingError as exc:
            return codec.Failure(exc.message, exc.code)

    def close(self):
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self._call(self.registry.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
