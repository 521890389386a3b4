"""JobManager: the server's side of tasks. It checks and records requests, keeps a FIFO queue bounded by
`max_jobs` concurrent workers, starts one worker process per task attempt (serving.jobs.worker), watches it,
and escalates stops.

Everything it decides goes through jobs.sqlite3 (serving.jobs.db) first; the event loop only wakes the
scheduler. All SQLite work runs in threads (asyncio.to_thread), never on the event loop, and the workers are
separate processes in sessions of their own, so training never slows serving down.

Ownership: exactly one process per data folder runs workers, the holder of the lock file
`DATA/jobs/owner.lock` (with `serve --workers N`, the first serving process to take it; the others accept and
answer requests through the shared database, and take over if the owner dies). The owner's scheduler polls
the database every `poll_interval_s`, so a task queued by another process starts within that time.

Stopping (task_stop_request, pause): the request flag is written; the worker sees it through should_stop(),
checkpoints and ends STOPPED / PAUSED. A worker that has not ended after `stop_grace_s` gets SIGTERM (which also
makes should_stop() true), then SIGKILL after KILL_AFTER_TERM_S; its last snapshot is kept either way.

Restart: see serving.jobs (RUNNING -> INTERRUPTED, resumable; QUEUED stays queued).

Ownership (serving.ownership): every request acts for `serving.ownership.caller()`, the user of the RPC in
progress, read here rather than passed in so that every servicer method gets the same checks. A task or template
belongs to the user that made it; another user's answers 404 with the message an unknown one gets (admins see
and control all). Documents a request names (datasets, models) must be visible to the caller too, and the
worker writes the task's snapshots and results as the task's owner.
"""
import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from serving.apps import module_name_for
from serving.jobs import db as jobdb
from serving.jobs.codes import BAD_PARAMS, CONFLICT, INTERNAL, NO_TRAINER, NOT_FOUND, NOT_READY, JobError
from serving.jobs.export import (check_app_name, default_app_name, export_in_subprocess, exported_apps_dir,
                                 model_record, read_exporter, replace_folder, write_exporter)
from serving.jobs.params import PARAM_FIELDS, check_task_ids, check_train_params
from serving.jobs.worker import append_log, child_environment, task_dir
from serving.ownership import caller, can_see

log = logging.getLogger("serving.jobs")

DEFAULT_TRAINER_APP = "mvp_detector"
DEFAULT_MAX_JOBS = 1
DEFAULT_STOP_GRACE_S = 5.0
KILL_AFTER_TERM_S = 2.0
POLL_INTERVAL_S = 0.5
WORKER_LOG_TAIL_BYTES = 2000
_TEMPLATE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class _Worker:
    """A worker process this manager started."""

    def __init__(self, key, attempt, proc, log_file):
        self.key = key
        self.attempt = attempt
        self.proc = proc
        self.log_file = log_file
        self.exited = asyncio.Event()
        self.escalation = None


class JobManager:
    """Tasks of one data folder, run by the apps of one evals dir. `store_factory()` returns the server's
    serving.store.Store; `registry` (serving.apps.AppRegistry) tells which apps define train/test hooks."""

    def __init__(self, data_dir, evals_dir, store_factory, registry=None, *, app_name=None,
                 max_jobs=DEFAULT_MAX_JOBS, trainer_app=DEFAULT_TRAINER_APP, stop_grace_s=DEFAULT_STOP_GRACE_S,
                 poll_interval_s=POLL_INTERVAL_S):
        if max_jobs < 1:
            raise ValueError("max_jobs must be >= 1")
        self.data_dir = Path(data_dir)
        self.evals_dir = Path(evals_dir)
        self._store_factory = store_factory
        self.registry = registry
        self.app_name = app_name
        self.max_jobs = int(max_jobs)
        self.trainer_app = trainer_app
        self.stop_grace_s = float(stop_grace_s)
        self.poll_interval_s = float(poll_interval_s)
        self.db = None
        self.owner = False
        self._lock_file = None
        self._workers = {}
        self._wake = None
        self._loop_task = None
        self._closing = False
        self._open_lock = None
        self._background = set()  # watcher and escalation tasks: referenced so they are not collected
        self._exporting = None  # asyncio.Lock: one export at a time (each replaces a folder and reloads an app)
        # asyncio.Lock: a deleted task's folder is moved away before a new task of the same id creates its own
        self._folders = None
        self._exports = 0

    # ---- life cycle -----------------------------------------------------------------------------------------

    async def start(self):
        """Open the task records when the data folder has some (recovering what a previous server left
        RUNNING); otherwise they are created by the first task call, so a server that never runs a task writes
        no file for them."""
        self._open_lock = asyncio.Lock()
        self._exporting = asyncio.Lock()
        self._folders = asyncio.Lock()
        if (self.data_dir / jobdb.DB_FILE).exists():
            await self._opened()

    async def _opened(self):
        """Open jobs.sqlite3 and start the scheduler, once."""
        async with self._open_lock:
            if self.db is None and not self._closing:
                self.db = await asyncio.to_thread(jobdb.JobDB, self.data_dir)
                self._wake = asyncio.Event()
                await self._try_own()
                self._loop_task = asyncio.get_running_loop().create_task(self._scheduler())
        if self.db is None:
            raise JobError(INTERNAL, "the server is shutting down")
        return self.db

    async def _try_own(self):
        """Take the owner lock if free; the new owner recovers what a previous owner left RUNNING. Never once
        this server is stopping: it would start queued tasks only to interrupt them."""
        if self.owner or self._closing:
            return
        path = self.data_dir / "jobs" / "owner.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock_file.close()
            return
        self._lock_file, self.owner = lock_file, True
        await asyncio.to_thread(self._recover)

    def _recover(self):
        for key in self.db.recover():
            log.warning("%s was RUNNING when the previous server stopped: now INTERRUPTED", jobdb.task_label(key))
            append_log(task_dir(self.data_dir, key) / "progress.jsonl", "END", state=jobdb.INTERRUPTED,
                       error="the server stopped while the task ran")

    async def stop_scheduling(self):
        """Start no task from now on (the server is stopping): the first step of a shutdown, taken before the
        calls in flight are let finish. Queued tasks stay QUEUED for the next start; without this, a server
        stopping beside another (`--workers`) could take over the scheduler and start a queued task only to
        interrupt it at once."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None

    async def close(self, grace=None):
        """Stop scheduling; ask running workers to checkpoint and end (INTERRUPTED), kill those that do not
        within `grace` (default stop_grace_s)."""
        await self.stop_scheduling()
        grace = self.stop_grace_s if grace is None else grace
        workers = list(self._workers.values())
        for worker in workers:
            with contextlib.suppress(JobError):
                await asyncio.to_thread(self.db.request, worker.key, jobdb.SHUTDOWN)
        await asyncio.gather(*(self._end_worker(worker, grace) for worker in workers))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file, self.owner = None, False
        if self.db is not None:
            self.db.close()
            self.db = None

    # ---- scheduling -----------------------------------------------------------------------------------------

    def _spawn_task(self, coroutine):
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _nudge(self):
        if self._wake is not None:
            self._wake.set()

    async def _scheduler(self):
        while not self._closing:
            try:
                await self._try_own()
                if self.owner:
                    await self._escalate_requests()
                    await self._start_queued()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad turn must not end scheduling for good
                log.exception("job scheduler turn failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()

    async def _start_queued(self):
        free = self.max_jobs - len(self._workers)
        if free <= 0:
            return
        for key in await asyncio.to_thread(self.db.queued):
            if free <= 0:
                break
            if key in self._workers:
                # The previous attempt's process is still exiting (a task resumed the moment it read PAUSED): it
                # holds its slot and its _workers entry until _watch sees it end (which wakes the scheduler);
                # the new attempt waits for that rather than run beside it, unwatched.
                continue
            attempt = await asyncio.to_thread(self.db.mark_running, key)
            if attempt is None:
                continue  # stopped or paused between the two reads
            free -= 1
            try:
                await self._spawn(key, attempt)
            except Exception as exc:
                log.exception("%s: cannot start its worker", jobdb.task_label(key))
                await asyncio.to_thread(self.db.finish, key, attempt, jobdb.FAILED, f"cannot start worker: {exc}")

    async def _spawn(self, key, attempt):
        folder = task_dir(self.data_dir, key)
        async with self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            log_file = open(folder / "worker.log", "ab")
        args = [sys.executable, "-m", "serving.jobs.worker", "--data-dir", str(self.data_dir.resolve()),
                "--evals", str(self.evals_dir.resolve()), "--task-id", key[0], "--interface-id", key[1],
                "--attempt", str(attempt), "--parent-pid", str(os.getpid())]
        if self.app_name:
            args += ["--app-name", self.app_name]
        env = child_environment()
        try:
            # A session of its own: a Ctrl-C meant for the server does not kill the worker mid-write; the server
            # asks it to stop instead. Its process group is what stop escalation signals.
            proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL, stdout=log_file,
                                                        stderr=log_file, env=env, start_new_session=True)
        except BaseException:
            log_file.close()
            raise
        worker = _Worker(key, attempt, proc, log_file)
        self._workers[key] = worker
        await asyncio.to_thread(self.db.set_pid, key, attempt, proc.pid)
        log.info("%s: attempt %d started (pid %d)", jobdb.task_label(key), attempt, proc.pid)
        self._spawn_task(self._watch(worker))

    async def _watch(self, worker):
        returncode = await worker.proc.wait()
        worker.log_file.close()
        try:
            await asyncio.to_thread(self._record_exit, worker, returncode)
        finally:
            worker.exited.set()
            # Only our own entry: another attempt's worker must stay counted and escalated.
            if self._workers.get(worker.key) is worker:
                del self._workers[worker.key]
            self._nudge()

    def _record_exit(self, worker, returncode):
        """After a worker ended: when it could not write its own end (killed, crashed hard), write it."""
        try:
            task = self.db.get_task(worker.key)
        except JobError as exc:
            if exc.code != NOT_FOUND:
                raise
            # Deleted meanwhile through another serving process (--workers), which cannot wait for this one's
            # worker to exit: nothing is left to record.
            log.info("%s: attempt %d ended after the task was deleted", jobdb.task_label(worker.key), worker.attempt)
            return
        if task["state"] != jobdb.RUNNING or task["attempt"] != worker.attempt:
            log.info("%s: attempt %d ended %s", jobdb.task_label(worker.key), worker.attempt, task["state"])
            return
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
        if task["requested"]:
            state = jobdb.STATE_AFTER_REQUEST[task["requested"]]
            error = f"the worker did not stop in time and was {how}; the last snapshot is kept"
        else:
            state, error = jobdb.FAILED, f"the worker {how}: {self._log_tail(worker.key)}"
        self.db.finish(worker.key, worker.attempt, state, error)
        append_log(task_dir(self.data_dir, worker.key) / "progress.jsonl", "END", state=state, error=error)
        log.warning("%s: %s", jobdb.task_label(worker.key), error)

    def _log_tail(self, key):
        try:
            with open(task_dir(self.data_dir, key) / "worker.log", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                handle.seek(max(handle.tell() - WORKER_LOG_TAIL_BYTES, 0))
                return handle.read().decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no output)"

    async def _escalate_requests(self):
        """Start the grace timer of every worker of ours asked to stop (by any serving process)."""
        if not self._workers:
            return
        running = await asyncio.to_thread(self.db.running)
        for key, worker in list(self._workers.items()):
            requested = running.get(key, (None, None, None))[2]
            if requested and worker.escalation is None:
                worker.escalation = self._spawn_task(self._end_worker(worker, self.stop_grace_s))

    async def _end_worker(self, worker, grace):
        """Wait `grace` for a worker asked to stop, then SIGTERM its group, then SIGKILL it."""
        for sig, wait_s in ((None, grace), (signal.SIGTERM, KILL_AFTER_TERM_S), (signal.SIGKILL, None)):
            if sig is not None and worker.proc.returncode is None:
                log.warning("%s: worker pid %d still running, sending %s", jobdb.task_label(worker.key),
                            worker.proc.pid, sig.name)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(worker.proc.pid, sig)
            try:
                await asyncio.wait_for(worker.exited.wait(), wait_s)
                return
            except asyncio.TimeoutError:
                continue

    # ---- requests -------------------------------------------------------------------------------------------

    def _app_module(self, name):
        """The imported eval module of a loaded app, or None."""
        if self.registry is None:
            return None
        app = self.registry.apps.get(name)
        return getattr(app, "module", None) if app is not None else None

    def _trainer_for(self, model_name):
        """(app name, module) of the app that trains: the app named by ParamClass.model_name when it defines
        train(job), else the server's trainer app."""
        module = self._app_module(model_name) if model_name else None
        if module is not None and callable(getattr(module, "train", None)):
            return model_name, module
        module = self._app_module(self.trainer_app)
        if module is None or not callable(getattr(module, "train", None)):
            raise JobError(NO_TRAINER, f"no trainer: model_name {model_name!r} is not an app with train(job), and "
                                       f"the trainer app {self.trainer_app!r} is not loaded or defines no train()")
        return self.trainer_app, module

    @staticmethod
    def _train_params(module, raw):
        """The checked ParamClass dict of a TRAIN task for trainer app `module`: the generic checks, its
        TRAIN_NET_MODELS, then its own check_train_params(params) hook when it has one (ValueError: 400)."""
        params = check_train_params(raw, getattr(module, "TRAIN_NET_MODELS", None))
        hook = getattr(module, "check_train_params", None)
        if callable(hook):
            try:
                hook(dict(params))
            except ValueError as exc:
                raise JobError(BAD_PARAMS, str(exc)) from None
        return params

    def _store_for(self, user):
        return self._store_factory().for_user(user)

    def _check_document(self, doc_id, field, kind, required, user):
        """Check a store id field: 400 malformed or wrong kind, 404 missing or not `user`'s to see. The id in
        lowercase, or ""."""
        from serving.store import StoreError, is_valid_id

        doc_id = (doc_id or "").strip()
        if not doc_id:
            if required:
                raise JobError(BAD_PARAMS, f"{field} is required")
            return ""
        if not is_valid_id(doc_id):
            raise JobError(BAD_PARAMS, f"{field} {doc_id!r} is not a 24-hex store id")
        try:
            return self._store_for(user).get(doc_id, kind=kind).id
        except StoreError as exc:
            if exc.code == NOT_FOUND:
                raise JobError(NOT_FOUND, f"{field} {doc_id}: no such {kind} in the store") from None
            raise JobError(exc.code, f"{field}: {exc.message}") from None

    def _own_task(self, key, user):
        """The task `key` when `user` may see it; otherwise JobError 404 worded as for an unknown task."""
        task = self.db.get_task(key)
        if not can_see(task["owner"], user):
            raise JobError(NOT_FOUND, f"unknown {jobdb.task_label(key)}")
        return task

    def _own_template(self, name, user):
        """The template `name` when `user` may see it; otherwise JobError 404 worded as for an unknown one."""
        template = self.db.get_template(name)
        if not can_see(template["owner"], user):
            raise JobError(NOT_FOUND, f"unknown template {name!r}")
        return template

    def _prepare(self, spec, user):
        """Check a start request (dict: task_id, interface_id, task_type "TRAIN"/"TEST", param_request dict,
        json_mongodb_id, json_val_id, trained_model_id, template) and record the task as QUEUED, `user`'s."""
        check_task_ids(spec["task_id"], spec["interface_id"])
        key = jobdb.key_of(spec["task_id"], spec["interface_id"])
        kind = spec.get("task_type")
        if kind not in (jobdb.TRAIN, jobdb.TEST):
            raise JobError(BAD_PARAMS, f"task_type must be TRAIN (0) or TEST (1), got {kind!r}")
        dataset_id = self._check_document(spec.get("json_mongodb_id"), "json_mongodb_id", "dataset", True, user)
        val_id = self._check_document(spec.get("json_val_id"), "json_val_id", "dataset", False, user)
        model_id = self._check_document(spec.get("trained_model_id"), "trained_model_id", "model",
                                        kind == jobdb.TEST, user)
        raw = spec.get("param_request") or {}
        if kind == jobdb.TRAIN:
            app, module = self._trainer_for(str(raw.get("model_name") or ""))
            params = self._train_params(module, raw)
        else:
            app = self._store_for(user).get(model_id).meta.get("app", "")
            module = self._app_module(app)
            if module is None or not callable(getattr(module, "test", None)):
                raise JobError(NO_TRAINER, f"model {model_id} was made by app {app!r}, which is not loaded or "
                                           "defines no test(job)")
            params = {name: raw.get(name) for name in PARAM_FIELDS if raw.get(name) not in (None, "", [], 0)}
        params.update({"task_id": int(key[0]), "interface_id": int(key[1]), "task_type": kind,
                       "json_mongodb_id": dataset_id, "json_val_id": val_id, "trained_model_id": model_id})
        self.db.insert_task(key, kind, app, params, spec.get("template"), owner=user.name)
        log.info("%s: %s queued (app %s)", jobdb.task_label(key), kind, app)
        return key

    async def submit(self, spec):
        """Check and queue a task; JobError for a bad request (nothing is recorded then)."""
        await self._opened()
        key = await asyncio.to_thread(self._prepare, spec, caller())
        self._nudge()
        return key

    async def _task_of_caller(self, key):
        """The task `key` if the caller may see it (else 404 as if unknown)."""
        await self._opened()
        return await asyncio.to_thread(self._own_task, key, caller())

    async def stop(self, key):
        await self._task_of_caller(key)
        state = await asyncio.to_thread(self.db.request, key, jobdb.STOP)
        self._nudge()
        return state

    async def pause(self, key):
        task = await self._task_of_caller(key)
        if task["kind"] != jobdb.TRAIN:
            raise JobError(BAD_PARAMS, f"{jobdb.task_label(key)} is a TEST task: only training tasks pause")
        state = await asyncio.to_thread(self.db.request, key, jobdb.PAUSE)
        self._nudge()
        return state

    async def resume(self, key):
        await self._task_of_caller(key)
        await asyncio.to_thread(self.db.resume, key)
        self._nudge()

    async def delete(self, key):
        """Forget a task at rest: its records, then its folder DATA/jobs/<task>_<interface> (progress log, work
        dir, worker log), so that a new task of the same id starts afresh. Its models stay in the store."""
        task = await self._task_of_caller(key)
        worker = self._workers.get(key)
        if worker is not None and task["state"] not in jobdb.ACTIVE:
            # The worker that ended the task may still be appending its END line: let it exit first, or the
            # line would recreate the folder just removed.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(worker.exited.wait(), KILL_AFTER_TERM_S)
        async with self._folders:
            await asyncio.to_thread(self.db.delete_task, key)
            trash = await asyncio.to_thread(self._detach_task_dir, key)
        if trash is not None:
            await asyncio.to_thread(self._remove_dir, trash, key)

    def _detach_task_dir(self, key):
        """Move a deleted task's folder out of the way (one rename: the id is free at once, whatever the
        removal then does); its new path, or None when there was none or it could not be moved (logged)."""
        folder = task_dir(self.data_dir, key)
        trash = folder.with_name(f".deleted-{folder.name}-{os.getpid()}-{time.time_ns()}")
        try:
            folder.rename(trash)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("%s deleted, but its folder %s could not be removed: %s", jobdb.task_label(key), folder,
                        exc)
            return None
        return trash

    @staticmethod
    def _remove_dir(path, key):
        try:
            shutil.rmtree(path)
        except OSError as exc:
            # The task is deleted either way; what is left lies under a hidden name no task uses.
            log.warning("%s deleted, but its old folder %s could not be removed: %s", jobdb.task_label(key), path,
                        exc)

    # ---- queries --------------------------------------------------------------------------------------------

    async def task(self, key):
        return await self._task_of_caller(key)

    async def tasks(self):
        """The tasks the caller may see."""
        await self._opened()
        return await asyncio.to_thread(self.db.list_tasks, caller())

    def _checked_models(self, key, model_no, user):
        """The models of task `key` once `user` may see it and model number `model_no` (0: all) is one of them:
        JobError 400 for a negative number, 404 beyond the task's models (a uint64 on the wire: checked before
        it reaches SQLite, whose integers are signed 64-bit)."""
        self._own_task(key, user)
        if model_no < 0:
            raise JobError(BAD_PARAMS, f"model_id must be 0 (all models) or a model number, got {model_no}")
        models = self.db.models(key)
        if model_no > len(models):
            raise JobError(NOT_FOUND, f"{jobdb.task_label(key)} has {len(models)} model(s), not model {model_no}")
        return models

    def _train_progress(self, key, model_no, user):
        models = self._checked_models(key, model_no, user)
        return models, self.db.records(key, model_no)

    async def train_progress(self, key, model_no=0):
        """(models, records) of a task; records of model `model_no` only when it is not 0."""
        await self._opened()
        return await asyncio.to_thread(self._train_progress, key, model_no, caller())

    async def test_task(self, key, need_results):
        """A TEST task; with `need_results`, JobError unless it has finished with results."""
        task = await self._task_of_caller(key)
        if task["kind"] != jobdb.TEST:
            raise JobError(BAD_PARAMS, f"{jobdb.task_label(key)} is a training task, not a test task")
        if need_results and not task["result_json_id"]:
            if task["state"] in jobdb.ACTIVE:
                raise JobError(NOT_READY, f"{jobdb.task_label(key)} is {task['state']}: no results yet")
            raise JobError(CONFLICT, f"{jobdb.task_label(key)} ended {task['state']} without results"
                           + (f": {task['error']}" if task["error"] else ""))
        return task

    async def stream_records(self, key, model_no=0):
        """Yield the task's progress rows as they are written, from the first; ends once the task is at rest.
        The task and model number are checked as for train_progress (JobError before any row)."""
        await self._opened()
        user = caller()
        await asyncio.to_thread(self._checked_models, key, model_no, user)
        after = 0
        while True:
            task = await asyncio.to_thread(self._own_task, key, user)
            rows = await asyncio.to_thread(self.db.records, key, model_no, after)
            for row in rows:
                after = row["seq"]
                yield row
            if task["state"] not in jobdb.ACTIVE:
                return
            await asyncio.sleep(self.poll_interval_s)

    # ---- templates ------------------------------------------------------------------------------------------

    def _create_template(self, spec, user):
        name = str(spec.get("name") or "")
        if not 1 <= len(name) <= 64 or not set(name) <= _TEMPLATE_NAME_CHARS:
            raise JobError(BAD_PARAMS, f"template name {name!r}: 1 to 64 letters, digits, '_', '.', '-'")
        source = spec.get("from_task")
        if source:
            key = jobdb.key_of(*source)
            task = self._own_task(key, user)
            if task["kind"] != jobdb.TRAIN or task["state"] not in (jobdb.DONE, jobdb.STOPPED):
                raise JobError(CONFLICT, f"{jobdb.task_label(key)} is a {task['state']} {task['kind']} task: "
                                         "templates are made from finished training tasks")
            models = self.db.models(key)
            params = {name_: task["params"][name_] for name_ in PARAM_FIELDS}
            dataset_id, val_id = task["params"]["json_mongodb_id"], task["params"]["json_val_id"]
            model_id = models[-1]["store_id"] if models else task["params"]["trained_model_id"]
            source_label = f"{key[0]}/{key[1]}"
        else:
            raw = spec.get("param_request") or {}
            _, module = self._trainer_for(str(raw.get("model_name") or ""))
            params = self._train_params(module, raw)
            dataset_id = self._check_document(spec.get("json_mongodb_id"), "json_mongodb_id", "dataset", False,
                                              user)
            val_id = self._check_document(spec.get("json_val_id"), "json_val_id", "dataset", False, user)
            model_id = self._check_document(spec.get("trained_model_id"), "trained_model_id", "model", False,
                                            user)
            source_label = ""
        self.db.insert_template(name, params, dataset_id, val_id, model_id, str(spec.get("description") or ""),
                                source_label, owner=user.name)
        return self.db.get_template(name)

    async def create_template(self, spec):
        """A named training configuration from `spec` (name, description, and either from_task=(task_id,
        interface_id) of a DONE/STOPPED training task, or param_request + json_mongodb_id/json_val_id/
        trained_model_id)."""
        await self._opened()
        return await asyncio.to_thread(self._create_template, spec, caller())

    async def template(self, name):
        await self._opened()
        return await asyncio.to_thread(self._own_template, name, caller())

    async def templates(self):
        """The templates the caller may see."""
        await self._opened()
        return await asyncio.to_thread(self.db.list_templates, caller())

    async def delete_template(self, name):
        await self.template(name)
        await asyncio.to_thread(self.db.delete_template, name)

    async def start_from_template(self, name, task_id, interface_id, overrides=None):
        """Queue a TRAIN task from a template; `overrides` may replace json_mongodb_id / json_val_id /
        trained_model_id."""
        template = await self.template(name)
        spec = {"task_id": task_id, "interface_id": interface_id, "task_type": jobdb.TRAIN,
                "param_request": template["params"], "template": name}
        for field in ("json_mongodb_id", "json_val_id", "trained_model_id"):
            spec[field] = (overrides or {}).get(field) or template[field]
        return await self.submit(spec)

    # ---- serving what was trained ---------------------------------------------------------------------------

    async def export_model(self, model_id, app_name=""):
        """Export snapshot `model_id` as an app into DATA/apps/<name> and (re)load it in this server without a
        restart (serving.jobs.export). Returns {"app", "model_id", "path", "state"}. JobError: 400 malformed id or
        name, or not a model; 404 unknown model (or another user's); 409 the name belongs to an app of the evals
        dir, or to another user's export; 503 the app that trained it cannot export; 500 the export or the load
        failed (a previous version keeps serving).

        An exported app belongs to the user who exported it (recorded in its folder, EXPORTER_FILE): only that user
        or an admin may export over it, as for any record (serving.ownership). A folder without the record
        (exported before it existed) is the anonymous user's."""
        user = caller()
        record = await asyncio.to_thread(self.find_model, model_id, user)
        name = check_app_name(app_name or default_app_name(record.meta))
        apps_dir = exported_apps_dir(self.data_dir)
        if self.registry is not None:
            for other, (folder, package) in self.registry.folders().items():
                mine = other == name and folder.parent == apps_dir.resolve()
                if not mine and (other == name or package == module_name_for(name)):
                    # Not the folder's path: callers need not learn where the server keeps its apps.
                    raise JobError(CONFLICT, f"app name {name!r} is taken by an app of the server's evals dir")
        async with self._exporting:
            # Under the lock: two exports to one name are decided one after the other.
            exporter = await asyncio.to_thread(read_exporter, apps_dir / name)
            if exporter is not None and not can_see(exporter, user):
                # As for task ids and template names: taken, and nothing said of by whom.
                raise JobError(CONFLICT, f"app name {name!r} is taken by another export")
            self._exports += 1
            staging = apps_dir / f".{name}.export-{os.getpid()}-{self._exports}"
            try:
                await export_in_subprocess(self.data_dir, self.evals_dir, record.id, staging, self.app_name)
                await asyncio.to_thread(write_exporter, staging, user.name)
                await asyncio.to_thread(replace_folder, staging, apps_dir / name)
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, True)
            state = None
            if self.registry is not None:
                app = await self.registry.load_app(name)
                state = app.state
        log.info("model %s exported as app %s", record.id, name)
        return {"app": name, "model_id": record.id, "path": str((apps_dir / name).resolve()), "state": state}

    def find_model(self, model_id, user=None):
        """The store record of snapshot `model_id` as `user` (default: the caller) sees it; JobError 400 malformed
        id or not a model, 404 unknown (or another user's). Blocking: call it in a thread (the store opens on
        first use: SQLite and files)."""
        return model_record(self._store_for(user or caller()), (model_id or "").strip())
