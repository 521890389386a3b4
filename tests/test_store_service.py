"""The store's gRPC service against a real server: put, get and list documents; bad input gets 4xx."""
import json

import cv2
import grpc
import numpy as np
import pytest

from conftest import TESTS, RunningServer
from serving.proto import store_pb2 as pb
from serving.proto import store_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("store")
    server = RunningServer(["--evals", str(TESTS / "apps"), "--data-dir", str(data_dir)])
    yield server, data_dir
    server.stop()


def call(server, method, request):
    with server.channel() as channel:
        stub = pb_grpc.StoreStub(channel)
        return getattr(stub, method)(request, timeout=10)


def test_put_get_list_round_trip(store_server):
    server, data_dir = store_server
    png = cv2.imencode(".png", np.full((40, 48, 3), 90, np.uint8))[1].tobytes()
    image_id = call(server, "Put", pb.PutRequest(kind="image", data=png, meta='{"camera": 2}')).id
    doc_id = call(server, "Put", pb.PutRequest(kind="json", data=b'{"a": [1, 2]}')).id
    model_id = call(server, "Put", pb.PutRequest(kind="model", data=b"\x00weights")).id
    image = call(server, "Get", pb.GetRequest(id=image_id, with_data=True))
    assert image.kind == "image" and image.data == png
    assert json.loads(image.meta)["camera"] == 2 and json.loads(image.meta)["width"] == 48
    assert json.loads(call(server, "Get", pb.GetRequest(id=doc_id, with_data=True)).data) == {"a": [1, 2]}
    assert call(server, "Get", pb.GetRequest(id=model_id)).data == b""
    listed = [d.id for d in call(server, "List", pb.ListRequest(kind="model")).documents]
    assert listed == [model_id]
    assert (data_dir / "store.sqlite3").exists()


@pytest.mark.parametrize("request_, status, text", [
    (pb.GetRequest(id="0" * 24), grpc.StatusCode.NOT_FOUND, "0" * 24),
    (pb.GetRequest(id="nope"), grpc.StatusCode.INVALID_ARGUMENT, "nope"),
    (pb.PutRequest(kind="image", data=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT, ""),
    (pb.PutRequest(kind="json", data=b"{bad"), grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
    (pb.PutRequest(kind="dataset", data=b'{"images": []}'), grpc.StatusCode.INVALID_ARGUMENT, ""),
    (pb.PutRequest(kind="model", data=b"x", meta="[1]"), grpc.StatusCode.INVALID_ARGUMENT, "meta"),
])
def test_bad_input_gets_a_clear_code(store_server, request_, status, text):
    server, _ = store_server
    method = "Get" if isinstance(request_, pb.GetRequest) else "Put"
    with pytest.raises(grpc.RpcError) as err:
        call(server, method, request_)
    assert err.value.code() == status and text in err.value.details()
    trailing = dict(err.value.trailing_metadata())
    assert trailing["serving-code"] in ("400", "404")


def test_dataset_synth_stores_three_splits_and_prints_their_ids(tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    from serving.store import Store, load_dataset
    from serving.synth import HELD_OUT_SURFACES

    run = subprocess.run([sys.executable, "-m", "serving.cli", "dataset", "synth", "--n", "20", "--seed", "4",
                          "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ids = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(ids) == {"train", "val", "test"}
    with Store(tmp_path) as store:
        datasets = {split: load_dataset(store, dataset_id) for split, dataset_id in ids.items()}
        assert sum(len(d["images"]) for d in datasets.values()) == 20
        for dataset in datasets.values():
            for image in dataset["images"]:
                assert store.get(image["store_id"]).kind == "image"
        assert all(image["surface"] in HELD_OUT_SURFACES for image in datasets["test"]["images"])
        assert not any(image["surface"] in HELD_OUT_SURFACES for image in datasets["train"]["images"])
        assert store.integrity_check(blobs=True) == []
    refused = subprocess.run([sys.executable, "-m", "serving.cli", "dataset", "synth", "--n", "2", "--data-dir",
                              str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "at least 3" in refused.stderr
