"""The embedded document store: one SQLite database (WAL) plus one file per document under a data folder.

Layout of `data_dir` (shared by the server and the CLI, each process opening its own `Store`):

    store.sqlite3               the index: one row per document (+ -wal/-shm files while open)
    blobs/<id[-2:]>/<id>        the bytes of each document (image file, JSON text, model file, ...)

Blobs are fanned out by the LAST two hex digits of the id (the low byte of its counter), not the first two:
the first two are the top byte of the timestamp, the same for months, which would put every blob in one folder.

Every document has a blob; its row holds the kind ("image", "json", "dataset", "result", "model", ...), the
creation time, a content type, size and SHA-256 of the blob, and a small JSON object of metadata (an image's
width/height/format, a dataset's counts, ...). Rows may reference other rows (a dataset its images): the
`refs` table, enforced with foreign keys.

Writes are atomic. The blob is written to a temporary file, fsynced and renamed into place BEFORE its row is
committed, so a committed row always has its blob; when the insert fails, the blob is removed. A crash between
rename and commit leaves at most an orphan blob (no row points at it), which `Store.gc` removes.
`Store.transaction()` groups several writes: all their rows are committed together or none is.

gc against writes in progress. Between its rename and its commit a blob has no row, exactly like a crash's
orphan, and a transaction (an import of thousands of images) can hold such blobs for a long time; `min_age_s`
spares young files, but only a lock makes it safe. `Store.gc` decides and unlinks under the database's write
lock (BEGIN IMMEDIATE, one blob folder at a time so writers wait briefly), and `_commit`, under the same lock,
checks that every blob of its batch is still in place before it inserts a row. The two cannot interleave: a gc
that ran before the commit and took a pending blob makes the commit fail (StoreError 503, nothing committed,
the batch's remaining blobs removed: the write can simply be retried); a gc after the commit sees the rows.
So no committed row ever points at a blob gc removed.

Listing pages by position: records are ordered by (created_at, id), and `Store.list(after=record.position)`
continues after a record without re-reading what came before; `Store.iter_records` walks everything that way,
one bounded page at a time.

Ownership (serving.ownership): every row has an `owner`, the user it was written for ("" = the anonymous
user). `Store(data_dir)` reads everything and writes as the anonymous user, or as `owner=`; `store.for_user(user)`
is a view of the same store that writes as `user` and sees only what `user` may see: another user's document
answers 404 exactly like a missing one, and lists leave it out. Servers hand callers such views.

Schema versions (PRAGMA user_version): 1 had no owner column; opening a version-1 database adds it (existing
rows: the anonymous user) in the same transaction that sets version 2. A database of a newer version is
refused rather than written with rules this code does not know.
"""
import contextlib
import copy
import datetime
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.errors import BAD_REQUEST, INTERNAL, NOT_FOUND, UNAVAILABLE
from serving.ownership import can_see, owner_clause
from serving.store.errors import StoreError
from serving.store.ids import check_id, is_valid_id, new_id
from serving.store.images import inspect_image

DB_FILE = "store.sqlite3"
BLOBS_DIR = "blobs"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
IMAGE_KIND = "image"
DATASET_KIND = "dataset"
# Kinds with an invariant that the generic put_json/put_blob cannot check: images must decode
# (put_image), datasets must validate (serving.store.datasets.put_dataset).
RESERVED_KINDS = (IMAGE_KIND, DATASET_KIND)
SCHEMA_VERSION = 2
DEFAULT_BUSY_TIMEOUT_S = 30.0
# Rows fetched per query by `iter_records` (and so held in memory at once).
ITER_PAGE_SIZE = 1000

# How a write that lost its files to a concurrent gc (see the module docstring) ends its message. 503: nothing
# is wrong with the write itself, and the same write succeeds when retried.
_GC_TOOK_IT = ("(a `serving store gc` with a --min-age shorter than this write took it): nothing of this write "
               "was stored; retry it")

_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    id           TEXT PRIMARY KEY CHECK (length(id) = 24),
    kind         TEXT NOT NULL,
    created_at   REAL NOT NULL,
    content_type TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    meta         TEXT NOT NULL DEFAULT '{}',
    owner        TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_by_kind ON documents (kind, id);
CREATE TABLE IF NOT EXISTS refs (
    src TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    dst TEXT NOT NULL REFERENCES documents (id) ON DELETE RESTRICT,
    PRIMARY KEY (src, dst)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_dst ON refs (dst);
"""
# After the migrations: the column they add must exist first.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS documents_by_owner ON documents (owner, kind, id)",
    # Listings go in (created_at, id) order and page by position: with these a page costs its own rows, not a
    # sort of every row (200k rows: 0.2 s a page without them). IF NOT EXISTS: an older database gains them
    # when first opened, without a schema version of its own.
    "CREATE INDEX IF NOT EXISTS documents_by_time ON documents (created_at, id)",
    "CREATE INDEX IF NOT EXISTS documents_by_kind_time ON documents (kind, created_at, id)",
)

_COLUMNS = "id, kind, created_at, content_type, size, sha256, meta, owner"


@dataclass(frozen=True)
class Record:
    """What the store knows about one document (not its bytes: `Store.read_blob`)."""

    id: str
    kind: str
    created_at: float
    content_type: str
    size: int
    sha256: str
    meta: dict = field(default_factory=dict)
    owner: str = ""

    @property
    def is_json(self):
        return self.content_type == JSON_CONTENT_TYPE

    @property
    def position(self):
        """Where this record sorts in a listing: pass it as `Store.list(after=...)` to get the records after it."""
        return (self.created_at, self.id)

    def to_dict(self):
        """A JSON-able dict, with the creation time also as ISO-8601 UTC for people."""
        created = datetime.datetime.fromtimestamp(self.created_at, datetime.timezone.utc)
        return {"id": self.id, "kind": self.kind, "created_at": self.created_at,
                "created": created.isoformat(timespec="seconds"), "content_type": self.content_type,
                "size": self.size, "sha256": self.sha256, "meta": self.meta, "owner": self.owner}


@dataclass
class _PendingWrite:
    """A document whose blob is in place and whose row is yet to be committed."""

    row: tuple
    refs: tuple
    blob_path: Path


def _a(kind):
    """`kind` with its indefinite article: "an image", "a model"."""
    return f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"


def _check_kind(kind):
    if not isinstance(kind, str) or not _KIND_PATTERN.fullmatch(kind):
        raise StoreError(BAD_REQUEST, f"bad kind {kind!r}: expected a lowercase name like 'json' or 'result'")
    return kind


def _check_meta(meta, where):
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise StoreError(BAD_REQUEST, f"{where}: meta must be a JSON object, got {type(meta).__name__}")
    return dict(meta)


def _has_surrogate(text):
    return not text.isascii() and any("\ud800" <= char <= "\udfff" for char in text)


def _surrogate_at(value):
    """Which string of `value` holds a lone surrogate: 'the key at ["a"]', 'the string at ["a"][0]' (None when
    none does). Iterative: a value too deep for recursion must still be searched."""
    stack = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _has_surrogate(node):
                return f"the string at {path}" if path else "the string"
        elif isinstance(node, dict):
            for key, child in node.items():
                if isinstance(key, str) and _has_surrogate(key):
                    return f"the key at {path}[{ascii(key)}]"
                stack.append((child, f"{path}[{ascii(key)}]"))
        elif isinstance(node, (list, tuple)):
            stack.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(node))))
    return None


def _json_dumps(value, where):
    """`value` as compact JSON text; StoreError 400 naming the problem when it has no such form."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(BAD_REQUEST, f"{where}: not JSON-serializable: {exc}") from None
    except RecursionError:
        raise StoreError(BAD_REQUEST, f"{where}: nests too deeply to be stored as JSON") from None


def _utf8(text, value, where):
    """The UTF-8 bytes of `value`'s JSON `text`; StoreError 400 when it holds a lone surrogate."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.loads turns the valid JSON escape "\ud800" into a lone UTF-16 surrogate, which no UTF-8 text can
        # hold: neither the blob nor SQLite could store it (this used to escape as a 500).
        char = ascii(exc.object[exc.start:exc.start + 1])
        raise StoreError(BAD_REQUEST, f"{where}: {_surrogate_at(value) or 'a string'} holds {char}, a lone UTF-16 "
                                      "surrogate (a \\uD800-\\uDFFF escape without its pair), which cannot be "
                                      "stored as UTF-8 text") from None


def _to_json_bytes(value, where):
    """`value` as compact UTF-8 JSON; StoreError 400 naming the problem when it has no such form."""
    return _utf8(_json_dumps(value, where), value, where)


def _to_json_text(value, where):
    """`value` as compact JSON text that has a UTF-8 form (SQLite stores text as UTF-8); errors as above."""
    text = _json_dumps(value, where)
    if not text.isascii():  # only non-ASCII text can hold a surrogate: check it, keep the text
        _utf8(text, value, where)
    return text


def check_position(position):
    """A listing position (created_at, id), as Record.position gives it; StoreError 400 when malformed."""
    try:
        created_at, doc_id = position
        if isinstance(created_at, bool) or not math.isfinite(created_at):
            raise ValueError("not a time")
        created_at = float(created_at)
    except (TypeError, ValueError, OverflowError):
        raise StoreError(BAD_REQUEST, f"bad listing position {position!r}: expected (created_at, id)") from None
    return created_at, check_id(doc_id)


def _fsync_dir(path):
    """Make a rename in `path` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """The document store of one data folder. Safe to share between threads (one SQLite connection each)
    and between processes (SQLite locking; WAL lets readers run beside the writer)."""

    def __init__(self, data_dir, busy_timeout_s=DEFAULT_BUSY_TIMEOUT_S, owner=""):
        self.data_dir = Path(data_dir)
        self.owner = str(owner or "")  # whom writes belong to
        self.viewer = None  # whose view reads are limited to (a serving.auth.User); None: everything
        self.db_path = self.data_dir / DB_FILE
        self.blobs_dir = self.data_dir / BLOBS_DIR
        self._busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._closed = False
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(INTERNAL, f"cannot create the data folder {self.data_dir}: {exc}") from None
        self._create_schema()

    # ---- connections --------------------------------------------------------------------------------------

    def _connection(self):
        """This thread's connection, opened on first use."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        if self._closed:
            raise StoreError(INTERNAL, f"the store {self.data_dir} is closed")
        try:
            # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE, which takes
            # the write lock up front instead of failing to upgrade a read lock under contention.
            conn = sqlite3.connect(self.db_path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as exc:
            raise StoreError(INTERNAL, f"cannot open {self.db_path}: {exc}") from None
        self._local.conn = conn
        return conn

    def _create_schema(self):
        conn = self._connection()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(INTERNAL, f"{self.db_path}: SQLite refused WAL mode (got {mode})")
            # Statement by statement inside one transaction (executescript would COMMIT on its own), so that
            # two processes opening a fresh folder at once do not both create the schema half-way.
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(INTERNAL, f"{self.db_path} has schema version {version}, newer than this "
                                               f"version of serving ({SCHEMA_VERSION}); upgrade serving")
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(statement)
                columns = {row[1] for row in conn.execute("PRAGMA table_info(documents)")}
                if "owner" not in columns:  # version 1: every existing document is the anonymous user's
                    conn.execute("ALTER TABLE documents ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
                for statement in _INDEXES:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(INTERNAL, f"cannot set up {self.db_path}: {exc}") from None

    def for_user(self, user):
        """A view of this store for `user` (a serving.auth.User): writes belong to it, reads see only what it
        may see (serving.ownership). It shares this store's connections: close the store, not the view."""
        view = copy.copy(self)
        view.owner, view.viewer = user.name, user
        return view

    def close(self):
        """Close the store: no connection is opened after this. This thread's connection is closed now; the other
        threads' are dropped, and Python closes each once nothing refers to it any more (SQLite connections sit in
        a reference cycle: at the next collection after their thread let go of them). Closing them from here
        would pull a connection out from under a thread still running a statement on it, which SQLite does not
        allow: a server stopping while calls still wrote (--grace 0, or a call outlasting the grace) crashed
        with SIGSEGV closing its store."""
        self._closed = True
        own = getattr(self._local, "conn", None)
        self._local = threading.local()
        if own is not None:
            own.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ---- writing ------------------------------------------------------------------------------------------

    def put_image(self, data, meta=None):
        """Store image bytes as a document of kind "image"; its id. StoreError 400 when they do not decode.
        The record's meta is `meta` plus what decoding found: width, height, channels, format."""
        data = bytes(data)
        facts = inspect_image(data)
        content_type = facts.pop("content_type")
        return self._put(data, IMAGE_KIND, content_type, {**_check_meta(meta, "put_image"), **facts})

    def put_json(self, value, kind="json", meta=None, refs=()):
        """Store a JSON value (object, list, ...) as a document of `kind`; its id.

        `refs`: ids of documents this one points at (checked to exist). Kind "dataset" is refused here: datasets
        go through serving.store.datasets.put_dataset, which validates them.
        """
        self._refuse_reserved(kind, "put_json")
        return self._put_json(value, kind, meta, refs)

    def _put_json(self, value, kind, meta=None, refs=()):
        """put_json without the reserved-kind check, for this package's modules that check the invariant."""
        data = _to_json_bytes(value, "put_json")
        return self._put(data, kind, JSON_CONTENT_TYPE, _check_meta(meta, "put_json"), refs)

    def put_blob(self, data, kind, meta=None, content_type=BINARY_CONTENT_TYPE, refs=()):
        """Store opaque bytes (a model file, ...) as a document of `kind`; its id."""
        self._refuse_reserved(kind, "put_blob")
        return self._put(bytes(data), kind, str(content_type), _check_meta(meta, "put_blob"), refs)

    @staticmethod
    def _refuse_reserved(kind, where):
        if kind in RESERVED_KINDS:
            helper = "put_image" if kind == IMAGE_KIND else "serving.store.datasets.put_dataset"
            raise StoreError(BAD_REQUEST, f"{where}: documents of kind {kind!r} are stored with {helper}")

    def _put(self, data, kind, content_type, meta, refs=()):
        """Write the blob, then commit the row (now, or with the enclosing transaction); the new id.
        For use by this package's modules that check a reserved kind's invariant first."""
        _check_kind(kind)
        refs = tuple(dict.fromkeys(check_id(ref) for ref in refs))
        meta_text = _to_json_text(meta, "meta")
        doc_id = new_id()
        row = (doc_id, kind, time.time(), content_type, len(data), hashlib.sha256(data).hexdigest(), meta_text,
               self.owner)
        blob_path = self._blob_path(doc_id)
        self._write_blob(blob_path, data)
        pending = _PendingWrite(row, refs, blob_path)
        batch = getattr(self._local, "batch", None)
        if batch is not None:
            batch.append(pending)
            return doc_id
        try:
            self._commit([pending])
        except BaseException:
            blob_path.unlink(missing_ok=True)
            raise
        return doc_id

    @contextlib.contextmanager
    def transaction(self):
        """Group the writes of this thread: their rows are committed together when the block ends, or none is
        (and their blobs are removed) when it raises. Ids are returned at once but other readers see the
        documents only after the commit. Nested blocks join the outermost one."""
        if getattr(self._local, "batch", None) is not None:
            yield self
            return
        batch = self._local.batch = []
        try:
            yield self
            self._local.batch = None
            self._commit(batch)
        except BaseException:
            for pending in batch:
                pending.blob_path.unlink(missing_ok=True)
            raise
        finally:
            self._local.batch = None

    def _commit(self, batch):
        """Insert the rows (and refs) of `batch` in one SQLite transaction."""
        if not batch:
            return
        conn = self._connection()
        batch_ids = {pending.row[0] for pending in batch}
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Under the write lock, which gc holds while it decides and unlinks: a blob still in place now
                # stays until the rows are in (see the module docstring).
                lost = [pending.row[0] for pending in batch if not self._blob_in_place(pending)]
                if lost:
                    which = lost[0] + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                    raise StoreError(UNAVAILABLE, f"the blob of {which} vanished before its row was committed "
                                                  f"{_GC_TOOK_IT}")
                for pending in batch:
                    for ref in pending.refs:
                        if ref not in batch_ids and not self._exists(conn, ref, self.viewer):
                            raise StoreError(NOT_FOUND, f"document refers to unknown id {ref}")
                conn.executemany(f"INSERT INTO documents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 [pending.row for pending in batch])
                conn.executemany("INSERT INTO refs (src, dst) VALUES (?, ?)",
                                 [(pending.row[0], ref) for pending in batch for ref in pending.refs])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as exc:
            raise StoreError(BAD_REQUEST, f"store refused the document: {exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(INTERNAL, f"store write failed: {exc}") from None

    @staticmethod
    def _blob_in_place(pending):
        """True when the blob of a pending write is still where it was written, with its size."""
        try:
            return pending.blob_path.stat().st_size == pending.row[4]
        except OSError:
            return False

    @staticmethod
    def _exists(conn, doc_id, viewer=None):
        row = conn.execute("SELECT owner FROM documents WHERE id = ?", (doc_id,)).fetchone()
        return row is not None and can_see(row[0], viewer)

    def _blob_path(self, doc_id):
        return self.blobs_dir / doc_id[-2:] / doc_id

    @staticmethod
    def _write_blob(path, data):
        """Write `data` at `path` atomically and durably: temporary file, fsync, rename, fsync the folder."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(INTERNAL, f"cannot write {path}: {exc}") from None
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            # Only gc removes another's temporary file, and only one older than its --min-age.
            raise StoreError(UNAVAILABLE, f"the temporary file of {path.name} vanished before it was renamed into "
                                          f"place {_GC_TOOK_IT}") from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(INTERNAL, f"cannot write {path}: {exc}") from None
        _fsync_dir(path.parent)

    # ---- reading ------------------------------------------------------------------------------------------

    def get(self, doc_id, kind=None):
        """The Record of `doc_id`: StoreError 400 when the id is malformed or, with `kind`, when the document is
        of another kind ("document <id> is a json, not an image"); 404 when no document has it."""
        doc_id = check_id(doc_id)
        try:
            row = self._connection().execute(f"SELECT {_COLUMNS} FROM documents WHERE id = ?",
                                             (doc_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(INTERNAL, f"store read failed: {exc}") from None
        # Another user's document gets the very answer a missing one gets.
        if row is None or not can_see(row[-1], self.viewer):
            raise StoreError(NOT_FOUND, f"no document with id {doc_id}")
        record = self._record(row)
        if kind is not None and record.kind != kind:
            raise StoreError(BAD_REQUEST, f"document {record.id} is {_a(record.kind)}, not {_a(kind)}")
        return record

    def exists(self, doc_id):
        """True when `doc_id` is a well-formed id of a stored document this store (view) may see."""
        return is_valid_id(doc_id) and self._exists(self._connection(), doc_id.lower(), self.viewer)

    def read_blob(self, doc_id):
        """The bytes of a document (any kind)."""
        record = self.get(doc_id)
        try:
            data = self._blob_path(record.id).read_bytes()
        except OSError as exc:
            raise StoreError(INTERNAL, f"the blob of {record.id} is unreadable: {exc}") from None
        if len(data) != record.size:
            raise StoreError(INTERNAL, f"the blob of {record.id} has {len(data)} bytes, expected {record.size}")
        return data

    def get_json(self, doc_id):
        """The JSON value of a JSON document (kinds json, dataset, result, ...); 400 for an image or blob."""
        record = self.get(doc_id)
        if not record.is_json:
            raise StoreError(BAD_REQUEST, f"document {record.id} is a {record.kind} ({record.content_type}), "
                                          "not JSON")
        try:
            return json.loads(self.read_blob(record.id))
        except ValueError as exc:
            raise StoreError(INTERNAL, f"the JSON of {record.id} is corrupt: {exc}") from None
        except RecursionError:  # stored by code without the checks of today's put
            raise StoreError(INTERNAL, f"the JSON of {record.id} nests too deeply to be read") from None

    def list(self, kind=None, limit=None, newest_first=False, after=None):
        """Records this store (view) may see, oldest first (newest first with `newest_first`), optionally of
        one kind, at most `limit` (None: all of them; negative: StoreError 400).

        `after`: a record's `position` (the last record of the previous page): only the records that come after
        it in this order. Pages that way see neither a record twice nor miss one, however long between calls.
        """
        visible, params = owner_clause(self.viewer)
        query = f"SELECT {_COLUMNS} FROM documents WHERE {visible}"
        params = list(params)
        if kind is not None:
            query += " AND kind = ?"
            params.append(_check_kind(kind))
        if after is not None:
            created_at, after_id = check_position(after)
            query += " AND (created_at, id) < (?, ?)" if newest_first else " AND (created_at, id) > (?, ?)"
            params += [created_at, after_id]
        # created_at first: ids made by different processes in the same second do not sort by creation.
        query += " ORDER BY created_at DESC, id DESC" if newest_first else " ORDER BY created_at, id"
        if limit is not None:
            # SQLite reads a negative LIMIT as "no limit": refuse it rather than answer everything.
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise StoreError(BAD_REQUEST, f"bad limit {limit!r}: expected a count of 0 or more")
            query += " LIMIT ?"
            params.append(limit)
        try:
            rows = self._connection().execute(query, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(INTERNAL, f"store read failed: {exc}") from None
        return [self._record(row) for row in rows]

    def iter_records(self, kind=None, newest_first=False, page_size=ITER_PAGE_SIZE):
        """Every record `list` would return, fetched `page_size` at a time: memory stays bounded however many
        there are, and no read transaction stays open between pages (it would hold back WAL checkpoints)."""
        after = None
        while True:
            page = self.list(kind, limit=page_size, newest_first=newest_first, after=after)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].position

    def references(self, doc_id):
        """The ids that document `doc_id` refers to (a dataset: its images)."""
        doc_id = self.get(doc_id).id
        rows = self._connection().execute("SELECT dst FROM refs WHERE src = ? ORDER BY dst", (doc_id,))
        return [row[0] for row in rows]

    @staticmethod
    def _record(row):
        doc_id, kind, created_at, content_type, size, sha256, meta, owner = row
        return Record(doc_id, kind, created_at, content_type, size, sha256, json.loads(meta), owner)

    # ---- maintenance --------------------------------------------------------------------------------------

    def integrity_check(self, blobs=False):
        """Problems found, as lines; empty when all is well. Runs SQLite's `PRAGMA integrity_check` and
        `foreign_key_check`; with `blobs`, also checks that every row's blob exists with its size and SHA-256."""
        conn = self._connection()
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems == ["ok"]:
            problems = []
        problems += [f"foreign key: {row[0]} row {row[1]} refers to a missing {row[2]}"
                     for row in conn.execute("PRAGMA foreign_key_check")]
        if blobs:
            for record in self.iter_records():
                try:
                    data = self._blob_path(record.id).read_bytes()
                except OSError as exc:
                    problems.append(f"{record.id}: blob unreadable: {exc}")
                    continue
                if hashlib.sha256(data).hexdigest() != record.sha256:
                    problems.append(f"{record.id}: blob does not match its SHA-256")
        return problems

    def gc(self, min_age_s=3600.0):
        """Remove blobs no row points at (left by a crash between blob and commit) and stale temporary files,
        when older than `min_age_s` (younger ones may belong to a write in progress in another process).
        The removed paths.

        Each blob folder is decided and cleaned under the database's write lock, so a commit cannot insert the
        row of a blob between the look-up that finds it orphaned and its removal; a commit whose pending blob
        was removed fails instead of pointing at nothing (module docstring). One folder at a time keeps the
        lock short: writers wait for one folder's work, not the whole store's.
        """
        # A negative age would make files not yet written count as old: a write in progress could lose its blob.
        if (isinstance(min_age_s, bool) or not isinstance(min_age_s, (int, float)) or min_age_s < 0
                or min_age_s != min_age_s):  # (NaN)
            raise StoreError(BAD_REQUEST, f"bad min_age_s {min_age_s!r}: expected seconds, 0 or more")
        removed = []
        cutoff = time.time() - min_age_s  # file ages: modification times are wall-clock times
        conn = self._connection()
        try:
            folders = sorted(path for path in self.blobs_dir.iterdir() if path.is_dir())
        except OSError as exc:
            raise StoreError(INTERNAL, f"cannot list {self.blobs_dir}: {exc}") from None
        for folder in folders:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(INTERNAL, f"gc cannot lock {self.db_path}: {exc}") from None
            try:
                removed += self._gc_folder(conn, folder, cutoff)
            except sqlite3.Error as exc:
                raise StoreError(INTERNAL, f"gc failed: {exc}") from None
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # nothing was written: the transaction only held the lock
        return removed

    def _gc_folder(self, conn, folder, cutoff):
        """Remove the old orphans and temporary files of one blob folder; the caller holds the write lock."""
        removed = []
        try:
            paths = sorted(folder.iterdir())
        except OSError:
            return removed  # removed by someone else meanwhile: nothing to collect
        for path in paths:
            try:
                if path.stat().st_mtime > cutoff:
                    continue
            except OSError:
                continue
            orphan = is_valid_id(path.name) and not self._exists(conn, path.name)
            if orphan or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed
