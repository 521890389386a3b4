"""protos/mvp.proto: seed 000's MVP/MVI interface, names (typos included) and the seed's client snippets."""
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from serving.proto import mvp_pb2

REPO = Path(__file__).resolve().parent.parent

# The seed's client code, as written there (full-width commas fixed, the only thing that would not parse).
SEED_SNIPPETS = """
task_type = 0 # 0 is train, 1 is test

param = mvp_pb2.ParamClass(model_name = 'mvp_model', dataset_expansion_lst = [0, 1, 2,3], net_model = 'res101',
                           model_scope = 0, device_type = 0,inital_learning_rate = 0.01,  device_num = 1,
                           max_num_iters = 50000, batch_size = 10, snap_shot_ivterval = 10000)

task_request = mvp_pb2.Data_task_request(param_request = param, task_id = 129979767823453, interface_id = 1, task_type = task_type,
 json_mongodb_id = '5b5ad4b19dc6d67a491f0789', json_val_id = None, trained_model_id = '')

stop = mvp_pb2.Data_task_id(task_id = 1, interface_id = 1, model_id  = None)
query = mvp_pb2.Data_task_id(task_id = 1, interface_id = 1, model_id = 1)

init = mvp_pb2.InitialParam(device_num = 1, model_path_lst = ["ocr.data", "object_detect.cpk", "defect_detect1_cpk","defect_detect2_cpk","defect_detect3_cpk","defect_detect4_cpk"])

ocr = mvp_pb2.OcrRequestParam(img_mongo_id = '5b87df87c55e4f0b89a6c364')

img_view = mvp_pb2.ImgViewInfo(image_view_id = 1, image_mongo_id = '5b67e6ca9dc6d61e81e93c7a')

detect = mvp_pb2.DetectRequestParam(product_id = 1000, image_view_num = 1, img_view_lst = [img_view])
"""

CHECKS = """
assert list(param.dataset_expansion_lst) == [0, 1, 2, 3]
assert param.inital_learning_rate == 0.01 and param.snap_shot_ivterval == 10000
assert task_request.task_id == 129979767823453 and task_request.json_val_id == ""
assert task_request.param_request.net_model == "res101"
assert stop.model_id == 0 and query.model_id == 1
assert len(init.model_path_lst) == 6 and ocr.img_mongo_id == "5b87df87c55e4f0b89a6c364"
assert detect.img_view_lst[0].image_mongo_id == "5b67e6ca9dc6d61e81e93c7a"
assert mvp_pb2.DESCRIPTOR.package == "mvp_rpc"
assert hasattr(mvp_pb2_grpc, "FormatDataStub") and hasattr(mvp_pb2_grpc, "FormatDataServicer")
for message in (param, task_request, stop, init, ocr, detect):
    assert type(message).FromString(message.SerializeToString()) == message
print("SEED SNIPPETS OK")
"""


def test_the_seed_command_generates_modules_that_run_the_seed_snippets(tmp_path):
    """The seed's own protoc command, then its client snippets in the output folder (fresh interpreter)."""
    out = tmp_path / "gen"
    out.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", f"--python_out={out}",
                    f"--grpc_python_out={out}", "protos/mvp.proto"], cwd=REPO, check=True)
    assert (out / "mvp_pb2.py").exists() and (out / "mvp_pb2_grpc.py").exists()
    script = "import mvp_pb2, mvp_pb2_grpc\n" + SEED_SNIPPETS + CHECKS
    result = subprocess.run([sys.executable, "-c", script], cwd=out, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "SEED SNIPPETS OK" in result.stdout


def test_none_for_a_scalar_means_unset():
    request = mvp_pb2.Data_task_request(json_val_id=None, trained_model_id="")
    assert request.json_val_id == "" and request.trained_model_id == ""
    assert mvp_pb2.Data_task_id(task_id=1, interface_id=1, model_id=None).model_id == 0


METHODS = {
    "task_start_request": ("Data_task_request", "Data_res_Code"),
    "task_stop_request": ("Data_task_id", "Data_res_Code"),
    "get_train_progresses": ("Data_task_id", "TrainProgressRecords"),
    "test_progress_query": ("Data_task_id", "TestProgressParam"),
    "test_result_query": ("Data_task_id", "TestResultParam"),
    "evaluation_result_query": ("Data_task_id", "EvaluateResult"),
    "initial_defect_task": ("InitialParam", "ResValue"),
    "ocr_task": ("OcrRequestParam", "OcrResponseReult"),
    "defect_detect_task": ("DetectRequestParam", "DetectResponseReult"),
}


def test_service_methods():
    service = mvp_pb2.DESCRIPTOR.services_by_name["FormatData"]
    assert service.full_name == "mvp_rpc.FormatData"
    found = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert found == METHODS


U64, I32, I64 = FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64
DBL, STR, MSG, ENUM = FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE, \
    FieldDescriptor.TYPE_ENUM

# message -> [(field, type, repeated)], in field-number order.
FIELDS = {
    "ParamClass": [("model_name", STR, False), ("dataset_expansion_lst", ENUM, True), ("net_model", STR, False),
                   ("model_scope", ENUM, False), ("device_type", ENUM, False), ("inital_learning_rate", DBL, False),
                   ("device_num", I32, False), ("max_num_iters", I64, False), ("batch_size", I32, False),
                   ("snap_shot_ivterval", I64, False)],
    "Data_task_request": [("param_request", MSG, False), ("task_id", U64, False), ("interface_id", U64, False),
                          ("task_type", ENUM, False), ("json_mongodb_id", STR, False), ("json_val_id", STR, False),
                          ("trained_model_id", STR, False)],
    "Data_task_id": [("task_id", U64, False), ("interface_id", U64, False), ("model_id", U64, False)],
    "Data_res_Code": [("resCode", U64, False)],
    "TrainRecord": [("task_id", U64, False), ("interface_id", U64, False), ("model_id", U64, False),
                    ("record_time", DBL, False), ("cur_iter_num", I64, False), ("loss", DBL, False),
                    ("mAP", DBL, False), ("lr", DBL, False), ("max_iter_num", I64, False),
                    ("model_name", STR, False)],
    "TrainProgressRecords": [("resCode", I32, False), ("ErrorMsg", STR, False), ("model_id_lst", STR, True),
                             ("train_records_lst", MSG, True)],
    "TestProgressParam": [("ret_state_code", I32, False), ("ErrorMsg", STR, False), ("record_time", I64, False),
                          ("cost_time", DBL, False), ("img_progress_num", I64, False),
                          ("img_sum_num", I64, False), ("end_char", STR, False), ("task_id", U64, False),
                          ("interface_id", U64, False)],
    "TestResultParam": [("ret_state_code", I32, False), ("ErrorMsg", STR, False), ("task_id", U64, False),
                        ("interface_id", U64, False), ("json_mongodb_id", STR, False),
                        ("img_mongodb_ids", STR, True)],
    "EvaluateResult": [("ret_state_code", I32, False), ("ErrorMsg", STR, False), ("task_id", U64, False),
                       ("interface_id", U64, False), ("json_mongodb_id", STR, False)],
    "InitialParam": [("device_num", I32, False), ("model_path_lst", STR, True)],
    "ResValue": [("res_code", I32, False), ("res_msg", STR, False)],
    "OcrRequestParam": [("img_mongo_id", STR, False)],
    "OcrResponseReult": [("res_code", I32, False), ("res_msg", STR, False), ("code_str", STR, False)],
    "ImgViewInfo": [("image_view_id", I32, False), ("image_mongo_id", STR, False)],
    "DetectRequestParam": [("product_id", I64, False), ("image_view_num", I32, False),
                           ("img_view_lst", MSG, True)],
    "DetectResponseReult": [("res_code", I32, False), ("res_msg", STR, False), ("result_json_mongo_id", STR, False)],
}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_message_fields(name):
    descriptor = mvp_pb2.DESCRIPTOR.message_types_by_name[name]
    found = [(f.name, f.type, f.is_repeated)
             for f in sorted(descriptor.fields, key=lambda f: f.number)]
    assert found == FIELDS[name]
    assert [f.number for f in sorted(descriptor.fields, key=lambda f: f.number)] == list(range(1, len(found) + 1))


def test_enums():
    values = {name: {v.name: v.number for v in enum.values}
              for name, enum in mvp_pb2.DESCRIPTOR.enum_types_by_name.items()}
    assert values == {
        "ExpansionDataClass": {"HOR_FLIPE": 0, "VER_FLIPE": 1, "ROTATE_90": 2, "VAGUE": 3},
        "ModelScopeClass": {"SMALL": 0, "NORMAL": 1, "BIG": 2},
        "DeviceClass": {"CPU": 0, "GPU": 1},
        "TaskTypeClass": {"TRAIN": 0, "TEST": 1},
    }
    fields = mvp_pb2.ParamClass.DESCRIPTOR.fields_by_name
    assert fields["dataset_expansion_lst"].enum_type.name == "ExpansionDataClass"
    assert fields["model_scope"].enum_type.name == "ModelScopeClass"
    assert fields["device_type"].enum_type.name == "DeviceClass"
    assert mvp_pb2.Data_task_request.DESCRIPTOR.fields_by_name["task_type"].enum_type.name == "TaskTypeClass"
