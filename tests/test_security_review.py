"""A security review's findings (2026-11-26), each reproduced against a real server first:

- model_export / initial_defect_task of a "model" document whose export failed put the export process's whole
  traceback (the server's absolute paths, its code) on the wire; any token user can store such a document
  (Store.Put of kind "model" with meta {"app": ...}). Refusals named the evals dir's absolute path too.
- A dataset Put of 1 MiB holding 350,000 empty annotations kept all of its 1.4 million problems as text (180 MB
  of the server's memory) to report ten of them.
"""
import json
import textwrap
import tracemalloc

import pytest

from conftest import REPO, RunningServer
from serving.proto import mvp_pb2, mvp_pb2_grpc
from serving.proto import store_pb2 as spb
from serving.proto import store_pb2_grpc as spb_grpc
from serving.store import StoreError
from serving.store.datasets import MAX_REPORTED_PROBLEMS, validate_coco

BOB = "bob-5e1c7a9d3b2f40e6a8c1"
TIMEOUT = 60

_CRASHING_EXPORTER = textwrap.dedent('''
    """An app whose export hook fails as an exporter's bug would (a model document it cannot read)."""
    from evals.utils import create_net_handler, net_inference_handler


    @create_net_handler
    def create_net(configs):
        return {}, 0, ""


    @net_inference_handler
    def net_inference(model, requests):
        return [{"code": 0, "message": "", "result": {}} for _ in requests], 0, ""


    def export(model_bytes, meta, out_dir):
        raise KeyError("params")
''')


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-review")
    evals = root / "evals"
    (evals / "crasher").mkdir(parents=True)
    (evals / "crasher" / "eval.py").write_text(_CRASHING_EXPORTER)
    tokens = root / "tokens.txt"
    tokens.write_text(f"{BOB} bob\n")
    tokens.chmod(0o600)
    running = RunningServer(["--evals", str(evals), "--auth-tokens", str(tokens)])
    channel = running.channel()
    yield {"server": running, "channel": channel, "evals": evals}
    channel.close()
    running.stop()


def _model(channel, meta):
    """A "model" document as any token user can store one: bytes and meta of its choosing."""
    return spb_grpc.StoreStub(channel).Put(spb.PutRequest(kind="model", data=b"not a checkpoint",
                                                          meta=json.dumps(meta)),
                                           metadata=(("authorization", f"Bearer {BOB}"),), timeout=TIMEOUT).id


def _export(channel, model_id, app_name=""):
    reply = mvp_pb2_grpc.TaskControlStub(channel).model_export(
        mvp_pb2.ModelExportRequest(model_id=model_id, app_name=app_name),
        metadata=(("authorization", f"Bearer {BOB}"),), timeout=TIMEOUT)
    return reply.resCode, reply.ErrorMsg


def _no_server_paths(message, *paths):
    assert "Traceback" not in message and 'File "' not in message, message
    for path in (REPO, *paths):
        assert str(path) not in message, message


def test_a_failed_export_answers_its_exception_line_not_its_traceback(server):
    model_id = _model(server["channel"], {"app": "crasher"})
    code, message = _export(server["channel"], model_id, "mine")
    assert code == 500
    assert message == f"exporting model {model_id} failed: KeyError: 'params' (the server log has the details)"
    _no_server_paths(message, server["evals"])
    # The same export through the MVI call.
    reply = mvp_pb2_grpc.FormatDataStub(server["channel"]).initial_defect_task(
        mvp_pb2.InitialParam(model_path_lst=[model_id]), metadata=(("authorization", f"Bearer {BOB}"),),
        timeout=TIMEOUT)
    assert reply.res_code == 500
    _no_server_paths(reply.res_msg, server["evals"])
    # The details are for the operator: in the server's log.
    assert "Traceback" in server["server"].output


def test_export_refusals_do_not_name_server_folders(server):
    channel, evals = server["channel"], server["evals"]
    taken = _export(channel, _model(channel, {"app": "crasher"}), "crasher")
    assert taken == (409, "app name 'crasher' is taken by an app of the server's evals dir")
    no_app = _export(channel, _model(channel, {"app": "../../nowhere"}), "mine2")
    assert no_app == (503, "no app folder '../../nowhere' in the server's evals dir")
    for _, message in (taken, no_app):
        _no_server_paths(message, evals)


def test_the_problems_of_a_huge_bad_dataset_cost_no_memory_of_their_own():
    n = 200_000
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
           "categories": [{"id": 1, "name": "x"}], "annotations": [{} for _ in range(n)]}
    tracemalloc.start()
    try:
        with pytest.raises(StoreError) as refused:
            validate_coco(doc)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Four problems an annotation: the message shows ten and counts the rest exactly.
    assert refused.value.code == 400
    assert refused.value.message.endswith(f"; and {4 * n - MAX_REPORTED_PROBLEMS} more problems")
    assert refused.value.message.count("annotations[") == MAX_REPORTED_PROBLEMS
    # Kept as text, the 800,000 problems took about 100 MB here.
    assert peak < 10 * 1024 * 1024, f"validating took {peak / 2**20:.0f} MiB"
