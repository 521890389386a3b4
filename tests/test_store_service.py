"""The store's gRPC service against a real server: put, get and list documents; bad input gets 4xx."""
import json

import cv2
import grpc
import numpy as np
import pytest

from conftest import TESTS, RunningServer
from serving.proto import store_pb2 as pb
from serving.proto import store_pb2_grpc as pb_grpc
from serving.store import Store

# The server's message size limit, small so that replies over it are cheap to make: what the server is started
# with must be what its replies are held to, not the 32 MiB default.
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def store_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("store")
    server = RunningServer(["--evals", str(TESTS / "apps"), "--data-dir", str(data_dir),
                            "--max-message-mb", str(MAX_MESSAGE_BYTES / 2**20)])
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
    (pb.PutRequest(kind="image", data=b"not an image"), grpc.StatusCode.INVALID_ARGUMENT,
     "image: not a decodable image"),
    (pb.PutRequest(kind="image", data=cv2.imencode(".png", np.zeros((5, 5, 3), np.uint8))[1].tobytes()),
     grpc.StatusCode.INVALID_ARGUMENT, "image: 5x5 px, too small: the apps need both sides over 32 px"),
    (pb.PutRequest(kind="json", data=b"{bad"), grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
    # Valid JSON whose "\ud800" escape is a lone surrogate, which UTF-8 cannot store.
    (pb.PutRequest(kind="json", data=b'{"name": "\\ud800"}'), grpc.StatusCode.INVALID_ARGUMENT,
     "put_json: the string at ['name'] holds '\\ud800', a lone UTF-16 surrogate"),
    (pb.PutRequest(kind="json", data=b'{"\\udfff": 1}'), grpc.StatusCode.INVALID_ARGUMENT,
     "put_json: the key at ['\\udfff'] holds '\\udfff'"),
    (pb.PutRequest(kind="model", data=b"x", meta='{"net": "\\ud800"}'), grpc.StatusCode.INVALID_ARGUMENT,
     "meta: the string at ['net'] holds '\\ud800'"),
    (pb.PutRequest(kind="dataset", data=b'{"images": []}'), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset is invalid: 'images' must be a non-empty list; 'categories' must be a non-empty list"),
    (pb.PutRequest(kind="model", data=b"x", meta="[1]"), grpc.StatusCode.INVALID_ARGUMENT, "meta"),
    (pb.ListRequest(limit=-1), grpc.StatusCode.INVALID_ARGUMENT, "limit must be 0 (as many as one reply holds) or a page"),
    (pb.ListRequest(page_token="not-a-token"), grpc.StatusCode.INVALID_ARGUMENT, "page_token is not a token"),
])
def test_bad_input_gets_a_clear_code(store_server, request_, status, text):
    server, _ = store_server
    method = {pb.GetRequest: "Get", pb.PutRequest: "Put", pb.ListRequest: "List"}[type(request_)]
    with pytest.raises(grpc.RpcError) as err:
        call(server, method, request_)
    assert err.value.code() == status and text in err.value.details(), err.value.details()
    trailing = dict(err.value.trailing_metadata())
    codes = {grpc.StatusCode.NOT_FOUND: "404", grpc.StatusCode.INVALID_ARGUMENT: "400"}
    assert trailing["serving-code"] == codes[status]


def list_all(server, kind, limit=0):
    """Every page of List(kind) in order, as lists of ids; also checks that only the last page has no token."""
    pages, token = [], ""
    while True:
        reply = call(server, "List", pb.ListRequest(kind=kind, limit=limit, page_token=token))
        assert reply.ByteSize() <= MAX_MESSAGE_BYTES
        pages.append([document.id for document in reply.documents])
        token = reply.next_page_token
        if not token:
            return pages
        assert reply.documents, "a page that is followed by another holds something"


def test_list_pages_through_everything(store_server):
    server, data_dir = store_server
    # Written beside the server, as `serving store` commands do: faster than 1001 calls.
    with Store(data_dir) as store:
        with store.transaction():
            for i in range(1001):
                store.put_json({"i": i}, kind="page")
        newest_first = [record.id for record in store.list(kind="page", newest_first=True)]
    # limit 0: as many as one reply holds, here all of them, as before paging existed (older clients).
    pages = list_all(server, "page")
    assert [len(page) for page in pages] == [1001]
    assert pages[0] == newest_first
    pages = list_all(server, "page", limit=400)
    assert [len(page) for page in pages] == [400, 400, 201]
    assert [doc_id for page in pages for doc_id in page] == newest_first
    # Another kind's pages hold none of these.
    assert not set(newest_first) & {doc_id for page in list_all(server, "other") for doc_id in page}


def test_list_pages_stay_under_the_message_limit(store_server):
    server, data_dir = store_server
    with Store(data_dir) as store:
        ids = {store.put_json({}, kind="fat", meta={"pad": "x" * (MAX_MESSAGE_BYTES // 5)}) for _ in range(12)}
    pages = list_all(server, "fat", limit=10)  # 10 such records would be twice the limit
    assert max(len(page) for page in pages) <= 4 and len(pages) >= 3
    assert sorted(doc_id for page in pages for doc_id in page) == sorted(ids)


def test_get_of_a_document_over_the_message_limit_is_413(store_server):
    server, data_dir = store_server
    with Store(data_dir) as store:
        big = store.put_blob(b"\x01" * (MAX_MESSAGE_BYTES + 1), kind="weights")
        fits = store.put_blob(b"\x02" * (MAX_MESSAGE_BYTES - 4096), kind="weights")
    with pytest.raises(grpc.RpcError) as err:
        call(server, "Get", pb.GetRequest(id=big, with_data=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata())["serving-code"] == "413"
    assert err.value.details() == (f"document {big} is {MAX_MESSAGE_BYTES + 1} bytes, too large for one reply of "
                                   f"this server (at most {MAX_MESSAGE_BYTES} bytes a message, serve "
                                   "--max-message-mb): get its record without data, or its bytes from the data "
                                   f"folder with `serving store get {big} --out FILE`")
    assert call(server, "Get", pb.GetRequest(id=big)).size == MAX_MESSAGE_BYTES + 1  # the record still comes
    assert call(server, "Get", pb.GetRequest(id=fits, with_data=True)).data == b"\x02" * (MAX_MESSAGE_BYTES - 4096)


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
