"""The built-in trainer (evals/mvp_detector) end to end on a real server: `serving dataset synth` data in the
store, a TRAIN task through the seed's RPCs, progress, stop, a TEST task with its results and evaluation, then the
snapshot exported and served without a restart, and its detections compared with the trainer's own."""
import json
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, RunningServer, wait_until
from serving.client import Client
from serving.proto import mvp_pb2, mvp_pb2_grpc
from serving.store import Store, put_dataset

TIMEOUT = 30
EXPORT_TIMEOUT = 180
TRAIN = dict(model_name="mvp_model", dataset_expansion_lst=[0, 1, 2, 3], net_model="res18", model_scope=0,
             device_type=0, inital_learning_rate=0.003, device_num=1, max_num_iters=100000, batch_size=4,
             snap_shot_ivterval=4)


def _cli(*args, data_dir):
    done = subprocess.run([sys.executable, "-m", "serving.cli", *map(str, args), "--data-dir", str(data_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvp-detector")
    evals = root / "evals"
    shutil.copytree(REPO / "evals" / "mvp_detector", evals / "mvp_detector")
    data_dir = root / "var"
    splits = json.loads(_cli("dataset", "synth", "--n", 40, "--seed", 5, data_dir=data_dir).splitlines()[-1])
    server = RunningServer(["--evals", str(evals), "--data-dir", str(data_dir)])
    channel = server.channel()
    yield {"server": server, "data_dir": data_dir, "evals": evals, "splits": splits,
           "client": mvp_pb2_grpc.FormatDataStub(channel=channel), "control": mvp_pb2_grpc.TaskControlStub(channel)}
    channel.close()
    server.stop()


def _ident(task_id, model_id=None):
    return mvp_pb2.Data_task_id(task_id=task_id, interface_id=1, model_id=model_id)


def _start(env, task_id, task_type=0, dataset=None, val=None, model_id="", **changes):
    param = mvp_pb2.ParamClass(**{**TRAIN, **changes})
    request = mvp_pb2.Data_task_request(param_request=param, task_id=task_id, interface_id=1, task_type=task_type,
                                        json_mongodb_id=dataset or env["splits"]["train"], json_val_id=val,
                                        trained_model_id=model_id)
    reply, call = env["client"].task_start_request.with_call(request, timeout=TIMEOUT)
    return reply.resCode, dict(call.trailing_metadata() or ()).get("serving-message", "")


def _task(env, task_id):
    return json.loads(env["control"].task_query(_ident(task_id), timeout=TIMEOUT).json)


def _export(env, model_id, name=""):
    reply = env["control"].model_export(mvp_pb2.ModelExportRequest(model_id=model_id, app_name=name),
                                        timeout=EXPORT_TIMEOUT)
    return reply.resCode, reply.ErrorMsg, json.loads(reply.json) if reply.json else None


def test_train_stop_test_evaluate_export_and_serve(env):
    client, splits = env["client"], env["splits"]
    assert _start(env, 11, val=splits["val"]) == (0, "")
    # Progress: one TrainRecord per snapshot, with the validation mAP@.5 of that snapshot.
    assert wait_until(lambda: len(client.get_train_progresses(_ident(11), timeout=TIMEOUT).model_id_lst) >= 2,
                      120, 0.2), (_task(env, 11), env["server"].output[-3000:])
    assert client.task_stop_request(_ident(11), timeout=TIMEOUT).resCode == 0
    assert wait_until(lambda: _task(env, 11)["state"] == "STOPPED", 30, 0.1), _task(env, 11)
    progress = client.get_train_progresses(_ident(11), timeout=TIMEOUT)
    records = list(progress.train_records_lst)
    assert progress.resCode == 0 and len(records) >= 2
    assert [r.cur_iter_num for r in records[:2]] == [4, 8]
    assert all(r.max_iter_num == 100000 and 0 <= r.mAP <= 1 and r.loss > 0 and r.lr > 0 for r in records)
    assert records[0].model_name == "res18_4.ckpt"
    # The stop kept a snapshot of exactly where training was (the last model_id_lst entry).
    model_id = progress.model_id_lst[-1]
    with Store(env["data_dir"]) as store:
        meta = store.get(model_id).meta
    assert meta["app"] == "mvp_detector" and meta["iter"] >= records[-1].cur_iter_num

    # TEST on the held-out split: progress to 'z', a result JSON, rendered images, a pycocotools evaluation.
    assert _start(env, 12, task_type=1, dataset=splits["test"], model_id=model_id) == (0, "")
    assert wait_until(lambda: client.test_progress_query(_ident(12), timeout=TIMEOUT).end_char == "z", 120, 0.2)
    test_progress = client.test_progress_query(_ident(12), timeout=TIMEOUT)
    assert test_progress.ret_state_code == 0, (test_progress.ErrorMsg, _task(env, 12))
    assert test_progress.img_progress_num == test_progress.img_sum_num > 0
    result = client.test_result_query(_ident(12), timeout=TIMEOUT)
    evaluation = client.evaluation_result_query(_ident(12), timeout=TIMEOUT)
    assert result.ret_state_code == 0 and evaluation.ret_state_code == 0
    assert len(result.img_mongodb_ids) == test_progress.img_sum_num
    with Store(env["data_dir"]) as store:
        results = store.get_json(result.json_mongodb_id)
        scores = store.get_json(evaluation.json_mongodb_id)
        first = results["images"][0]
        body = store.read_blob(first["store_id"])
    assert 0 <= scores["mAP_50"] <= 1 and {c["name"] for c in scores["per_class"]} == {"scratch", "spot", "crack",
                                                                                        "pit"}

    # Export: served by the running server under the default name, without a restart.
    code, message, exported = _export(env, model_id)
    assert code == 0, message
    assert exported["app"] == f"res18_11_{meta['iter']}" and exported["state"] == "READY"
    with Client("127.0.0.1", env["server"].port, exported["app"], timeout=TIMEOUT) as app:
        served = app.infer({"body": body}, params={"score_threshold": 0.01})[0]
    assert "error" not in served, served
    _assert_same_detections(first["detections"], served["detections"])
    env["exported"] = (exported["app"], body, served)


def test_an_exported_app_is_served_after_a_restart(env):
    """DATA/apps is served beside the evals dir: a new server on the same data folder serves the export."""
    if "exported" not in env:
        pytest.skip("the end-to-end test did not export an app")
    name, body, before = env["exported"]
    server = RunningServer(["--evals", str(env["evals"]), "--data-dir", str(env["data_dir"])])
    try:
        with Client("127.0.0.1", server.port, name, timeout=TIMEOUT) as app:
            again = app.infer({"body": body}, params={"score_threshold": 0.01})[0]
    finally:
        server.stop()
    assert again == before


def _assert_same_detections(trainer, served):
    """The trainer's best detections (COCO, category ids) are among the served ones (class names), with the
    same score, up to float differences between torch and ONNX Runtime, and (all but one) the same box: two
    neighbouring heatmap cells that tie to the 7th digit may give the other runtime the other cell as the peak."""
    names = {1: "scratch", 2: "spot", 3: "crack", 4: "pit"}
    top = sorted(trainer, key=lambda d: -d["score"])[:10]
    assert top, "the trainer found nothing to compare"
    same_box = 0
    for det in top:
        x, y, w, h = det["bbox"]
        match = [s for s in served if s["class"] == names[det["category_id"]] and abs(s["score"] - det["score"]) < 1e-3]
        assert match, (det, served[:12])
        same_box += any(max(abs(a - b) for a, b in zip(s["box"], (x, y, x + w, y + h))) < 0.5 for s in match)
    assert same_box >= len(top) - 1, (top, served[:12])


def test_export_refusals(env):
    splits = env["splits"]
    assert _export(env, "0" * 24)[0] == 404
    assert _export(env, "not-an-id")[0] == 400
    assert _export(env, splits["train"])[0] == 400  # a dataset, not a model
    with Store(env["data_dir"]) as store:
        model_id = next(r.id for r in store.list(kind="model"))
    code, message, _ = _export(env, model_id, "mvp_detector")
    assert code == 409 and "mvp_detector" in message
    assert _export(env, model_id, "../escape")[0] == 400
    assert _export(env, model_id, "ok\n")[0] == 400  # `$` of a regular expression also matches before a "\n"


def test_trainer_refuses_what_it_cannot_run(env):
    # Nothing is recorded for a refused task: the same id starts fine afterwards.
    code, message = _start(env, 21, net_model="lenet")
    assert code == 400 and "lenet" in message
    code, message = _start(env, 21, batch_size=3, device_num=2)
    assert code == 400 and "device_num" in message
    from evals.mvp_detector.eval import _cuda_devices

    if _cuda_devices() == 0:
        code, message = _start(env, 21, device_type=1)
        assert code == 400 and "GPU" in message
    reply = env["control"].task_query(_ident(21), timeout=TIMEOUT)
    assert reply.resCode == 404


def test_the_trainer_app_itself_serves_no_inference(env):
    with Client("127.0.0.1", env["server"].port, "mvp_detector", timeout=TIMEOUT) as app:
        answer = app.infer({"body": b"x"})[0]
    assert answer["code"] == 400 and "export" in answer["error"]


# A TRAIN task that only has to get through one snapshot.
SHORT = dict(max_num_iters=2, snap_shot_ivterval=2, batch_size=2)


def _wait_end(env, task_id, timeout=120):
    assert wait_until(lambda: _task(env, task_id)["state"] in ("DONE", "FAILED", "STOPPED"), timeout, 0.2), \
        _task(env, task_id)
    return _task(env, task_id)


def _nameless_copy(store, dataset_id):
    """A dataset like `dataset_id` whose images have a store_id and no file_name, which the store accepts."""
    doc = store.get_json(dataset_id)
    for image in doc["images"]:
        del image["file_name"]
    return put_dataset(store, doc)


def test_training_and_testing_need_no_file_names(env):
    """Validation during training matches images by COCO id, like TEST's evaluation, and reports what it does."""
    client = env["client"]
    with Store(env["data_dir"]) as store:
        train_id = _nameless_copy(store, env["splits"]["train"])
        val_id = _nameless_copy(store, env["splits"]["val"])
    assert _start(env, 31, dataset=train_id, val=val_id, **SHORT) == (0, "")
    task = _wait_end(env, 31)
    assert task["state"] == "DONE", task.get("error")
    progress = client.get_train_progresses(_ident(31), timeout=TIMEOUT)
    assert [r.cur_iter_num for r in progress.train_records_lst] == [2]
    model_id = progress.model_id_lst[-1]
    with Store(env["data_dir"]) as store:
        metrics = store.get(model_id).meta["metrics"]
    assert metrics["evaluated"] and metrics["map50"] is not None

    # A TEST task of that snapshot on the same images reports the mAP training did.
    assert _start(env, 32, task_type=1, dataset=val_id, model_id=model_id) == (0, "")
    task = _wait_end(env, 32)
    assert task["state"] == "DONE", task.get("error")
    evaluation = client.evaluation_result_query(_ident(32), timeout=TIMEOUT)
    with Store(env["data_dir"]) as store:
        scores = store.get_json(evaluation.json_mongodb_id)
    assert (scores["mAP_50"], scores["mAP"]) == (pytest.approx(metrics["map50"]), pytest.approx(metrics["map"]))


def test_a_model_that_is_not_a_checkpoint_is_refused_without_unsafe_advice(env):
    with Store(env["data_dir"]) as store:
        bogus = store.put_blob(b"not a checkpoint at all", kind="model", meta={"app": "mvp_detector"})
    for task_id, task_type in ((41, 1), (42, 0)):  # TEST of it, fine-tuning from it
        assert _start(env, task_id, task_type=task_type, dataset=env["splits"]["val"], model_id=bogus,
                      **SHORT) == (0, "")
        task = _wait_end(env, task_id)
        assert task["state"] == "FAILED"
        assert task["error"].startswith("ValueError: not a serving.training checkpoint: "), task["error"]
        # torch's own message advises re-running the load with weights_only=False: running the document's code.
        assert "weights_only" not in task["error"]
    code, message, _ = _export(env, bogus)
    assert code == 400 and message.startswith("not a serving.training checkpoint: ") and "weights_only" not in message


@pytest.fixture(scope="module")
def normal_snapshot(env):
    """The store id of a res18 NORMAL checkpoint (the synth classes), trained here in one tiny step."""
    import torch

    from serving.synth import make_split
    from serving.training.params import TrainParams
    from serving.training.trainer import train

    class Keep:
        def __init__(self):
            self.states = []

        def progress(self, record):
            pass

        def checkpoint(self, iteration, state, metrics):
            self.states.append(state)

        def should_stop(self):
            return False

    torch.set_num_threads(2)
    images, coco = make_split(4, 3, surfaces="train")
    keep = Keep()
    train(TrainParams(model_scope="NORMAL", input_size=64, max_iters=1, batch_size=2, snapshot_interval=1), coco,
          images, coco, images, keep)
    with Store(env["data_dir"]) as store:
        return store.put_blob(keep.states[-1], kind="model", meta={"app": "mvp_detector", "net_model": "res18"})


def test_fine_tuning_keeps_the_snapshots_architecture(env, normal_snapshot):
    from serving.training.trainer import load_state

    # net_model and model_scope left at the ParamClass defaults: the snapshot's architecture.
    assert _start(env, 51, model_id=normal_snapshot, net_model="", model_scope=0, **SHORT) == (0, "")
    task = _wait_end(env, 51)
    assert task["state"] == "DONE", task.get("error")
    snapshot = env["client"].get_train_progresses(_ident(51), timeout=TIMEOUT).model_id_lst[-1]
    with Store(env["data_dir"]) as store:
        params = load_state(store.read_blob(snapshot))["params"]
    assert (params["net_model"], params["model_scope"]) == ("res18", "NORMAL")
    # Another scope asked for explicitly: one line naming both, not torch's 14 KB list of mismatched tensors.
    assert _start(env, 52, model_id=normal_snapshot, model_scope=2, **SHORT) == (0, "")
    task = _wait_end(env, 52)
    first = task["error"].splitlines()[0]
    assert task["state"] == "FAILED" and "res18/NORMAL" in first and "res18/BIG" in first and len(first) < 300, first


def test_testing_on_a_dataset_whose_categories_share_a_name_fails_naming_it(env, normal_snapshot):
    """The store refuses such datasets now; one stored before (written here past put_dataset's validation) must
    not have one class's detections scored as another category's."""
    with Store(env["data_dir"]) as store:
        doc = store.get_json(env["splits"]["val"])
        doc["categories"][1]["name"] = doc["categories"][0]["name"]
        legacy = store._put_json(doc, "dataset", {"images": len(doc["images"])},
                                 refs=[image["store_id"] for image in doc["images"]])
    assert _start(env, 53, task_type=1, dataset=legacy, model_id=normal_snapshot) == (0, "")
    task = _wait_end(env, 53)
    assert task["state"] == "FAILED" and f"repeat the name(s) [{doc['categories'][0]['name']!r}]" in task["error"], \
        task.get("error")
