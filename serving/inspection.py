"""The MVI inspection calls of seed 000 (initial_defect_task, ocr_task, defect_detect_task), transport-neutral.

They are ordinary calls of the built-in apps, through the same DataPlane and batcher as any request:

- ``ocr(image_id)``: the stored image through ``mvi_ocr``; its ``code_str``.
- ``detect(product_id, image_view_num, views)``: the product's views through ``mvi_defect`` as one multi-image
  request (so they run in one forward pass); the result JSON (product, verdict, each view's defects) is stored
  as a document of kind "result" and its id returned.
- ``initialize(device_num, names)``: makes sure the named apps are loaded and READY (``[]``: the two built-in
  ones). Each entry is an app name (or the path of an app folder the server serves: its evals dir or DATA/apps)
  or the store id of a training snapshot, which is exported and served (serving.jobs.export). Every entry is
  resolved before anything is loaded, so a typo loads nothing; an app already READY is left alone, so calling it
  twice is harmless; a FAILED or STUCK one is loaded again. ``device_num`` is accepted for the seed's sake:
  where an app runs is its app.json ``use_device``.

Decisions: the server loads every app of its evals dir at start, so the built-in apps are ready before the first
call and ``initial_defect_task`` is a check; an app that is not loaded (unloaded through the KServe repository
API, say) is loaded on first use by ocr/detect. An arbitrary folder path is never loaded: that would let any
caller run code of its choosing. With tokens, loading an app (here as through KServe's RepositoryModelLoad) needs
an admin: a plain user's call on an app that is not loaded (or FAILED, or STUCK) is 403.

Errors are ServingErrors with the runtime's codes: 400 a malformed id, a document that is not an image,
``image_view_num`` that disagrees with the views, no views, a repeated view id, a view image that does not
decode; 404 an unknown image, app or model (another user's image or model is unknown: serving.ownership); the
app's own code when it fails (5xx, 57x retryable).
"""
import asyncio
import time
from pathlib import Path

from serving.auth import current_user
from serving.errors import BAD_REQUEST, FORBIDDEN, NOT_FOUND, ServingError
from serving.ownership import caller

OCR_APP = "mvi_ocr"
DEFECT_APP = "mvi_defect"
BUILT_IN_APPS = (OCR_APP, DEFECT_APP)
MAX_VIEWS = 64
MAX_DEVICE_NUM = 64


class Inspection:
    """The MVI calls over a DataPlane, the server's store (``store_factory()``) and its JobManager (exports)."""

    def __init__(self, dataplane, store_factory, jobs=None):
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self._store_factory = store_factory
        self.jobs = jobs
        self._loading = asyncio.Lock()  # concurrent first calls load an app once

    # ---- apps -----------------------------------------------------------------------------------------------

    def _app_name(self, entry):
        """The app an initial_defect_task entry names, or None when it names no app folder the server serves."""
        folders = self.registry.folders()
        if entry in folders:
            return entry
        path = Path(entry)
        if path.name in folders and path.is_dir():
            try:
                if path.resolve() == folders[path.name][0].resolve():
                    return path.name
            except OSError:
                return None
        return None

    async def _ensure_loaded(self, name, reload_stuck=False):
        """App `name` READY: loaded from its folder when it is not (or is FAILED), and with `reload_stuck` also when
        it is STUCK. Calls leave a STUCK app alone: it answers them 503, retryable, as any app does, and reloading
        it on a call's path would make every caller wait for a load."""
        def ready(app):
            return app is not None and (app.effective_state if reload_stuck else app.state) == "READY"

        app = self.registry.apps.get(name)
        if ready(app):
            return app
        async with self._loading:
            app = self.registry.apps.get(name)
            if ready(app):
                return app  # loaded by the call this one waited for
            if name not in self.registry.folders():
                raise ServingError(NOT_FOUND, f"app {name!r} is not served here (no such app folder)")
            # A load changes what every caller is served, as KServe's RepositoryModelLoad does: with tokens, an
            # admin's call only (a plain user must not bring back an app an admin unloaded).
            user = current_user()
            if user is not None and not user.admin:
                raise ServingError(FORBIDDEN, f"app {name!r} is not loaded, and loading it needs an admin token")
            return await self.registry.load_app(name)

    async def initialize(self, device_num, names):
        """Load what `names` names (see the module docstring); the app names now READY."""
        from serving.store import is_valid_id

        if isinstance(device_num, bool) or not isinstance(device_num, int) or not 0 <= device_num <= MAX_DEVICE_NUM:
            raise ServingError(BAD_REQUEST, f"device_num must be 0..{MAX_DEVICE_NUM}, got {device_num!r}")
        entries = list(names) or list(BUILT_IN_APPS)
        plan = []
        for entry in entries:
            name = self._app_name(entry)
            if name is not None:
                plan.append(("app", name))
            elif is_valid_id(entry) and self.jobs is not None:
                plan.append(("model", entry))
            else:
                raise ServingError(NOT_FOUND, f"{entry!r} names no app this server serves (evals dir or DATA/apps) "
                                              "and is not a model id; nothing was loaded")
        for kind, value in plan:
            if kind == "model":  # unknown, another user's or not a model: refused before anything loads
                try:
                    await asyncio.to_thread(self.jobs.find_model, value)
                except ServingError as exc:
                    raise ServingError(exc.code, f"{value!r}: {exc.message}; nothing was loaded") from None
        loaded = []
        for kind, value in plan:
            if kind == "app":
                await self._ensure_loaded(value, reload_stuck=True)
                loaded.append(value)
            else:
                exported = await self.jobs.export_model(value)
                loaded.append(exported["app"])
        return loaded

    # ---- calls ----------------------------------------------------------------------------------------------

    def _store(self):
        """The store as the caller sees it: another user's image is unknown, results belong to the caller."""
        return self._store_factory().for_user(caller())

    def _image_bytes(self, image_id, where):
        """The bytes of stored image `image_id` (in a thread: SQLite and file reads)."""
        from serving.store import StoreError

        store = self._store()
        try:
            record = store.get(image_id, kind="image")
        except StoreError as exc:
            raise ServingError(exc.code, f"{where}: {exc.message}") from None
        return store.read_blob(record.id)

    async def _infer_one(self, app_name, request, request_id, timeout):
        await self._ensure_loaded(app_name)
        outcome = (await self.dataplane.infer(app_name, "inference", [request], request_id, timeout))[0]
        if not outcome.ok:
            raise ServingError(outcome.code, outcome.message)
        return outcome.result

    async def ocr(self, image_id, request_id, timeout=None):
        """The code string read from stored image `image_id` by mvi_ocr."""
        body = await asyncio.to_thread(self._image_bytes, image_id, "img_mongo_id")
        result = await self._infer_one(OCR_APP, {"data": {"body": body}, "params": {}}, request_id, timeout)
        return result["code_str"]

    async def detect(self, product_id, image_view_num, views, request_id, timeout=None):
        """Run a product's views ([(image_view_id, image_mongo_id)]) through mvi_defect; the stored result's id."""
        if not views:
            raise ServingError(BAD_REQUEST, "img_view_lst is empty: a product needs at least one view")
        if image_view_num != len(views):
            raise ServingError(BAD_REQUEST, f"image_view_num is {image_view_num} but img_view_lst holds "
                                            f"{len(views)} views")
        if len(views) > MAX_VIEWS:
            raise ServingError(BAD_REQUEST, f"a product has at most {MAX_VIEWS} views, got {len(views)}")
        view_ids = [view_id for view_id, _ in views]
        repeated = sorted({v for v in view_ids if view_ids.count(v) > 1})
        if repeated:
            raise ServingError(BAD_REQUEST, f"image_view_id {repeated} appear more than once")
        bodies = []
        for view_id, image_id in views:
            bodies.append(await asyncio.to_thread(self._image_bytes, image_id, f"view {view_id}"))
        request = {"data": [{"body": body, "attribute": {"view_id": view_id}}
                            for (view_id, _), body in zip(views, bodies)], "params": {}}
        result = await self._infer_one(DEFECT_APP, request, request_id, timeout)
        by_view = {view["view_id"]: view for view in result["views"]}
        document = {
            "product_id": product_id, "verdict": result["verdict"], "failed_views": result["failed_views"],
            "views": [{"image_view_id": view_id, "image_mongo_id": image_id, "verdict": by_view[view_id]["verdict"],
                       "defects": by_view[view_id]["defects"]} for view_id, image_id in views],
            "app": DEFECT_APP, "request_id": request_id, "time": time.time(),
        }
        meta = {"product_id": product_id, "verdict": result["verdict"], "app": DEFECT_APP}
        return await asyncio.to_thread(self._store_result, document, meta, [image_id for _, image_id in views])

    def _store_result(self, document, meta, image_ids):
        return self._store().put_json(document, kind="result", meta=meta, refs=sorted({i.lower() for i in image_ids}))
