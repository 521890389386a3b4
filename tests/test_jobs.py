"""MVP tasks end to end: a real `serving serve` subprocess with the fixture trainer app tests/apps_train/counter,
datasets made with serving.synth and stored with the store API, driven with the seed's client code."""
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import cv2
import grpc
import numpy as np
import pytest

from conftest import REPO, TESTS, RunningServer, wait_until
from serving.client import Client
from serving.proto import mvp_pb2, mvp_pb2_grpc
from serving.store import Store, put_dataset
from serving.synth.dataset import make_split

APPS = TESTS / "apps_train"
TIMEOUT = 10


def _make_dataset(data_dir, n, seed):
    """A stored COCO dataset of `n` synthetic images; its id."""
    images, coco = make_split(n, seed, size=64)
    with Store(data_dir) as store:
        for meta, image in zip(coco["images"], images):
            ok, png = cv2.imencode(".png", image)
            meta["store_id"] = store.put_image(png.tobytes())
        return put_dataset(store, coco)


def _start_server(data_dir, *extra):
    return RunningServer(["--evals", str(APPS), "--data-dir", str(data_dir), "--trainer-app", "counter", *extra])


class Mvp:
    """The seed's client: `client = mvp_pb2_grpc.FormatDataStub(channel=conn)`, plus the added TaskControl."""

    def __init__(self, server):
        self.conn = server.channel()
        self.client = mvp_pb2_grpc.FormatDataStub(channel=self.conn)
        self.control = mvp_pb2_grpc.TaskControlStub(channel=self.conn)

    def start(self, task_id, dataset_id, task_type=0, val_id=None, model_id="", **params):
        fields = dict(model_name="mvp_model", dataset_expansion_lst=[0, 1, 2, 3], net_model="res101",
                      model_scope=0, device_type=0, inital_learning_rate=0.01, device_num=1, max_num_iters=20,
                      batch_size=4, snap_shot_ivterval=5)
        fields.update(params)
        param = mvp_pb2.ParamClass(**fields)
        task_request = mvp_pb2.Data_task_request(param_request=param, task_id=task_id, interface_id=1,
                                                 task_type=task_type, json_mongodb_id=dataset_id,
                                                 json_val_id=val_id, trained_model_id=model_id)
        response, call = self.client.task_start_request.with_call(task_request, timeout=TIMEOUT)
        return response.resCode, dict(call.trailing_metadata() or ()).get("serving-message", "")

    def ident(self, task_id, model_id=None):
        return mvp_pb2.Data_task_id(task_id=task_id, interface_id=1, model_id=model_id)

    def task(self, task_id):
        reply = self.control.task_query(self.ident(task_id), timeout=TIMEOUT)
        return json.loads(reply.json) if reply.resCode == 0 else None

    def state(self, task_id):
        task = self.task(task_id)
        return task and task["state"]

    def wait_state(self, task_id, states, timeout=30):
        states = (states,) if isinstance(states, str) else states
        # Also done once the task is at rest in another state: the assertion then shows which.
        wait_until(lambda: self.state(task_id) in (*states, "DONE", "FAILED", "STOPPED"), timeout, interval=0.1)
        return self.state(task_id)

    def progress(self, task_id, model_id=None):
        return self.client.get_train_progresses(self.ident(task_id, model_id), timeout=TIMEOUT)

    def stop(self, task_id):
        return self.client.task_stop_request(self.ident(task_id), timeout=TIMEOUT).resCode


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("jobs-data")
    train_id = _make_dataset(data_dir, 8, seed=1)
    val_id = _make_dataset(data_dir, 4, seed=2)
    server = _start_server(data_dir)
    mvp = Mvp(server)
    yield {"server": server, "mvp": mvp, "data_dir": data_dir, "train": train_id, "val": val_id}
    mvp.conn.close()
    server.stop()


def test_train_task_records_progress_and_snapshots(env):
    mvp = env["mvp"]
    assert mvp.start(101, env["train"], val_id=env["val"]) == (0, "")
    assert mvp.wait_state(101, "DONE") == "DONE", env["server"].output
    progress = mvp.progress(101)
    assert progress.resCode == 0 and progress.ErrorMsg == "OK"
    assert [r.cur_iter_num for r in progress.train_records_lst] == [5, 10, 15, 20]
    assert len(progress.model_id_lst) == 4  # one snapshot per snap_shot_ivterval
    last = progress.train_records_lst[-1]
    assert (last.max_iter_num, last.model_name, last.model_id, last.task_id) == (20, "res101_20.ckpt", 4, 101)
    assert 0 < last.lr <= 0.01 and last.loss >= 0
    with Store(env["data_dir"]) as store:
        record = store.get(progress.model_id_lst[-1])
        assert record.kind == "model" and record.meta["iter"] == 20 and record.meta["app"] == "counter"
    # model_id (1-based model number) selects the records of one snapshot.
    assert [r.cur_iter_num for r in mvp.progress(101, model_id=2).train_records_lst] == [10]
    assert mvp.progress(101, model_id=9).resCode == 404
    lines = [json.loads(line) for line in
             (env["data_dir"] / "jobs" / "101_1" / "progress.jsonl").read_text().splitlines()]
    assert [lines[0]["type"], lines[-1]["type"], lines[-1]["state"]] == ["START", "END", "DONE"]
    assert lines[-1]["model_files"] == list(progress.model_id_lst)
    assert sum(line["type"] == "PROGRESS" for line in lines) == 4
    # The server-streaming progress of a finished task: its records, then the end of the stream.
    streamed = list(mvp.control.stream_train_progress(mvp.ident(101), timeout=TIMEOUT))
    assert [r.cur_iter_num for r in streamed] == [5, 10, 15, 20]
    with pytest.raises(grpc.RpcError) as info:
        list(mvp.control.stream_train_progress(mvp.ident(999), timeout=TIMEOUT))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_get_codes_and_store_nothing(env):
    mvp = env["mvp"]
    before = json.loads(mvp.control.task_query(mvp.ident(0), timeout=TIMEOUT).json)
    assert mvp.start(101, env["train"])[0] == 409  # task id already in use
    absurd = [dict(batch_size=0), dict(max_num_iters=0), dict(inital_learning_rate=-0.1),
              dict(net_model="no-such-net"), dict(snap_shot_ivterval=-1)]
    for params in absurd:
        code, message = mvp.start(102, env["train"], **params)
        assert code == 400 and message, params
    assert mvp.start(102, "0123456789abcdef01234567")[0] == 404  # well-formed, not in the store
    assert mvp.start(102, "not-an-id")[0] == 400
    with Store(env["data_dir"]) as store:
        image_id = store.list(kind="image", limit=1)[0].id
    code, message = mvp.start(102, image_id)
    assert code == 400 and "not a dataset" in message
    assert mvp.start(0, env["train"])[0] == 400  # task_id 0 is "not given"
    assert mvp.start(102, env["train"], task_type=1)[0] == 400  # a TEST task needs trained_model_id
    after = json.loads(mvp.control.task_query(mvp.ident(0), timeout=TIMEOUT).json)
    assert after == before  # nothing half-written
    assert mvp.stop(999) == 404
    assert mvp.progress(999).resCode == 404
    assert mvp.client.test_progress_query(mvp.ident(999), timeout=TIMEOUT).ret_state_code == 404
    assert mvp.client.test_result_query(mvp.ident(101), timeout=TIMEOUT).ret_state_code == 400  # a TRAIN task
    assert mvp.control.task_resume_request(mvp.ident(101), timeout=TIMEOUT).resCode == 409  # DONE
    # A server whose evals dir lacks the built-in OCR app says so, with a code, for an image it has.
    ocr = mvp.client.ocr_task(mvp_pb2.OcrRequestParam(img_mongo_id=image_id), timeout=TIMEOUT)
    assert ocr.res_code == 404 and "mvi_ocr" in ocr.res_msg


def test_stop_within_seconds_keeps_the_last_snapshot(env):
    mvp = env["mvp"]
    assert mvp.start(201, env["train"], max_num_iters=100000, snap_shot_ivterval=10)[0] == 0
    assert wait_until(lambda: len(mvp.progress(201).model_id_lst) >= 1, 30, 0.1)
    asked = time.monotonic()
    assert mvp.stop(201) == 0
    assert mvp.wait_state(201, "STOPPED", timeout=10) == "STOPPED"
    assert time.monotonic() - asked < 5
    progress = mvp.progress(201)
    with Store(env["data_dir"]) as store:
        last_iter = store.get(progress.model_id_lst[-1]).meta["iter"]
    # The snapshot taken on stop covers every recorded iteration.
    assert last_iter >= progress.train_records_lst[-1].cur_iter_num
    assert mvp.stop(201) == 0  # stopping a stopped task is a no-op
    out = subprocess.run([sys.executable, "-m", "serving.cli", "task", "progress", "201", "--interface-id", "1",
                          "--target", env["server"].target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert printed[0]["model_id_lst"] == list(progress.model_id_lst) and len(printed) > 1
    assert mvp.control.task_delete_request(mvp.ident(201), timeout=TIMEOUT).resCode == 0
    assert mvp.task(201) is None and mvp.progress(201).resCode == 404


def test_stop_escalates_to_kill_for_a_trainer_that_ignores_it(env):
    mvp = env["mvp"]
    # model_name names an app with train(): that app trains, not the server's --trainer-app.
    assert mvp.start(251, env["train"], model_name="stubborn", net_model="") == (0, "")
    assert wait_until(lambda: len(mvp.progress(251).model_id_lst) == 1, 30, 0.1)
    asked = time.monotonic()
    assert mvp.stop(251) == 0
    assert mvp.wait_state(251, "STOPPED", timeout=20) == "STOPPED"
    assert time.monotonic() - asked < 10  # 5 s grace, SIGTERM, 2 s, SIGKILL
    task = mvp.task(251)
    assert task["app"] == "stubborn" and "did not stop in time" in task["error"]
    assert len(mvp.progress(251).model_id_lst) == 1  # the snapshot is kept


def test_pause_then_resume_continues_from_the_checkpoint(env):
    mvp = env["mvp"]
    assert mvp.start(301, env["train"], max_num_iters=60, snap_shot_ivterval=10)[0] == 0
    assert wait_until(lambda: len(mvp.progress(301).model_id_lst) >= 1, 30, 0.1)
    reply = mvp.control.task_pause_request(mvp.ident(301), timeout=TIMEOUT)
    assert reply.resCode == 0, reply.ErrorMsg
    assert mvp.wait_state(301, "PAUSED", timeout=10) == "PAUSED"
    paused = mvp.progress(301)
    with Store(env["data_dir"]) as store:
        paused_iter = store.get(paused.model_id_lst[-1]).meta["iter"]
    assert paused_iter < 60
    assert mvp.control.task_resume_request(mvp.ident(301), timeout=TIMEOUT).resCode == 0
    assert mvp.wait_state(301, "DONE") == "DONE"
    done = mvp.progress(301)
    resumed = done.train_records_lst[len(paused.train_records_lst):]
    assert resumed and resumed[0].cur_iter_num > paused_iter  # continued, not restarted
    assert done.train_records_lst[-1].cur_iter_num == 60
    assert list(done.model_id_lst[:len(paused.model_id_lst)]) == list(paused.model_id_lst)
    assert env["mvp"].task(301)["attempt"] == 2


def test_crashing_trainer_fails_and_the_server_keeps_serving(env):
    mvp = env["mvp"]
    assert mvp.start(401, env["train"], net_model="crash", max_num_iters=50)[0] == 0
    assert mvp.wait_state(401, "FAILED") == "FAILED"
    task = mvp.task(401)
    assert "crash requested" in task["error"] and "RuntimeError" in task["error"]
    lines = (env["data_dir"] / "jobs" / "401_1" / "progress.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["state"] == "FAILED" and "crash requested" in json.loads(lines[-1])["error"]
    with Client("127.0.0.1", env["server"].port, "counter", timeout=TIMEOUT) as client:
        result = client.infer([{"body": b"x"}])
    assert result[0]["model"] == "counter"


def test_max_jobs_queues_the_second_task(env):
    mvp = env["mvp"]
    assert mvp.start(501, env["train"], max_num_iters=100000, snap_shot_ivterval=0)[0] == 0
    assert mvp.start(502, env["train"], max_num_iters=100000, snap_shot_ivterval=0)[0] == 0
    assert mvp.wait_state(501, "RUNNING") == "RUNNING"
    assert mvp.control.task_delete_request(mvp.ident(501), timeout=TIMEOUT).resCode == 409  # running
    time.sleep(1.0)  # several scheduler turns: 502 must still wait (max_jobs 1)
    assert mvp.state(502) == "QUEUED"
    assert mvp.stop(501) == 0
    assert mvp.wait_state(502, "RUNNING") == "RUNNING"
    assert mvp.stop(502) == 0
    assert mvp.wait_state(502, "STOPPED") == "STOPPED" and mvp.state(501) == "STOPPED"


def test_templates_round_trip(env):
    mvp = env["mvp"]
    reply = mvp.control.template_create(mvp_pb2.TemplateRequest(name="from-101", from_task_id=101,
                                                                from_interface_id=1), timeout=TIMEOUT)
    assert reply.resCode == 0, reply.ErrorMsg
    template = json.loads(reply.json)
    assert template["params"]["max_num_iters"] == 20 and template["json_mongodb_id"] == env["train"]
    assert template["trained_model_id"] == mvp.progress(101).model_id_lst[-1]  # starts from 101's last model
    duplicate = mvp.control.template_create(mvp_pb2.TemplateRequest(name="from-101", from_task_id=101,
                                                                    from_interface_id=1), timeout=TIMEOUT)
    assert duplicate.resCode == 409
    bad = mvp_pb2.TemplateRequest(name="bad", param_request=mvp_pb2.ParamClass(batch_size=0))
    assert mvp.control.template_create(bad, timeout=TIMEOUT).resCode == 400
    started = mvp.control.template_start(mvp_pb2.TemplateStartRequest(name="from-101", task_id=601,
                                                                      interface_id=1), timeout=TIMEOUT)
    assert started.resCode == 0, started.ErrorMsg
    assert json.loads(started.json)["template"] == "from-101"
    assert mvp.wait_state(601, "DONE") == "DONE"
    out = subprocess.run([sys.executable, "-m", "serving.cli", "template", "ls", "--target",
                          env["server"].target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["name"] for line in out.stdout.splitlines()] == ["from-101"]


def test_test_task_progress_results_and_evaluation(env):
    mvp = env["mvp"]
    model_id = mvp.progress(101).model_id_lst[-1]
    assert mvp.start(701, env["train"], task_type=1, model_id=model_id) == (0, "")
    first = mvp.client.test_progress_query(mvp.ident(701), timeout=TIMEOUT)
    assert first.ret_state_code == 0 and first.end_char == "c"
    early = mvp.client.test_result_query(mvp.ident(701), timeout=TIMEOUT).ret_state_code
    assert early in (0, 425)
    assert mvp.wait_state(701, "DONE") == "DONE", mvp.task(701)
    final = mvp.client.test_progress_query(mvp.ident(701), timeout=TIMEOUT)
    assert (final.end_char, final.img_progress_num, final.img_sum_num) == ("z", 8, 8) and final.cost_time > 0
    result = mvp.client.test_result_query(mvp.ident(701), timeout=TIMEOUT)
    assert result.ret_state_code == 0 and len(result.img_mongodb_ids) == 8
    evaluation = mvp.client.evaluation_result_query(mvp.ident(701), timeout=TIMEOUT)
    assert evaluation.ret_state_code == 0
    with Store(env["data_dir"]) as store:
        doc = store.get_json(result.json_mongodb_id)
        assert len(doc["images"]) == 8 and doc["model_id"] == model_id
        rendered = cv2.imdecode(np.frombuffer(store.read_blob(result.img_mongodb_ids[0]), np.uint8),
                                cv2.IMREAD_COLOR)
        assert rendered.shape == (64, 64, 3)
        scores = store.get_json(evaluation.json_mongodb_id)
    assert scores["mAP_50"] > 0.9 and 0 < scores["mAP"] <= 1  # ground truth boxes at score 0.9
    assert scores["recall"] == 1.0 and {c["name"] for c in scores["per_class"]} >= {"scratch"}


def test_restart_keeps_records_and_interrupts_running_tasks(tmp_path):
    dataset_id = _make_dataset(tmp_path, 6, seed=3)
    server = _start_server(tmp_path)
    try:
        mvp = Mvp(server)
        assert mvp.start(801, dataset_id, max_num_iters=100000, snap_shot_ivterval=10)[0] == 0
        assert wait_until(lambda: len(mvp.progress(801).model_id_lst) >= 1, 30, 0.1)
        before = mvp.progress(801)
        worker_pid = mvp.task(801)["pid"]
        mvp.conn.close()
        server.proc.send_signal(signal.SIGKILL)  # no chance to clean up
        server.proc.wait(10)
    finally:
        server.stop()
    server = _start_server(tmp_path)
    try:
        mvp = Mvp(server)
        task = mvp.task(801)
        assert task["state"] == "INTERRUPTED", task
        after = mvp.progress(801)
        assert len(after.train_records_lst) >= len(before.train_records_lst)
        assert list(after.model_id_lst[:len(before.model_id_lst)]) == list(before.model_id_lst)
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        with Store(tmp_path) as store:
            assert store.integrity_check() == []
        # The orphaned worker noticed its server was gone and ended by itself.
        assert worker_pid and wait_until(lambda: not _alive(worker_pid), 10)
        checkpoint_iter = max(r.cur_iter_num for r in mvp.progress(801).train_records_lst)
        assert mvp.control.task_resume_request(mvp.ident(801), timeout=TIMEOUT).resCode == 0
        assert wait_until(lambda: mvp.progress(801).train_records_lst[-1].cur_iter_num > checkpoint_iter, 30)
        mvp.conn.close()
    finally:
        assert server.stop() == 0  # SIGTERM: graceful, the running task is checkpointed and interrupted
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        assert conn.execute("SELECT state FROM tasks WHERE task_id = '801'").fetchone()[0] == "INTERRUPTED"


def test_resume_while_the_paused_worker_exits_keeps_max_jobs(tmp_path):
    dataset_id = _make_dataset(tmp_path, 6, seed=4)
    server = _start_server(tmp_path, "--max-jobs", "2")
    try:
        mvp = Mvp(server)
        endless = dict(max_num_iters=100000, snap_shot_ivterval=10)
        # net_model "linger": the worker process lives on for 1.5 s after it has written the task's end.
        assert mvp.start(901, dataset_id, net_model="linger", **endless) == (0, "")
        assert wait_until(lambda: len(mvp.progress(901).model_id_lst) >= 1, 30, 0.05)
        first_pid = mvp.task(901)["pid"]
        assert mvp.control.task_pause_request(mvp.ident(901), timeout=TIMEOUT).resCode == 0
        assert wait_until(lambda: mvp.state(901) == "PAUSED", 10, 0.01)
        assert _alive(first_pid)  # the race's window: attempt 1's process is still exiting
        assert mvp.control.task_resume_request(mvp.ident(901), timeout=TIMEOUT).resCode == 0
        assert mvp.start(902, dataset_id, **endless)[0] == 0
        assert mvp.start(903, dataset_id, **endless)[0] == 0
        seen = []
        deadline = time.monotonic() + 4  # past the linger: attempt 1 has exited and the scheduler has acted
        while time.monotonic() < deadline:
            states = {task_id: mvp.state(task_id) for task_id in (901, 902, 903)}
            if states[901] == "RUNNING":
                assert not _alive(first_pid), "attempt 2 runs beside attempt 1's process"
            seen.append(states)
            time.sleep(0.1)
        assert max(list(states.values()).count("RUNNING") for states in seen) <= 2, seen
        # Attempt 2 started once attempt 1 had exited; 903 waits for a slot (--max-jobs 2).
        assert seen[-1] == {901: "RUNNING", 902: "RUNNING", 903: "QUEUED"}, seen[-1]
        assert mvp.task(901)["attempt"] == 2
        assert mvp.stop(902) == 0
        assert mvp.wait_state(903, "RUNNING") == "RUNNING"  # the queue moves on
        assert mvp.stop(901) == 0 and mvp.stop(903) == 0
        # Every task ends: attempt 2 is watched, so its stop is honoured like any other.
        assert all(mvp.wait_state(task_id, "STOPPED", timeout=15) == "STOPPED" for task_id in (901, 902, 903))
        mvp.conn.close()
    finally:
        server.stop()


def test_pause_after_a_stop_is_refused_and_the_stop_stands(env):
    mvp = env["mvp"]
    # stubborn never polls should_stop(): the task stays RUNNING, asked to stop, until the stop escalates.
    assert mvp.start(261, env["train"], model_name="stubborn", net_model="") == (0, "")
    assert wait_until(lambda: len(mvp.progress(261).model_id_lst) == 1, 30, 0.1)
    assert mvp.stop(261) == 0
    reply = mvp.control.task_pause_request(mvp.ident(261), timeout=TIMEOUT)
    assert reply.resCode == 409 and "stop" in reply.ErrorMsg, reply
    assert mvp.state(261) == "RUNNING"  # still ending: the refusal did not come from a finished task
    assert mvp.wait_state(261, "STOPPED", timeout=20) == "STOPPED"
    assert mvp.control.task_resume_request(mvp.ident(261), timeout=TIMEOUT).resCode == 409


def test_stream_train_progress_checks_the_model_number_as_get_train_progresses(env):
    mvp = env["mvp"]
    assert mvp.start(111, env["train"], max_num_iters=10, snap_shot_ivterval=5) == (0, "")
    assert mvp.wait_state(111, "DONE") == "DONE"
    assert len(mvp.progress(111).model_id_lst) == 2
    # 3: past the task's models; 2**63 and up: past SQLite's integers (model_id is a uint64 on the wire).
    for model_id in (3, 2**63, 2**64 - 1):
        unary = mvp.progress(111, model_id=model_id)
        assert unary.resCode == 404, model_id
        with pytest.raises(grpc.RpcError) as info:
            list(mvp.control.stream_train_progress(mvp.ident(111, model_id), timeout=TIMEOUT))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, (model_id, info.value.details())
        assert info.value.details() == unary.ErrorMsg
        assert dict(info.value.trailing_metadata())["serving-code"] == "404"
    streamed = list(mvp.control.stream_train_progress(mvp.ident(111, 2), timeout=TIMEOUT))
    assert [(r.model_id, r.cur_iter_num) for r in streamed] == [(2, 10)]


def test_delete_removes_the_task_folder_so_a_reused_id_starts_afresh(env):
    mvp = env["mvp"]
    jobs_dir = env["data_dir"] / "jobs"
    assert mvp.start(121, env["train"], max_num_iters=10, snap_shot_ivterval=5) == (0, "")
    assert mvp.wait_state(121, "DONE") == "DONE"
    assert (jobs_dir / "121_1" / "progress.jsonl").exists()
    assert mvp.control.task_delete_request(mvp.ident(121), timeout=TIMEOUT).resCode == 0
    assert not (jobs_dir / "121_1").exists()
    assert not [path.name for path in jobs_dir.iterdir() if "121_1" in path.name]  # nothing left renamed
    assert mvp.start(121, env["train"], max_num_iters=5, snap_shot_ivterval=5) == (0, "")
    assert mvp.wait_state(121, "DONE") == "DONE"
    lines = [json.loads(line) for line in (jobs_dir / "121_1" / "progress.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["START", "PROGRESS", "END"]
    assert lines[0]["attempt"] == 1 and mvp.task(121)["attempt"] == 1


def test_task_cli_refuses_bad_ids_and_reports_a_missing_server_without_traceback(env):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=REPO, capture_output=True,
                              text=True, timeout=60)

    target = env["server"].target
    for args in (["task", "show", str(2**64)], ["task", "start", "--task-id", "-1", "--dataset", "x"],
                 ["task", "pause", "5", "--interface-id", "-3"], ["template", "start", "t", "--task-id", "x"]):
        out = cli(*args, "--target", target)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.splitlines()[-1].startswith(f"serving {args[0]} {args[1]}: error: argument"), out.stderr
    # The largest uint64 is an id like any other: the server answers it.
    out = cli("task", "show", str(2**64 - 1), "--target", target)
    assert out.returncode == 1 and out.stderr.startswith("404: unknown task"), out.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: a connection to it is refused
        out = cli("task", "ls", "--target", f"127.0.0.1:{sock.getsockname()[1]}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("503: ") and out.stderr.rstrip().endswith("(UNAVAILABLE)"), out.stderr


def _alive(pid):
    """True while process `pid` runs (a zombie nobody reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_stopping_server_starts_no_queued_task_with_workers(tmp_path):
    # Two serving processes share the scheduler (one owns it at a time). When both stop, the one that does not
    # run the task must not take over the scheduler while its own calls finish, and start the queued task only to
    # interrupt it: a task that never ran stays QUEUED for the next start.
    import threading

    import psutil

    from serving.jobs.db import JobDB

    dataset_id = _make_dataset(tmp_path, 6, seed=5)
    JobDB(tmp_path).close()  # as after a first run: both workers open the jobs at start, both schedule
    server = _start_server(tmp_path, "--workers", "2", "--max-jobs", "1")
    slow = None
    try:
        assert wait_until(lambda: server.output.count("serving on") >= 2, 30), server.output
        mvp = Mvp(server)
        assert mvp.start(71, dataset_id, max_num_iters=100000)[0] == 0
        assert mvp.start(72, dataset_id, max_num_iters=100000)[0] == 0
        assert mvp.wait_state(71, "RUNNING") == "RUNNING" and mvp.state(72) == "QUEUED"
        owner = psutil.Process(mvp.task(71)["pid"]).ppid()  # the serving process that runs the task
        mvp.conn.close()
        host, port = server.target.split(":")
        for _ in range(64):  # a new connection each time: the kernel spreads connections over the workers
            other = Client(host, int(port), "counter", timeout=TIMEOUT)
            other_pid = other.infer({"i": 1})[0]["pid"]
            if other_pid != owner:
                break
            other.close()
        else:
            raise AssertionError("no connection reached the other worker")
        # A slow call on the other worker: it stays up after the owner has gone, its scheduler free to take over.
        slow_result = {}
        slow = threading.Thread(target=lambda: slow_result.setdefault(
            "result", other.infer({"i": 1}, params={"sleep_s": 3})))
        slow.start()
        time.sleep(0.5)
    finally:
        assert server.stop() == 0
        if slow is not None:
            slow.join(30)
            other.close()
    # The other worker did stay up past the owner's exit: it finished the slow call it had taken.
    assert slow_result["result"] == [{"model": "counter", "pid": other_pid}], slow_result
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
        states = dict(conn.execute("SELECT task_id, state FROM tasks"))
    assert states == {"71": "INTERRUPTED", "72": "QUEUED"}, states
