"""Seed 000's MVI calls on a real server (the built-in apps mvi_ocr and mvi_defect), with the seed's client code:
initial_defect_task, ocr_task, defect_detect_task, and every bad input the issue names; then mvi_defect's own
inference API: a bad product (an input it does not take, a bad param) is 400 naming it and fails alone, and bad
custom_params fail the app naming the key."""
import json
import shutil
import urllib.request

import threading

import cv2
import numpy as np
import pytest

from conftest import REPO, RunningServer, wait_until
from evals.mvi_ocr import data as ocr_data
from serving.client import Client
from serving.config import load_app_config
from serving.proto import mvp_pb2, mvp_pb2_grpc
from serving.store import Store
from serving.synth.products import make_products

TIMEOUT = 30


def _png(image):
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvi")
    evals = root / "evals"
    for app in ("mvi_ocr", "mvi_defect"):
        shutil.copytree(REPO / "evals" / app, evals / app)
    # As a deployment whose product codes use the "code" alphabet configures it: ocr_task sends no params.
    config = json.loads((evals / "mvi_ocr" / "app.json").read_text())
    config.setdefault("custom_params", {})["default_charset"] = "code"
    (evals / "mvi_ocr" / "app.json").write_text(json.dumps(config))
    data_dir = root / "var"
    # Products on held-out surfaces: an NG one (a defective view among clean ones) and an OK one.
    products = make_products(12, seed=7, views=3)
    ng = next(p for p in products if p.ng and len(p.defective_views) == 1)
    ok = next(p for p in products if not p.ng)
    with Store(data_dir) as store:
        ids = {(p.product_id, view_id): store.put_image(_png(image))
               for p in (ng, ok) for view_id, image, _ in p.views}
        blob_id = store.put_blob(b"not an image at all", kind="blob")
        codes = [(store.put_image(_png(image)), text) for _, image, text in ocr_data.generate(3, seed=11)]
    server = RunningServer(["--evals", str(evals), "--data-dir", str(data_dir), "--metrics-port", "0"])
    conn = server.channel()
    client = mvp_pb2_grpc.FormatDataStub(channel=conn)  # the seed's client
    yield {"server": server, "client": client, "ids": ids, "ng": ng, "ok": ok, "blob": blob_id,
           "data_dir": data_dir, "codes": codes}
    conn.close()
    server.stop()


def _detect(env, product, views=None, image_view_num=None):
    views = views if views is not None else [
        mvp_pb2.ImgViewInfo(image_view_id=view_id, image_mongo_id=env["ids"][(product.product_id, view_id)])
        for view_id, _, _ in product.views]
    request = mvp_pb2.DetectRequestParam(product_id=product.product_id, img_view_lst=views,
                                         image_view_num=len(views) if image_view_num is None else image_view_num)
    return env["client"].defect_detect_task(request, timeout=TIMEOUT)


def test_initial_defect_task_loads_the_built_in_apps_and_is_harmless_twice(env):
    client = env["client"]
    for _ in range(2):
        res = client.initial_defect_task(mvp_pb2.InitialParam(device_num=1, model_path_lst=["mvi_ocr", "mvi_defect"]),
                                         timeout=TIMEOUT)
        assert (res.res_code, res.res_msg) == (0, "OK: mvi_ocr, mvi_defect ready")
    assert client.initial_defect_task(mvp_pb2.InitialParam(device_num=1), timeout=TIMEOUT).res_code == 0
    # The seed's own list names model files this server does not have: refused, nothing loaded, names given.
    res = client.initial_defect_task(mvp_pb2.InitialParam(device_num=1, model_path_lst=["mvi_defect", "ocr.data"]),
                                     timeout=TIMEOUT)
    assert res.res_code == 404 and "ocr.data" in res.res_msg
    assert client.initial_defect_task(mvp_pb2.InitialParam(device_num=-1), timeout=TIMEOUT).res_code == 400


def test_initial_defect_task_checks_model_ids_before_loading_anything(env):
    """An unknown snapshot id after an app name: 404 naming it, and the app before it was not loaded either."""
    import tritonclient.grpc as triton

    kserve = triton.InferenceServerClient(env["server"].target)
    kserve.unload_model("mvi_ocr")
    try:
        assert not kserve.is_model_ready("mvi_ocr")
        res = env["client"].initial_defect_task(
            mvp_pb2.InitialParam(device_num=1, model_path_lst=["mvi_ocr", "0123456789abcdef01234567"]),
            timeout=TIMEOUT)
        assert res.res_code == 404 and "0123456789abcdef01234567" in res.res_msg, res.res_msg
        assert "nothing was loaded" in res.res_msg
        assert not kserve.is_model_ready("mvi_ocr")
        # A stored document that is not a model: 400, nothing loaded.
        res = env["client"].initial_defect_task(
            mvp_pb2.InitialParam(device_num=1, model_path_lst=["mvi_ocr", env["blob"]]), timeout=TIMEOUT)
        assert res.res_code == 400 and env["blob"] in res.res_msg, res.res_msg
        assert not kserve.is_model_ready("mvi_ocr")
    finally:
        res = env["client"].initial_defect_task(mvp_pb2.InitialParam(device_num=1, model_path_lst=["mvi_ocr"]),
                                                timeout=TIMEOUT)
        kserve.close()
    assert (res.res_code, res.res_msg) == (0, "OK: mvi_ocr ready")


def test_initial_defect_task_reloads_a_stuck_app(fresh_apps_server):
    """STUCK (net_inference past inference_timeout_s) is not ready: the call loads the app again."""
    host, port = fresh_apps_server.target.split(":")
    with fresh_apps_server.channel() as channel, Client(host, int(port), "probe", timeout=0.5) as client:
        mvi = mvp_pb2_grpc.FormatDataStub(channel)
        assert client.infer({"i": 1}, params={"hang_s": 4})["code"] == 504
        assert wait_until(lambda: {a["name"]: a["state"] for a in client.apps()}["probe"] == "STUCK", 3)
        res = mvi.initial_defect_task(mvp_pb2.InitialParam(device_num=1, model_path_lst=["probe"]), timeout=TIMEOUT)
        assert (res.res_code, res.res_msg) == (0, "OK: probe ready")
        assert {a["name"]: a["state"] for a in client.apps()}["probe"] == "READY"
        [result] = client.infer({"i": 2})
        assert "error" not in result, result


def test_defect_detect_task_stores_the_product_verdict(env):
    ng, ok = env["ng"], env["ok"]
    res = _detect(env, ng)
    assert (res.res_code, res.res_msg) == (0, "OK"), res.res_msg
    with Store(env["data_dir"]) as store:
        doc = store.get_json(res.result_json_mongo_id)
        record = store.get(res.result_json_mongo_id)
    assert record.kind == "result" and record.meta["product_id"] == ng.product_id
    assert doc["product_id"] == ng.product_id and doc["verdict"] == "NG"
    assert doc["failed_views"] == ng.defective_views
    assert [v["image_view_id"] for v in doc["views"]] == [view_id for view_id, _, _ in ng.views]
    bad = next(v for v in doc["views"] if v["image_view_id"] == ng.defective_views[0])
    assert bad["verdict"] == "NG" and bad["defects"] and {"class", "score", "box"} <= set(bad["defects"][0])
    assert bad["image_mongo_id"] == env["ids"][(ng.product_id, ng.defective_views[0])]

    res = _detect(env, ok)
    assert res.res_code == 0
    with Store(env["data_dir"]) as store:
        doc = store.get_json(res.result_json_mongo_id)
    assert doc["verdict"] == "OK" and doc["failed_views"] == []


def test_defect_detect_task_goes_through_the_app_batcher(env):
    """The calls are ordinary requests of mvi_defect: its request counter on the metrics endpoint grows."""
    def served():
        text = urllib.request.urlopen(f"http://127.0.0.1:{env['server'].metrics_port}/metrics", timeout=5).read()
        lines = [line for line in text.decode().splitlines()
                 if line.startswith("serving_requests_total{") and 'app="mvi_defect"' in line and 'code="0"' in line]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines)

    before = served()
    assert _detect(env, env["ok"]).res_code == 0
    assert wait_until(lambda: served() == before + 1, 5)


def test_defect_detect_task_bad_input(env):
    ng = env["ng"]
    ids = env["ids"]
    view = mvp_pb2.ImgViewInfo

    def code(views, image_view_num=None):
        res = _detect(env, ng, views, image_view_num)
        assert res.res_msg and not res.result_json_mongo_id
        return res.res_code, res.res_msg

    first = ids[(ng.product_id, 1)]
    assert code([view(image_view_id=1, image_mongo_id="f" * 24)])[0] == 404  # unknown image
    assert code([view(image_view_id=1, image_mongo_id="nope")])[0] == 400  # malformed id
    status, message = code([view(image_view_id=1, image_mongo_id=env["blob"])])  # a blob, not an image
    assert status == 400 and "not an image" in message
    status, message = code([view(image_view_id=1, image_mongo_id=first)], image_view_num=2)
    assert status == 400 and "image_view_num" in message
    assert code([])[0] == 400  # zero views
    status, message = code([view(image_view_id=1, image_mongo_id=first), view(image_view_id=1, image_mongo_id=first)])
    assert status == 400 and "more than once" in message


def test_ocr_task_reads_stored_product_codes(env):
    for image_id, text in env["codes"]:
        res = env["client"].ocr_task(mvp_pb2.OcrRequestParam(img_mongo_id=image_id), timeout=TIMEOUT)
        assert (res.res_code, res.res_msg, res.code_str) == (0, "OK", text)


def test_ocr_task_bad_input(env):
    client = env["client"]
    # The seed's example id is one this store does not hold.
    for image_id, expected in (("5b87df87c55e4f0b89a6c364", 404), ("nope", 400), (env["blob"], 400)):
        res = client.ocr_task(mvp_pb2.OcrRequestParam(img_mongo_id=image_id), timeout=TIMEOUT)
        assert res.res_code == expected and res.res_msg and res.code_str == ""


# ---------------------------------------------------------------------------------------------- mvi_defect's API

DEFECT = "mvi_defect"


@pytest.fixture(scope="module")
def defect(env):
    with Client("127.0.0.1", env["server"].port, DEFECT, timeout=TIMEOUT) as client:
        yield client


def _product(product):
    return [{"body": _png(image), "attribute": {"view_id": view_id}} for view_id, image, _ in product.views]


def _is_verdict(result):
    return "error" not in result and result["verdict"] in ("OK", "NG")


def test_a_bad_product_fails_alone_beside_good_ones(env, defect):
    """One call, so one batch: before, a view carrying an input named "tensor" failed every product of the batch
    with 599 'scale'. Now the bad products get 400 naming the input and the good ones their verdicts."""
    ng = env["ng"]
    view = {"body": _png(ng.views[1][1])}
    results = defect.infer([
        _product(ng),
        {"body": view["body"], "tensor": np.zeros((3, 256, 256), np.float32)},
        view,
        [view, {"body": view["body"], "view_id": np.zeros(2, np.int32)}],
    ])
    assert results[0]["verdict"] == "NG" and results[0]["failed_views"] == ng.defective_views, results[0]
    assert results[1]["code"] == 400 and "view 1: unknown input 'tensor'" in results[1]["error"]
    assert _is_verdict(results[2]) and "detections" in results[2], results[2]
    assert results[3]["code"] == 400 and "view 2: unknown input 'view_id'" in results[3]["error"]


def test_a_caller_sending_bad_products_never_fails_another_callers(env, defect):
    body = _png(env["ok"].views[0][1])
    stop = threading.Event()
    refused = []

    def attacker():
        with Client("127.0.0.1", env["server"].port, DEFECT, timeout=TIMEOUT) as own:
            while not stop.is_set():
                refused.append(own.infer([{"body": body, "tensor": np.zeros((3, 256, 256), np.float32)}])[0])

    thread = threading.Thread(target=attacker)
    thread.start()
    try:
        honest = [defect.infer([{"body": body}])[0] for _ in range(4)]
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert all(_is_verdict(result) for result in honest), honest
    assert refused and all(result["code"] == 400 for result in refused)


@pytest.mark.parametrize("instance, params, message", [
    # Valid JSON integers too large for a float: refused like 2 would be, never an OverflowError (599).
    ({}, {"score_threshold": 10 ** 400}, "params.score_threshold must be a number in [0, 1]"),
    ({}, {"ng_threshold": 10 ** 400}, "params.ng_threshold must be a number in [0, 1]"),
    ({}, {"ng_threshold": "high"}, "params.ng_threshold must be a number in [0, 1]"),
    ({"attribute": "front"}, None, "view 1: attribute must be an object"),
    ({"attribute": {"view_id": [1]}}, None, "view 1: attribute.view_id must be an integer, got list"),
    ({"body": b""}, None, "view 1 has no image"),
    ({"mask": b"\x00", "scale": 2.0}, None, "view 1: unknown input 'mask', 'scale'"),
])
def test_bad_input_is_400_naming_it(defect, instance, params, message):
    image = np.full((64, 64, 3), 128, np.uint8)
    result = defect.infer([{"body": _png(image), **instance}], params)[0]
    assert result["code"] == 400 and message in result["error"], result


def _defect_copy(evals, name, custom_params):
    app = evals / name
    shutil.copytree(REPO / "evals" / DEFECT, app, ignore=shutil.ignore_patterns("__pycache__"))
    config = json.loads((app / "app.json").read_text())
    config["custom_params"].update(custom_params)
    (app / "app.json").write_text(json.dumps(config))


def test_numeric_custom_params_are_checked_at_load_naming_the_key(tmp_path):
    """Integers too large for a float in app.json: a clear load failure naming the key (score and NG
    thresholds), or a working app (top_k: a bound higher than any count of peaks)."""
    evals = tmp_path / "evals"
    _defect_copy(evals, "score", {"score_threshold": 10 ** 400})
    _defect_copy(evals, "ng", {"ng_threshold": 10 ** 400})
    _defect_copy(evals, "topk", {"top_k": 10 ** 400})
    server = RunningServer(["--evals", str(evals)])
    try:
        with Client("127.0.0.1", server.port, "topk", timeout=TIMEOUT) as client:
            apps = {app["name"]: app for app in client.apps()}
            result = client.infer([{"body": _png(np.full((64, 64, 3), 128, np.uint8))}])[0]
    finally:
        server.stop()
    assert apps["score"]["state"] == "FAILED"
    assert "custom_params.score_threshold must be a number in [0, 1]" in apps["score"]["reason"]
    assert apps["ng"]["state"] == "FAILED"
    assert "custom_params.ng_threshold must be a number in [0, 1]" in apps["ng"]["reason"]
    assert apps["topk"]["state"] == "READY" and _is_verdict(result), result


def test_net_inference_answers_each_product_on_its_own(env):
    """As a host calls net_inference (net_preprocess is optional in the contract): a batch holding raw products,
    one of them bad, and one whose views the network refuses. Each gets its own ret; none fails the batch."""
    from evals.mvi_defect import eval as app

    app_dir = REPO / "evals" / DEFECT
    model, code, message = app.create_net(load_app_config(app_dir).create_net_configs(DEFECT, app_dir))
    assert (code, message) == (0, "")
    good = {"data": {"body": _png(env["ok"].views[0][1])}, "params": {}}
    broken, _, _ = app.net_preprocess(model, {"data": {"body": good["data"]["body"]}, "params": {}})
    # The network takes 3 x 256 x 256 inputs: this product's forward pass fails, and only this product's.
    broken[app._STATE]["tensors"] = [np.zeros((3, 8, 8), np.float32)]
    requests = [good, {"data": {"body": good["data"]["body"], "tensor": np.zeros(3)}, "params": {}}, broken,
                "not a request", dict(good)]
    rets, code, message = app.net_inference(model, requests)
    assert (code, message) == (0, "")
    assert [ret["code"] for ret in rets] == [0, 400, 500, 400, 0]
    assert "unknown input 'tensor'" in rets[1]["message"]
    assert rets[2]["message"].startswith("forward inference failed")
    assert rets[0]["result"] == rets[4]["result"] and rets[0]["result"]["verdict"] in ("OK", "NG")
