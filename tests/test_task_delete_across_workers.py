"""A training task deleted through one serving process while its training worker, run by the other (`--workers 2`),
is still exiting: the owner finds the task gone when it reaps the worker, which is not an error.

Deterministic through the fixture trainer's net_model "linger" (tests/apps_train/counter): its worker process lives
on for 1.5 s after it has written the task's end, and the delete goes, within that window, over a connection the
test has seen reach the serving process that does not run the task (a connection stays with one process)."""
import json
import sqlite3
import time

import grpc
import psutil

from conftest import TESTS, RunningServer, wait_until
from serving import codec
from serving.proto import inference_pb2_grpc, mvp_pb2, mvp_pb2_grpc
from test_jobs import _make_dataset  # noqa: E402  (one stored synthetic dataset, as test_jobs makes it)

TIMEOUT = 10
TASK = 931


def _serving_pid(channel):
    """The pid of the serving process this channel's connection reaches (the counter app answers it)."""
    request = codec.instances_to_request("counter", "inference", [{"i": 1}])
    [result] = inference_pb2_grpc.InferenceStub(channel).Infer(request, timeout=TIMEOUT).results
    return codec.result_to_dict(result)["pid"]


def _ident(task_id=TASK):
    return mvp_pb2.Data_task_id(task_id=task_id, interface_id=1)


def _state(channel, task_id=TASK):
    reply = mvp_pb2_grpc.TaskControlStub(channel).task_query(_ident(task_id), timeout=TIMEOUT)
    return json.loads(reply.json) if reply.resCode == 0 else reply.resCode


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_task_deleted_through_the_other_worker_while_its_worker_exits_is_no_error(tmp_path):
    dataset_id = _make_dataset(tmp_path, 6, seed=7)
    server = RunningServer(["--evals", str(TESTS / "apps_train"), "--data-dir", str(tmp_path), "--trainer-app",
                            "counter", "--workers", "2"])
    channels = []
    try:
        assert wait_until(lambda: server.output.count("serving on") >= 2, 30), server.output
        first = server.channel()
        channels.append(first)
        param = mvp_pb2.ParamClass(model_name="mvp_model", dataset_expansion_lst=[0], net_model="linger",
                                   model_scope=0, device_type=0, inital_learning_rate=0.01, device_num=1,
                                   max_num_iters=100000, batch_size=4, snap_shot_ivterval=10)
        started = mvp_pb2_grpc.FormatDataStub(first).task_start_request(
            mvp_pb2.Data_task_request(param_request=param, task_id=TASK, interface_id=1, task_type=0,
                                      json_mongodb_id=dataset_id), timeout=TIMEOUT)
        assert started.resCode == 0, started
        assert wait_until(lambda: isinstance(_state(first), dict) and _state(first)["state"] == "RUNNING"
                          and _state(first).get("pid"), 30, 0.05), _state(first)
        trainer = _state(first)["pid"]
        owner = psutil.Process(trainer).ppid()  # the serving process that runs the task

        for _ in range(64):  # a new connection each time: the kernel spreads connections over the processes
            # A subchannel pool of its own: grpc would otherwise reuse one connection for channels alike.
            other = grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(other)
            if _serving_pid(other) != owner:
                break
        else:
            raise AssertionError("no connection reached the other serving process")

        # Stop it; the trainer writes STOPPED, then lingers 1.5 s before its process exits.
        stopped = mvp_pb2_grpc.FormatDataStub(first).task_stop_request(_ident(), timeout=TIMEOUT)
        assert stopped.resCode == 0, stopped
        assert wait_until(lambda: _state(other)["state"] == "STOPPED", 30, 0.02), _state(other)
        deleted = mvp_pb2_grpc.TaskControlStub(other).task_delete_request(_ident(), timeout=TIMEOUT)
        assert deleted.resCode == 0, deleted
        # The race's window: the task's records are gone while its worker, the owner's child, still runs.
        assert _alive(trainer), "the trainer had exited before the delete: the race was not reached"
        assert _serving_pid(other) != owner

        # The owner reaps the worker, finds nothing to record, and says so; no error, no traceback.
        assert wait_until(lambda: "ended after the task was deleted" in server.output or "Traceback" in server.output,
                          15), server.output
        assert "ended after the task was deleted" in server.output, server.output
        assert not _alive(trainer)
        time.sleep(0.3)  # anything the owner would log after the reap
        for bad in ("Traceback", "never retrieved", "JobError", " ERROR "):
            assert bad not in server.output, server.output
        assert _state(first) == 404 and _state(other) == 404
        with sqlite3.connect(tmp_path / "jobs.sqlite3") as conn:
            assert conn.execute("SELECT COUNT(*) FROM tasks WHERE task_id = ?", (str(TASK),)).fetchone() == (0,)
        assert not (tmp_path / "jobs" / f"{TASK}_1").exists()
        assert server.proc.poll() is None and server.output.count("serving on") == 2  # no worker restarted
    finally:
        for channel in channels:
            channel.close()
        assert server.stop() == 0, server.output
