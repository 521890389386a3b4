"""The eval.py contract as legacy eval scripts use it (../shared/notes/eval-contract.md), on a real server.

Items the other test files already cover (error classes, helpers, load_image, monitor helpers, decorators called
directly, batching limits, same thread, 599 for exceptions, batch code with message) are not repeated here. These
tests cover what an old script relies on that nothing else checks on a served app: the data keys it indexes
directly (tests/apps_contract/oldscript and oldpre index data["uri"], data["body"] and data["attribute"], as public
scripts do, so without those keys every test of theirs fails), success reported as 200, the X-Origin-A header on
the wire, CTX while serving, the codes and messages of the error classes it raises, and per-request codes when the
batch code fails without a message or when requests of several callers share a batch.
"""
import concurrent.futures
import json

import cv2
import grpc
import numpy as np
import pytest

from evals.utils import error as E
from evals.utils import net_inference_handler, net_preprocess_handler
from evals.utils.request import RequestData
from serving import codec
from serving.client import Client, Failure
from serving.proto import inference_pb2_grpc as pb_grpc
from conftest import TESTS, RunningServer


def png(height=40, width=50):
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = (10, 20, 30)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract-data")
    (root / "a.png").write_bytes(png(40, 50))
    return root


@pytest.fixture(scope="module")
def server(images):
    server = RunningServer(["--evals", str(TESTS / "apps_contract"), "--data-root", str(images)])
    yield server
    server.stop()


def client(server, app="oldscript"):
    return Client("127.0.0.1", server.port, app)


# ---- the data keys old scripts index ----------------------------------------------------------------------------

def test_scripts_indexing_uri_and_body_get_none_for_what_the_caller_did_not_send(server, images):
    # Public eval scripts do load_image(reqs[i]["data"]["uri"], body=reqs[i]["data"]["body"]): every request's data
    # has "uri", "body" and "attribute", a body-only request included. Without that: 599 "'uri'".
    uri = str(images / "a.png")
    with client(server) as c:
        body_only, uri_only, both = c.infer([{"body": png()}, {"uri": uri}, {"uri": "a.png", "body": png(),
                                                                              "attribute": {"k": 1}}])
        [multi] = c.infer([[{"body": png(36, 37)}, {"uri": uri}]])
    assert body_only["images"] == [{"shape": [40, 50, 3], "uri": None, "has_body": True, "attribute": None}]
    assert uri_only["images"] == [{"shape": [40, 50, 3], "uri": uri, "has_body": False, "attribute": None}]
    assert both["images"] == [{"shape": [40, 50, 3], "uri": "a.png", "has_body": True, "attribute": {"k": 1}}]
    assert multi["images"] == [{"shape": [36, 37, 3], "uri": None, "has_body": True, "attribute": None},
                               {"shape": [40, 50, 3], "uri": uri, "has_body": False, "attribute": None}]


def test_a_preprocess_indexing_uri_and_body_works_for_body_only_requests(server):
    with client(server, "oldpre") as c:
        assert c.infer([{"body": png()}, {"body": png(33, 34)}]) == [{"shape": [40, 50, 3]}, {"shape": [33, 34, 3]}]


def test_request_data_defaults_only_the_contract_keys():
    seen = {}

    @net_preprocess_handler
    def net_preprocess(model, request):
        seen["pre"] = request["data"]
        return request, 0, ""

    @net_inference_handler
    def net_inference(model, requests):
        seen["inf"] = [r["data"] if isinstance(r, dict) else r for r in requests]
        return [{"code": 0, "message": "", "result": {}} for _ in requests], 0, ""

    request = {"data": {"body": b"x", "tensor": 1}, "params": {}}
    assert net_preprocess({}, request)[1] == 0
    data = seen["pre"]
    assert isinstance(data, RequestData) and data is request["data"]
    assert (data["uri"], data["body"], data["attribute"]) == (None, b"x", None)
    assert "uri" not in data and sorted(data) == ["body", "tensor"] and data == {"body": b"x", "tensor": 1}
    with pytest.raises(KeyError):
        data["other"]  # only the contract's keys default
    assert json.dumps(data, default=repr)  # still a plain dict to everything else

    multi = {"data": [{"uri": "u"}, {"body": b"b"}], "params": {}}
    assert net_inference({}, [multi, {"data": {"uri": "v"}, "params": {}}, "not a request"])[1] == 0
    first, second, third = seen["inf"]
    assert [item["body"] for item in first] == [None, b"b"] and [item["uri"] for item in first] == ["u", None]
    assert isinstance(second, RequestData) and second["body"] is None
    assert third == "not a request"  # what is not a request is handed over untouched


# ---- success codes, headers, context ----------------------------------------------------------------------------

def test_200_is_success_for_create_net_batches_and_rets(server):
    # create_net returns (model, 200, "Success"); net_inference returns (rets, 200, ""); rets may say 200.
    with client(server) as c:
        [result] = c.infer({"body": png()}, params={"ret_code": 200})
    assert result["images"][0]["shape"] == [40, 50, 3]


def test_the_origin_header_reaches_the_caller(server):
    request = codec.instances_to_request("oldscript", "inference", [{"body": png()}, {"body": png()}], {})
    with grpc.insecure_channel(server.target) as channel:
        response = pb_grpc.InferenceStub(channel).Infer(request, timeout=10)
    assert [json.loads(r.header) for r in response.results] == [{"X-Origin-A": ["OLDSCRIPT:1"]}] * 2


def test_ctx_while_serving(server):
    with Client("127.0.0.1", server.port, "oldscript", request_id="ctx-1") as c:
        first, second = c.infer([{"body": png()}, {"body": png()}])
    assert first["init"] == ["oldscript", "net_init", "net_init"]
    assert first["app"] == "oldscript" and first["same_thread"] is True
    assert first["reqid"] == first["logger_reqid"] == "ctx-1.0,ctx-1.1" and first["batch"] == 2


# ---- codes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error,code", [
    (["ErrorConfig", "threshold"], 400),
    (["ErrorFileNotExist", "labels.csv"], 400),
    (["ErrorCV2ImageRead", "x.jpg"], 400),
    (["ErrorOutOfBatchSize", 4], 400),
    (["ErrorForwardInference"], 500),
    (["ErrorBase", 571, "gpu busy, retry"], 571),
    (["ErrorBase"], 599),
])
def test_errors_a_script_raises_reach_the_caller_with_their_code(server, error, code):
    with client(server) as c:
        [result] = c.infer({"body": png()}, params={"raise": error})
    expected = getattr(E, error[0])(*error[1:])
    assert isinstance(result, Failure) and result == {"error": expected.message, "code": code}


def test_a_batch_code_without_message_leaves_each_rets_code(server):
    with client(server) as c:
        results = c.infer([{"body": png()}, {"body": png(), "attribute": {"fail": 404}}], params={"top": [500, ""]})
    assert results[0]["images"][0]["shape"] == [40, 50, 3]
    assert results[1] == {"error": "refused by attribute", "code": 404}


def test_per_request_codes_survive_batching_across_callers(server):
    def call(i):
        instance = {"body": png(), "attribute": {"fail": 400 + i} if i % 2 else {}}
        with client(server) as c:
            return c.infer([instance])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(16)))
    for i, result in enumerate(results):
        if i % 2:
            assert result == [{"error": "refused by attribute", "code": 400 + i}] and isinstance(result[0], Failure)
        else:
            assert result[0]["images"][0]["shape"] == [40, 50, 3] and result[0]["batch"] <= 4
