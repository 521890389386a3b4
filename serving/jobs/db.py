"""The durable records of tasks: `jobs.sqlite3` (WAL) in the server's data folder, beside the store's database.

Why a database of its own: the store's schema belongs to serving.store, and tasks change far more often (a
progress row per interval) than documents do; WAL keeps every committed row across crashes either way. Models,
result documents and rendered images are store documents; these tables hold their ids.

Tables:

    tasks       one row per (task_id, interface_id): kind TRAIN/TEST, state, the stop/pause request the worker
                polls, the app that runs it, its parameters (JSON), attempt (how many times a worker was
                started; a worker only writes while its attempt is the task's), error, test progress, result ids
    records     one row per TrainRecord (progress point), oldest first
    models      one row per saved snapshot: model number (1-based, the seed's model_id), store id, iteration
    templates   named training configurations (seed 004's templates)

Task ids are uint64 in the proto, beyond SQLite's signed INTEGER: they are kept as decimal TEXT.

Tasks and templates have an `owner`, the user that made them ("" = the anonymous user; serving.ownership). The
database does not filter by it: serving.jobs.manager checks it on every request.

Schema versions (PRAGMA user_version): 0 had no owner columns; opening such a database adds them (existing rows:
the anonymous user) in the transaction that sets version 1. A newer version's database is refused.

Both the server (serving.jobs.manager) and the workers (serving.jobs.worker) open this database; every write is
one short BEGIN IMMEDIATE transaction, and state changes are compare-and-set (`WHERE state = ...`), so the two
never overwrite each other's decision.
"""
import json
import sqlite3
import threading
import time
from pathlib import Path

from serving.jobs.codes import CONFLICT, INTERNAL, NOT_FOUND, JobError
from serving.ownership import owner_clause

DB_FILE = "jobs.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

# States of a task. ACTIVE ones hold (or wait for) a worker; the others are at rest.
QUEUED, RUNNING, PAUSED, STOPPED, DONE, FAILED, INTERRUPTED = (
    "QUEUED", "RUNNING", "PAUSED", "STOPPED", "DONE", "FAILED", "INTERRUPTED")
STATES = (QUEUED, RUNNING, PAUSED, STOPPED, DONE, FAILED, INTERRUPTED)
ACTIVE = (QUEUED, RUNNING)
TRAIN, TEST = "TRAIN", "TEST"

# What a running worker is asked to do (tasks.requested); it checkpoints and returns.
STOP, PAUSE, SHUTDOWN = "stop", "pause", "shutdown"
# The state a worker that honoured a request ends in.
STATE_AFTER_REQUEST = {STOP: STOPPED, PAUSE: PAUSED, SHUTDOWN: INTERRUPTED}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id       TEXT NOT NULL,
    interface_id  TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('TRAIN', 'TEST')),
    state         TEXT NOT NULL,
    requested     TEXT,
    app           TEXT NOT NULL,
    params        TEXT NOT NULL,
    template      TEXT,
    queue_seq     INTEGER NOT NULL,
    attempt       INTEGER NOT NULL DEFAULT 0,
    pid           INTEGER,
    created_at    REAL NOT NULL,
    started_at    REAL,
    ended_at      REAL,
    error         TEXT NOT NULL DEFAULT '',
    test_done     INTEGER NOT NULL DEFAULT 0,
    test_total    INTEGER NOT NULL DEFAULT 0,
    progress_at   REAL,
    result_json_id   TEXT NOT NULL DEFAULT '',
    result_image_ids TEXT NOT NULL DEFAULT '[]',
    eval_json_id     TEXT NOT NULL DEFAULT '',
    owner            TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (task_id, interface_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, queue_seq);
CREATE TABLE IF NOT EXISTS records (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id       TEXT NOT NULL,
    interface_id  TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    record_time   REAL NOT NULL,
    cur_iter      INTEGER NOT NULL,
    loss          REAL NOT NULL,
    map           REAL NOT NULL,
    lr            REAL NOT NULL,
    max_iter      INTEGER NOT NULL,
    model_no      INTEGER NOT NULL,
    model_name    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_task ON records (task_id, interface_id, seq);
CREATE TABLE IF NOT EXISTS models (
    task_id       TEXT NOT NULL,
    interface_id  TEXT NOT NULL,
    model_no      INTEGER NOT NULL,
    store_id      TEXT NOT NULL,
    iter          INTEGER NOT NULL,
    model_name    TEXT NOT NULL,
    created_at    REAL NOT NULL,
    PRIMARY KEY (task_id, interface_id, model_no)
);
CREATE TABLE IF NOT EXISTS templates (
    name             TEXT PRIMARY KEY,
    description      TEXT NOT NULL DEFAULT '',
    params           TEXT NOT NULL,
    json_mongodb_id  TEXT NOT NULL DEFAULT '',
    json_val_id      TEXT NOT NULL DEFAULT '',
    trained_model_id TEXT NOT NULL DEFAULT '',
    source_task      TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    owner            TEXT NOT NULL DEFAULT ''
)
"""
# Columns added since version 0, by table: added to older databases with their default.
_ADDED_COLUMNS = {"tasks": ("owner TEXT NOT NULL DEFAULT ''",), "templates": ("owner TEXT NOT NULL DEFAULT ''",)}
# After the migrations: they index added columns.
_INDEXES = ("CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, queue_seq)",
            "CREATE INDEX IF NOT EXISTS templates_by_owner ON templates (owner, name)")


def key_of(task_id, interface_id):
    """The primary key of a task as stored: decimal strings."""
    return str(int(task_id)), str(int(interface_id))


def task_label(key):
    return f"task {key[0]}/{key[1]}"


def _task_dict(row):
    task = dict(row)
    task["params"] = json.loads(task["params"])
    task["result_image_ids"] = json.loads(task["result_image_ids"])
    task["task_id"], task["interface_id"] = int(task["task_id"]), int(task["interface_id"])
    return task


class JobDB:
    """jobs.sqlite3 of one data folder. One connection per thread (callers run it off the event loop)."""

    def __init__(self, data_dir):
        self.path = Path(data_dir) / DB_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode = WAL")
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JobError(INTERNAL, f"{self.path} has schema version {version}, newer than this version of "
                                         f"serving ({SCHEMA_VERSION}); upgrade serving")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            for table, columns in _ADDED_COLUMNS.items():
                present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in present:
                        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            for statement in _INDEXES:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
            self._local.conn = conn
        return conn

    def close(self):
        """Close this thread's connection and drop the other threads', which Python closes once their threads
        let go of them: closing one from here while its thread runs a statement on it crashes the process (see
        serving.store.db.Store.close)."""
        own = getattr(self._local, "conn", None)
        self._local = threading.local()
        if own is not None:
            own.close()

    class _Transaction:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
            return False

    def _write(self):
        """A write transaction: BEGIN IMMEDIATE takes the lock up front, so concurrent writers wait instead of
        failing to upgrade a read lock."""
        return self._Transaction(self._conn())

    def integrity_check(self):
        rows = [row[0] for row in self._conn().execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    # ---- tasks ----------------------------------------------------------------------------------------------

    def insert_task(self, key, kind, app, params, template=None, owner=""):
        """A new QUEUED task of `owner`; JobError 409 when (task_id, interface_id) is taken (by anyone)."""
        now = time.time()
        try:
            with self._write() as conn:
                seq = conn.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM tasks").fetchone()[0]
                conn.execute("INSERT INTO tasks (task_id, interface_id, kind, state, app, params, template, "
                             "queue_seq, created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (*key, kind, QUEUED, app, json.dumps(params), template, seq, now, owner))
        except sqlite3.IntegrityError:
            raise JobError(CONFLICT, f"{task_label(key)} already exists: task id already in use") from None

    def get_task(self, key):
        """The task as a dict; JobError 404 when unknown."""
        row = self._conn().execute("SELECT * FROM tasks WHERE task_id = ? AND interface_id = ?", key).fetchone()
        if row is None:
            raise JobError(NOT_FOUND, f"unknown {task_label(key)}")
        return _task_dict(row)

    def list_tasks(self, viewer=None):
        """Tasks `viewer` may see (None: all), in queue order."""
        visible, params = owner_clause(viewer)
        return [_task_dict(row) for row in self._conn().execute(
            f"SELECT * FROM tasks WHERE {visible} ORDER BY queue_seq", params)]

    def delete_task(self, key):
        """Forget a task at rest with its records (its models stay in the store); 409 while it is active."""
        with self._write() as conn:
            row = conn.execute("SELECT state FROM tasks WHERE task_id = ? AND interface_id = ?", key).fetchone()
            if row is None:
                raise JobError(NOT_FOUND, f"unknown {task_label(key)}")
            if row["state"] in ACTIVE:
                raise JobError(CONFLICT, f"{task_label(key)} is {row['state']}: stop it before deleting it")
            for table in ("tasks", "records", "models"):
                conn.execute(f"DELETE FROM {table} WHERE task_id = ? AND interface_id = ?", key)

    def queued(self):
        """Keys of QUEUED tasks, first come first."""
        rows = self._conn().execute("SELECT task_id, interface_id FROM tasks WHERE state = ? ORDER BY queue_seq",
                                    (QUEUED,))
        return [(row[0], row[1]) for row in rows]

    def running(self):
        """{key: (attempt, pid, requested)} of RUNNING tasks."""
        rows = self._conn().execute("SELECT task_id, interface_id, attempt, pid, requested FROM tasks "
                                    "WHERE state = ?", (RUNNING,))
        return {(row[0], row[1]): (row[2], row[3], row[4]) for row in rows}

    def mark_running(self, key):
        """QUEUED -> RUNNING with a new attempt number; that number, or None when the task left the queue."""
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE tasks SET state = ?, attempt = attempt + 1, requested = NULL, pid = NULL, started_at = ?, "
                "ended_at = NULL, error = '' WHERE task_id = ? AND interface_id = ? AND state = ?",
                (RUNNING, time.time(), *key, QUEUED)).rowcount
            if not updated:
                return None
            return conn.execute("SELECT attempt FROM tasks WHERE task_id = ? AND interface_id = ?",
                                key).fetchone()[0]

    def set_pid(self, key, attempt, pid):
        with self._write() as conn:
            conn.execute("UPDATE tasks SET pid = ? WHERE task_id = ? AND interface_id = ? AND attempt = ?",
                         (pid, *key, attempt))

    def request(self, key, what):
        """Ask a task to stop or pause. A RUNNING task gets the request flag its worker polls (the state changes
        when the worker ends); a task without a worker changes state at once. The task's state after the call.
        JobError 409 when the task is at rest in a state the request does not apply to, and for a pause of a
        running task asked to stop (the stop stands)."""
        with self._write() as conn:
            row = conn.execute("SELECT state, kind, requested FROM tasks WHERE task_id = ? AND interface_id = ?",
                               key).fetchone()
            if row is None:
                raise JobError(NOT_FOUND, f"unknown {task_label(key)}")
            state = row["state"]
            if state == RUNNING and what == PAUSE and row["requested"] == STOP:
                # An accepted stop is final: a pause would turn it into a resumable PAUSED. (A stop after a pause
                # does replace it: stopping is what the later caller wants and nothing resumable is lost.)
                raise JobError(CONFLICT, f"{task_label(key)} is being stopped (a stop was requested): cannot pause "
                                         "it")
            if state == RUNNING:
                # A shutdown does not replace a stop or pause already asked for: the task still ends as asked.
                keep = "COALESCE(requested, ?)" if what == SHUTDOWN else "?"
                conn.execute(f"UPDATE tasks SET requested = {keep} WHERE task_id = ? AND interface_id = ?",
                             (what, *key))
                return state
            if what == STOP and state in (QUEUED, PAUSED, INTERRUPTED):
                new = STOPPED
            elif what == STOP and state == STOPPED:
                return state  # stopping a stopped task is a no-op, not an error
            elif what == PAUSE and state == QUEUED:
                new = PAUSED
            else:
                raise JobError(CONFLICT, f"{task_label(key)} is {state}: cannot {what} it")
            conn.execute("UPDATE tasks SET state = ?, ended_at = ? WHERE task_id = ? AND interface_id = ?",
                         (new, time.time(), *key))
            return new

    def resume(self, key):
        """PAUSED or INTERRUPTED -> QUEUED (at the end of the queue); 409 from any other state."""
        with self._write() as conn:
            row = conn.execute("SELECT state FROM tasks WHERE task_id = ? AND interface_id = ?", key).fetchone()
            if row is None:
                raise JobError(NOT_FOUND, f"unknown {task_label(key)}")
            if row["state"] not in (PAUSED, INTERRUPTED):
                raise JobError(CONFLICT, f"{task_label(key)} is {row['state']}: only PAUSED or INTERRUPTED "
                                         "tasks resume")
            seq = conn.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM tasks").fetchone()[0]
            conn.execute("UPDATE tasks SET state = ?, requested = NULL, queue_seq = ?, error = '' "
                         "WHERE task_id = ? AND interface_id = ?", (QUEUED, seq, *key))

    def finish(self, key, attempt, state, error=""):
        """RUNNING -> `state` for the worker of `attempt`; False when the task is no longer that worker's (a
        newer attempt runs, or the end was already written)."""
        with self._write() as conn:
            return bool(conn.execute(
                "UPDATE tasks SET state = ?, error = ?, ended_at = ?, pid = NULL WHERE task_id = ? AND "
                "interface_id = ? AND attempt = ? AND state = ?",
                (state, error, time.time(), *key, attempt, RUNNING)).rowcount)

    def recover(self):
        """At start-up of the job owner: tasks left RUNNING by a previous server become INTERRUPTED (resumable
        from their last snapshot); QUEUED ones stay queued. The keys interrupted."""
        with self._write() as conn:
            keys = [(row[0], row[1]) for row in conn.execute(
                "SELECT task_id, interface_id FROM tasks WHERE state = ?", (RUNNING,))]
            conn.execute("UPDATE tasks SET state = ?, error = ?, ended_at = ?, pid = NULL WHERE state = ?",
                         (INTERRUPTED, "the server stopped while the task ran; resume continues from the last "
                                       "snapshot", time.time(), RUNNING))
        return keys

    def requested_of(self, key, attempt):
        """The request pending for the worker of `attempt` (None: carry on); SHUTDOWN once the task is no longer
        that worker's (so a stale worker stops too)."""
        row = self._conn().execute("SELECT state, attempt, requested FROM tasks WHERE task_id = ? AND "
                                   "interface_id = ?", key).fetchone()
        if row is None or row["attempt"] != attempt or row["state"] != RUNNING:
            return SHUTDOWN
        return row["requested"]

    # ---- progress, models, test results ---------------------------------------------------------------------

    def add_record(self, key, attempt, cur_iter, loss, lr, max_iter, map_value):
        with self._write() as conn:
            latest = conn.execute("SELECT model_no, model_name FROM models WHERE task_id = ? AND interface_id = ? "
                                  "ORDER BY model_no DESC LIMIT 1", key).fetchone()
            model_no, model_name = (latest[0], latest[1]) if latest else (0, "")
            conn.execute("INSERT INTO records (task_id, interface_id, attempt, record_time, cur_iter, loss, map, "
                         "lr, max_iter, model_no, model_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (*key, attempt, time.time(), int(cur_iter), float(loss), float(map_value), float(lr),
                          int(max_iter), model_no, model_name))

    def add_model(self, key, attempt, store_id, cur_iter, model_name):
        """Append a snapshot to the task's models; its 1-based number. JobError 409 when the worker of
        `attempt` no longer owns the task."""
        with self._write() as conn:
            row = conn.execute("SELECT attempt FROM tasks WHERE task_id = ? AND interface_id = ?", key).fetchone()
            if row is None or row[0] != attempt:
                raise JobError(CONFLICT, f"{task_label(key)} is no longer run by attempt {attempt}")
            number = conn.execute("SELECT COALESCE(MAX(model_no), 0) + 1 FROM models WHERE task_id = ? AND "
                                  "interface_id = ?", key).fetchone()[0]
            conn.execute("INSERT INTO models (task_id, interface_id, model_no, store_id, iter, model_name, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (*key, number, store_id, int(cur_iter), model_name, time.time()))
            return number

    def models(self, key):
        rows = self._conn().execute("SELECT model_no, store_id, iter, model_name, created_at FROM models WHERE "
                                    "task_id = ? AND interface_id = ? ORDER BY model_no", key)
        return [dict(row) for row in rows]

    def records(self, key, model_no=0, after_seq=0):
        """Progress rows of a task, oldest first; only those of model `model_no` when it is not 0; only those
        after `after_seq` (for streaming)."""
        query = "SELECT * FROM records WHERE task_id = ? AND interface_id = ? AND seq > ?"
        params = [*key, after_seq]
        if model_no:
            query += " AND model_no = ?"
            params.append(model_no)
        return [dict(row) for row in self._conn().execute(query + " ORDER BY seq", params)]

    def set_test_progress(self, key, attempt, done, total):
        with self._write() as conn:
            conn.execute("UPDATE tasks SET test_done = ?, test_total = ?, progress_at = ? WHERE task_id = ? AND "
                         "interface_id = ? AND attempt = ?", (int(done), int(total), time.time(), *key, attempt))

    def set_test_results(self, key, attempt, result_json_id, image_ids, eval_json_id):
        with self._write() as conn:
            conn.execute("UPDATE tasks SET result_json_id = ?, result_image_ids = ?, eval_json_id = ? "
                         "WHERE task_id = ? AND interface_id = ? AND attempt = ?",
                         (result_json_id, json.dumps(list(image_ids)), eval_json_id, *key, attempt))

    # ---- templates ------------------------------------------------------------------------------------------

    def insert_template(self, name, params, json_mongodb_id="", json_val_id="", trained_model_id="",
                        description="", source_task="", owner=""):
        try:
            with self._write() as conn:
                conn.execute("INSERT INTO templates (name, description, params, json_mongodb_id, json_val_id, "
                             "trained_model_id, source_task, created_at, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (name, description, json.dumps(params), json_mongodb_id, json_val_id,
                              trained_model_id, source_task, time.time(), owner))
        except sqlite3.IntegrityError:
            raise JobError(CONFLICT, f"template {name!r} already exists") from None

    def get_template(self, name):
        row = self._conn().execute("SELECT * FROM templates WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise JobError(NOT_FOUND, f"unknown template {name!r}")
        template = dict(row)
        template["params"] = json.loads(template["params"])
        return template

    def list_templates(self, viewer=None):
        """Templates `viewer` may see (None: all), by name."""
        visible, params = owner_clause(viewer)
        names = [row[0] for row in self._conn().execute(
            f"SELECT name FROM templates WHERE {visible} ORDER BY name", params)]
        return [self.get_template(name) for name in names]

    def delete_template(self, name):
        with self._write() as conn:
            if not conn.execute("DELETE FROM templates WHERE name = ?", (name,)).rowcount:
                raise JobError(NOT_FOUND, f"unknown template {name!r}")


__all__ = ["ACTIVE", "DONE", "FAILED", "INTERNAL", "INTERRUPTED", "JobDB", "PAUSE", "PAUSED", "QUEUED", "RUNNING",
           "SHUTDOWN", "STATES", "STATE_AFTER_REQUEST", "STOP", "STOPPED", "TEST", "TRAIN", "key_of", "task_label"]
