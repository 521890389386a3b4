"""Ownership against a real server with tokens: tasks, templates and store documents belong to the user whose
token made them; another user's answers exactly as an unknown one does; admins see and control everything.
Also: a server without tokens is one anonymous user, and databases of the previous schema are migrated."""
import json
import sqlite3

import cv2
import grpc
import numpy as np
import pytest

from conftest import TESTS, RunningServer, wait_until
from serving.jobs import db as jobs_db
from serving.jobs.db import JobDB
from serving.ownership import ANONYMOUS
from serving.auth import User
from serving.client import Client
from serving.proto import mvp_pb2, mvp_pb2_grpc
from serving.proto import store_pb2 as spb
from serving.proto import store_pb2_grpc as spb_grpc
from serving.store import Store, StoreError, put_dataset
from serving.store import db as store_db
from serving.synth.dataset import make_split

ADMIN, BOB, CAROL = "adm-1e2d3c4b5a6978f0e1d2", "bob-0a1b2c3d4e5f60718293", "car-9f8e7d6c5b4a39281706"
TOKENS = f"{ADMIN} alice admin\n{BOB} bob\n{CAROL} carol\n"
TIMEOUT = 10
UNKNOWN_ID = "0" * 24


def _dataset(data_dir, owner, n=6, seed=1):
    images, coco = make_split(n, seed, size=64)
    with Store(data_dir, owner=owner) as store:
        for meta, image in zip(coco["images"], images):
            meta["store_id"] = store.put_image(cv2.imencode(".png", image)[1].tobytes())
        return put_dataset(store, coco)


class Caller:
    """The MVP and store stubs, sending one user's token."""

    def __init__(self, channel, token):
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.format = mvp_pb2_grpc.FormatDataStub(channel)
        self.control = mvp_pb2_grpc.TaskControlStub(channel)
        self.store = spb_grpc.StoreStub(channel)

    def _call(self, method, request):
        return method(request, metadata=self.metadata, timeout=TIMEOUT)

    def start(self, task_id, dataset_id, max_iters=6):
        param = mvp_pb2.ParamClass(model_name="mvp_model", net_model="res101", inital_learning_rate=0.01,
                                   device_num=1, max_num_iters=max_iters, batch_size=2, snap_shot_ivterval=3)
        request = mvp_pb2.Data_task_request(param_request=param, task_id=task_id, interface_id=1, task_type=0,
                                            json_mongodb_id=dataset_id)
        response, call = self.format.task_start_request.with_call(request, metadata=self.metadata,
                                                                  timeout=TIMEOUT)
        return response.resCode, dict(call.trailing_metadata() or ()).get("serving-message", "")

    def ident(self, task_id):
        return mvp_pb2.Data_task_id(task_id=task_id, interface_id=1)

    def query(self, task_id):
        reply = self._call(self.control.task_query, self.ident(task_id))
        return reply.resCode, reply.ErrorMsg, json.loads(reply.json) if reply.json else None

    def stop(self, task_id):
        response, call = self.format.task_stop_request.with_call(self.ident(task_id), metadata=self.metadata,
                                                                 timeout=TIMEOUT)
        return response.resCode, dict(call.trailing_metadata() or ()).get("serving-message", "")

    def template(self, name):
        reply = self._call(self.control.template_query, mvp_pb2.TemplateName(name=name))
        return reply.resCode, reply.ErrorMsg, json.loads(reply.json) if reply.json else None

    def get(self, doc_id):
        try:
            return grpc.StatusCode.OK, self._call(self.store.Get, spb.GetRequest(id=doc_id)).id
        except grpc.RpcError as exc:
            return exc.code(), exc.details()

    def listed(self, kind=""):
        return {doc.id for doc in self._call(self.store.List, spb.ListRequest(kind=kind)).documents}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("owned")
    tokens = data_dir / "tokens.txt"
    tokens.write_text(TOKENS)
    tokens.chmod(0o600)
    bob_data = _dataset(data_dir, "bob")
    carol_data = _dataset(data_dir, "carol", n=4, seed=2)
    anonymous_data = _dataset(data_dir, "")
    server = RunningServer(["--evals", str(TESTS / "apps_train"), "--data-dir", str(data_dir), "--trainer-app",
                            "counter", "--auth-tokens", str(tokens)])
    channel = server.channel()
    callers = {name: Caller(channel, token) for name, token in (("admin", ADMIN), ("bob", BOB), ("carol", CAROL))}
    yield {"server": server, "data_dir": data_dir, "bob_data": bob_data, "carol_data": carol_data,
           "anonymous_data": anonymous_data,
           **callers}
    channel.close()
    server.stop()


def test_another_users_task_answers_as_an_unknown_one(env):
    bob, carol, admin = env["bob"], env["carol"], env["admin"]
    assert bob.start(501, env["bob_data"], max_iters=200) == (0, "")
    assert bob.query(501)[2]["owner"] == "bob"
    unknown = carol.query(999)
    assert unknown[:2] == (404, "unknown task 999/1")
    # Every call on bob's task answers carol exactly as task 999 does, message included.
    assert carol.query(501)[:2] == (404, "unknown task 501/1")
    assert carol.stop(501) == (404, "unknown task 501/1")
    for method in (carol.control.task_pause_request, carol.control.task_resume_request,
                   carol.control.task_delete_request):
        reply = carol._call(method, carol.ident(501))
        assert (reply.resCode, reply.ErrorMsg) == (404, "unknown task 501/1")
    progress = carol._call(carol.format.get_train_progresses, carol.ident(501))
    assert (progress.resCode, progress.ErrorMsg) == (404, "unknown task 501/1")
    with pytest.raises(grpc.RpcError) as streamed:
        list(carol.control.stream_train_progress(carol.ident(501), metadata=carol.metadata, timeout=TIMEOUT))
    assert streamed.value.code() == grpc.StatusCode.NOT_FOUND
    listed = json.loads(carol._call(carol.control.task_query, carol.ident(0)).json)
    assert 501 not in [task["task_id"] for task in listed]
    # The id itself is one namespace: taking it is refused, saying only that it is in use.
    assert carol.start(501, env["carol_data"]) == (409, "task 501/1 already exists: task id already in use")
    # The admin sees it in the list and stops it; bob sees it stopped.
    assert 501 in [t["task_id"] for t in json.loads(admin._call(admin.control.task_query, admin.ident(0)).json)]
    assert admin.stop(501)[0] == 0
    assert wait_until(lambda: bob.query(501)[2]["state"] == "STOPPED", 20), env["server"].output
    models = bob._call(bob.format.get_train_progresses, bob.ident(501)).model_id_lst
    assert models, "a stopped task keeps its last snapshot"
    # Snapshots the worker stored belong to bob.
    assert set(models) <= bob.listed("model") and not set(models) & carol.listed("model")
    assert carol.get(models[-1]) == (grpc.StatusCode.NOT_FOUND, f"no document with id {models[-1]}")


def test_documents_of_others_are_invisible_even_by_reference(env):
    bob, carol, admin = env["bob"], env["carol"], env["admin"]
    doc_id = bob._call(bob.store.Put, spb.PutRequest(kind="json", data=b'{"secret": 1}')).id
    assert bob.get(doc_id) == (grpc.StatusCode.OK, doc_id)
    assert carol.get(doc_id) == (grpc.StatusCode.NOT_FOUND, f"no document with id {doc_id}")
    assert carol.get(UNKNOWN_ID) == (grpc.StatusCode.NOT_FOUND, f"no document with id {UNKNOWN_ID}")
    assert doc_id in bob.listed() and doc_id not in carol.listed() and doc_id in admin.listed()
    # bob's dataset cannot be trained on, or referenced, by carol; its images cannot go into her dataset.
    code, message = carol.start(502, env["bob_data"])
    assert (code, message) == (404, f"json_mongodb_id {env['bob_data']}: no such dataset in the store")
    coco = json.loads(admin._call(admin.store.Get, spb.GetRequest(id=env["bob_data"], with_data=True)).data)
    with pytest.raises(grpc.RpcError) as refused:
        carol._call(carol.store.Put, spb.PutRequest(kind="dataset", data=json.dumps(coco).encode()))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not in the store" in refused.value.details()
    # Documents made without an owner (the local CLI, earlier versions) are the anonymous user's: admins only.
    assert carol.get(env["anonymous_data"])[0] == grpc.StatusCode.NOT_FOUND
    assert admin.get(env["anonymous_data"]) == (grpc.StatusCode.OK, env["anonymous_data"])


def test_templates_are_private_to_their_owner(env):
    bob, carol, admin = env["bob"], env["carol"], env["admin"]
    param = mvp_pb2.ParamClass(model_name="mvp_model", net_model="res101", inital_learning_rate=0.01,
                               device_num=1, max_num_iters=5, batch_size=2, snap_shot_ivterval=0)
    made = bob._call(bob.control.template_create, mvp_pb2.TemplateRequest(
        name="bobs-nightly", param_request=param, json_mongodb_id=env["bob_data"]))
    assert made.resCode == 0, made.ErrorMsg
    assert bob.template("bobs-nightly")[2]["owner"] == "bob"
    assert carol.template("bobs-nightly")[:2] == (404, "unknown template 'bobs-nightly'")
    assert carol.template("no-such")[:2] == (404, "unknown template 'no-such'")
    started = carol._call(carol.control.template_start,
                          mvp_pb2.TemplateStartRequest(name="bobs-nightly", task_id=503, interface_id=1))
    assert (started.resCode, started.ErrorMsg) == (404, "unknown template 'bobs-nightly'")
    deleted = carol._call(carol.control.template_delete, mvp_pb2.TemplateName(name="bobs-nightly"))
    assert (deleted.resCode, deleted.ErrorMsg) == (404, "unknown template 'bobs-nightly'")
    def names(who):
        return [t["name"] for t in json.loads(who._call(who.control.template_query, mvp_pb2.TemplateName()).json)]

    assert "bobs-nightly" in names(bob) and "bobs-nightly" not in names(carol) and "bobs-nightly" in names(admin)
    assert admin._call(admin.control.template_delete, mvp_pb2.TemplateName(name="bobs-nightly")).resCode == 0


def test_an_exported_app_is_replaced_by_its_exporter_or_an_admin_only(env):
    bob, carol, admin = env["bob"], env["carol"], env["admin"]

    def export(who, snapshot, name="shared-app"):
        meta = json.dumps({"app": "counter", "task_id": 7, "iter": 1})
        model_id = who._call(who.store.Put, spb.PutRequest(kind="model", data=snapshot.encode(), meta=meta)).id
        reply = who._call(who.control.model_export, mvp_pb2.ModelExportRequest(model_id=model_id, app_name=name))
        return reply.resCode, reply.ErrorMsg

    def served(token):
        with Client("127.0.0.1", env["server"].port, "shared-app", token=token, timeout=TIMEOUT) as client:
            return client.infer({"i": 1})[0]["snapshot"]

    assert export(bob, "bob-1")[0] == 0 and served(BOB) == "bob-1"
    assert export(bob, "bob-2")[0] == 0 and served(BOB) == "bob-2"  # its exporter replaces it
    # Another user may not swap what bob's callers are served: taken, as a task id or a template name is.
    assert export(carol, "carol") == (409, "app name 'shared-app' is taken by another export")
    assert served(BOB) == "bob-2"
    assert export(admin, "admin")[0] == 0 and served(BOB) == "admin"
    assert export(carol, "carol", "carols-app")[0] == 0  # a name of her own is hers


def test_without_tokens_callers_are_one_anonymous_user(tmp_path):
    bob_data = _dataset(tmp_path, "bob", n=4)
    anonymous_data = _dataset(tmp_path, "", n=4, seed=3)
    server = RunningServer(["--evals", str(TESTS / "apps_train"), "--data-dir", str(tmp_path), "--trainer-app",
                            "counter"])
    try:
        with server.channel() as channel:
            anonymous = Caller(channel, None)
            assert anonymous.get(anonymous_data) == (grpc.StatusCode.OK, anonymous_data)
            # Turning tokens off publishes nobody's records.
            assert anonymous.get(bob_data)[0] == grpc.StatusCode.NOT_FOUND
            assert anonymous.start(601, anonymous_data, max_iters=2) == (0, "")
            assert anonymous.query(601)[2]["owner"] == ""
    finally:
        server.stop()


# ---- migration of databases made before ownership ------------------------------------------------------------------

_STORE_V1 = """
CREATE TABLE documents (id TEXT PRIMARY KEY CHECK (length(id) = 24), kind TEXT NOT NULL, created_at REAL NOT NULL,
    content_type TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}')
    WITHOUT ROWID;
CREATE INDEX documents_by_kind ON documents (kind, id);
CREATE TABLE refs (src TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    dst TEXT NOT NULL REFERENCES documents (id) ON DELETE RESTRICT, PRIMARY KEY (src, dst)) WITHOUT ROWID;
PRAGMA user_version = 1;
"""
_JOBS_V0 = """
CREATE TABLE tasks (task_id TEXT NOT NULL, interface_id TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    requested TEXT, app TEXT NOT NULL, params TEXT NOT NULL, template TEXT, queue_seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0, pid INTEGER, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
    error TEXT NOT NULL DEFAULT '', test_done INTEGER NOT NULL DEFAULT 0, test_total INTEGER NOT NULL DEFAULT 0,
    progress_at REAL, result_json_id TEXT NOT NULL DEFAULT '', result_image_ids TEXT NOT NULL DEFAULT '[]',
    eval_json_id TEXT NOT NULL DEFAULT '', PRIMARY KEY (task_id, interface_id));
CREATE TABLE templates (name TEXT PRIMARY KEY, description TEXT NOT NULL DEFAULT '', params TEXT NOT NULL,
    json_mongodb_id TEXT NOT NULL DEFAULT '', json_val_id TEXT NOT NULL DEFAULT '',
    trained_model_id TEXT NOT NULL DEFAULT '', source_task TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL);
"""


def test_databases_of_the_previous_schema_are_migrated(tmp_path):
    blob = b'{"kept": true}'
    import hashlib

    doc_id = "65f000000000000000000001"
    (tmp_path / "blobs" / doc_id[-2:]).mkdir(parents=True)
    (tmp_path / "blobs" / doc_id[-2:] / doc_id).write_bytes(blob)
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.executescript(_STORE_V1)
        conn.execute("INSERT INTO documents VALUES (?, 'json', 1.0, 'application/json', ?, ?, '{}')",
                     (doc_id, len(blob), hashlib.sha256(blob).hexdigest()))
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        conn.executescript(_JOBS_V0)
        conn.execute("INSERT INTO tasks (task_id, interface_id, kind, state, app, params, queue_seq, created_at) "
                     "VALUES ('7', '1', 'TRAIN', 'DONE', 'counter', '{}', 1, 1.0)")
        conn.execute("INSERT INTO templates (name, params, created_at) VALUES ('old', '{}', 1.0)")

    with Store(tmp_path) as store:
        record = store.get(doc_id)
        assert (record.owner, store.get_json(doc_id)) == ("", {"kept": True})
        assert store.for_user(User("alice", admin=True)).exists(doc_id)
        assert store.for_user(ANONYMOUS).exists(doc_id) and not store.for_user(User("bob")).exists(doc_id)
        assert store.integrity_check(blobs=True) == []
        new_id = store.for_user(User("bob")).put_json({"new": 1})
        assert store.get(new_id).owner == "bob"
    jobs = JobDB(tmp_path)
    try:
        assert jobs.get_task(("7", "1"))["owner"] == "" and jobs.get_template("old")["owner"] == ""
        assert [t["task_id"] for t in jobs.list_tasks(User("bob"))] == []
        assert [t["task_id"] for t in jobs.list_tasks(ANONYMOUS)] == [7]
        assert jobs.integrity_check() == []
    finally:
        jobs.close()
    # Both now carry the current schema version (the store's was 1 before, the jobs' 0).
    for name, version in (("store.sqlite3", store_db.SCHEMA_VERSION), ("jobs.sqlite3", jobs_db.SCHEMA_VERSION)):
        with sqlite3.connect(tmp_path / name) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == version, name
    # Opening again is a no-op; a database of a newer version is refused rather than misread.
    Store(tmp_path).close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="has schema version 99, newer than this version") as refused:
        Store(tmp_path)
    assert refused.value.code == 500


def test_store_views_write_as_and_read_for_their_user(tmp_path):
    with Store(tmp_path) as store:
        bob, carol = store.for_user(User("bob")), store.for_user(User("carol"))
        image = bob.put_image(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
        assert [r.id for r in bob.list()] == [image] and carol.list() == []
        # bob's image answers carol exactly as an id nobody holds does.
        for call in (carol.read_blob, lambda doc_id: carol.put_json({"x": 1}, refs=[doc_id])):
            answers = []
            for doc_id in (image, UNKNOWN_ID):
                with pytest.raises(StoreError) as refused:
                    call(doc_id)
                answers.append((refused.value.code, refused.value.message.replace(doc_id, "ID")))
            assert answers[0] == answers[1] and answers[0][0] == 404, answers
        assert answers[0][1] == "document refers to unknown id ID"  # cannot link to what it cannot see
        assert bob.read_blob(image) and [r.id for r in carol.list()] == []
