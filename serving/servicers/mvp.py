"""The MVP servicers: seed 000's `mvp_rpc.FormatData` (task start/stop, progress, test results) and the added
`mvp_rpc.TaskControl` (pause/resume/delete/query, streamed progress, templates, model export), thin layers over
serving.jobs.JobManager, and the MVI calls of FormatData over serving.inspection.Inspection.

Failures are answered, not raised: the reply's code field (resCode / ret_state_code) carries a
serving.jobs.codes value and its ErrorMsg the message. The seed's Data_res_Code has no message field, so for
task_start_request / task_stop_request the message travels in the trailing metadata `serving-message` (next to
`serving-code`), and is logged. The MVI methods answer with res_code / res_msg the same way (0 and "OK: ..." on success).

Data_task_id.model_id: get_train_progresses returns only the records of model number k when it is k > 0 (404
when the task has fewer models); the test queries ignore it (a TEST task runs one model, trained_model_id).
"""
import json
import logging
import time

from serving.errors import CODE_METADATA_KEY, MAX_DETAILS_CHARS, ServingError, abort_with, metadata_text
from serving.servicers.native import request_id_of
from serving.jobs import db as jobdb
from serving.jobs.codes import INTERNAL, OK
from serving.proto import mvp_pb2 as pb
from serving.proto import mvp_pb2_grpc as pb_grpc

log = logging.getLogger("serving.mvp")

MESSAGE_METADATA_KEY = "serving-message"
_TASK_TYPES = {pb.TRAIN: jobdb.TRAIN, pb.TEST: jobdb.TEST}


def _key(request):
    return jobdb.key_of(request.task_id, request.interface_id)


async def _answer(call, what):
    """(code, message, value) of awaiting `call`: a ServingError becomes its code, anything else 500."""
    try:
        return OK, "OK", await call
    except ServingError as exc:
        return exc.code, exc.message, None
    except Exception:
        log.exception("%s failed", what)
        return INTERNAL, f"internal error in {what} (see the server log)", None


def _with_message(context, code, message):
    """Put code and message in the trailing metadata (replies whose message type has no ErrorMsg)."""
    if code != OK:
        context.set_trailing_metadata(((CODE_METADATA_KEY, str(code)),
                                       (MESSAGE_METADATA_KEY, metadata_text(message, MAX_DETAILS_CHARS))))


def _param_dict(message):
    """A ParamClass as the dict serving.jobs checks (every field, unset ones as proto3 defaults)."""
    return {"model_name": message.model_name, "dataset_expansion_lst": list(message.dataset_expansion_lst),
            "net_model": message.net_model, "model_scope": message.model_scope, "device_type": message.device_type,
            "inital_learning_rate": message.inital_learning_rate, "device_num": message.device_num,
            "max_num_iters": message.max_num_iters, "batch_size": message.batch_size,
            "snap_shot_ivterval": message.snap_shot_ivterval}


def train_record(row, task_id, interface_id):
    return pb.TrainRecord(task_id=task_id, interface_id=interface_id, model_id=row["model_no"],
                          record_time=row["record_time"], cur_iter_num=row["cur_iter"], loss=row["loss"],
                          mAP=row["map"], lr=row["lr"], max_iter_num=row["max_iter"], model_name=row["model_name"])


class FormatDataServicer(pb_grpc.FormatDataServicer):
    """Seed 000's methods: the MVP task calls over `jobs` (the server's JobManager), the MVI calls over
    `inspection` (serving.inspection.Inspection)."""

    def __init__(self, jobs, inspection):
        self.jobs = jobs
        self.inspection = inspection

    async def task_start_request(self, request, context):
        if request.task_type not in _TASK_TYPES:
            code, message = 400, f"task_type must be 0 (TRAIN) or 1 (TEST), got {request.task_type}"
        else:
            spec = {"task_id": request.task_id, "interface_id": request.interface_id,
                    "task_type": _TASK_TYPES[request.task_type],
                    "param_request": _param_dict(request.param_request) if request.HasField("param_request")
                    else {}, "json_mongodb_id": request.json_mongodb_id, "json_val_id": request.json_val_id,
                    "trained_model_id": request.trained_model_id}
            code, message, _ = await _answer(self.jobs.submit(spec), "task_start_request")
        if code != OK:
            log.info("task_start_request %d/%d refused (%d): %s", request.task_id, request.interface_id, code,
                     message)
        _with_message(context, code, message)
        return pb.Data_res_Code(resCode=code)

    async def task_stop_request(self, request, context):
        code, message, _ = await _answer(self.jobs.stop(_key(request)), "task_stop_request")
        _with_message(context, code, message)
        return pb.Data_res_Code(resCode=code)

    async def get_train_progresses(self, request, context):
        code, message, value = await _answer(self.jobs.train_progress(_key(request), request.model_id),
                                             "get_train_progresses")
        if code != OK:
            return pb.TrainProgressRecords(resCode=code, ErrorMsg=message)
        models, records = value
        return pb.TrainProgressRecords(
            resCode=OK, ErrorMsg="OK", model_id_lst=[m["store_id"] for m in models],
            train_records_lst=[train_record(row, request.task_id, request.interface_id) for row in records])

    async def test_progress_query(self, request, context):
        code, message, task = await _answer(self.jobs.test_task(_key(request), False), "test_progress_query")
        reply = pb.TestProgressParam(ret_state_code=code, ErrorMsg=message, task_id=request.task_id,
                                     interface_id=request.interface_id)
        if code != OK:
            return reply
        reply.img_progress_num = task["test_done"]
        reply.img_sum_num = task["test_total"]
        reply.record_time = int(task["progress_at"] or task["created_at"])
        if task["started_at"]:
            end = task["ended_at"] if task["state"] not in jobdb.ACTIVE else None
            reply.cost_time = max((end or time.time()) - task["started_at"], 0.0)
        reply.end_char = "c" if task["state"] in jobdb.ACTIVE else "z"
        if task["state"] not in (jobdb.DONE, *jobdb.ACTIVE):
            reply.ErrorMsg = f"task {task['state']}" + (f": {task['error']}" if task["error"] else "")
        return reply

    async def test_result_query(self, request, context):
        code, message, task = await _answer(self.jobs.test_task(_key(request), True), "test_result_query")
        reply = pb.TestResultParam(ret_state_code=code, ErrorMsg=message, task_id=request.task_id,
                                   interface_id=request.interface_id)
        if code == OK:
            reply.json_mongodb_id = task["result_json_id"]
            reply.img_mongodb_ids.extend(task["result_image_ids"])
        return reply

    async def evaluation_result_query(self, request, context):
        code, message, task = await _answer(self.jobs.test_task(_key(request), True), "evaluation_result_query")
        reply = pb.EvaluateResult(ret_state_code=code, ErrorMsg=message, task_id=request.task_id,
                                  interface_id=request.interface_id)
        if code == OK:
            reply.json_mongodb_id = task["eval_json_id"]
        return reply

    # ---- MVI (serving.inspection) ---------------------------------------------------------------------------

    async def initial_defect_task(self, request, context):
        code, message, loaded = await _answer(
            self.inspection.initialize(request.device_num, list(request.model_path_lst)), "initial_defect_task")
        if code == OK:
            message = "OK: " + ", ".join(loaded) + " ready"
        return pb.ResValue(res_code=code, res_msg=message)

    async def ocr_task(self, request, context):
        call = self.inspection.ocr(request.img_mongo_id, request_id_of(context), context.time_remaining())
        code, message, code_str = await _answer(call, "ocr_task")
        return pb.OcrResponseReult(res_code=code, res_msg=message, code_str=code_str or "")

    async def defect_detect_task(self, request, context):
        views = [(view.image_view_id, view.image_mongo_id) for view in request.img_view_lst]
        call = self.inspection.detect(request.product_id, request.image_view_num, views, request_id_of(context),
                                      context.time_remaining())
        code, message, result_id = await _answer(call, "defect_detect_task")
        return pb.DetectResponseReult(res_code=code, res_msg=message, result_json_mongo_id=result_id or "")


def _reply(code, message, value=None):
    return pb.TaskReply(resCode=code, ErrorMsg=message,
                        json=json.dumps(value, ensure_ascii=False) if value is not None else "")


class TaskControlServicer(pb_grpc.TaskControlServicer):
    """The added task-control methods (protos/mvp.proto, service TaskControl)."""

    def __init__(self, jobs):
        self.jobs = jobs

    async def _run(self, call, what):
        return _reply(*await _answer(call, what))

    async def _then_task(self, call, key):
        await call
        return await self.jobs.task(key)

    async def task_pause_request(self, request, context):
        return await self._run(self._then_task(self.jobs.pause(_key(request)), _key(request)), "task_pause")

    async def task_resume_request(self, request, context):
        return await self._run(self._then_task(self.jobs.resume(_key(request)), _key(request)), "task_resume")

    async def task_delete_request(self, request, context):
        return await self._run(self.jobs.delete(_key(request)), "task_delete")

    async def task_query(self, request, context):
        if request.task_id == 0:
            return await self._run(self.jobs.tasks(), "task_query")
        return await self._run(self.jobs.task(_key(request)), "task_query")

    async def stream_train_progress(self, request, context):
        try:
            async for row in self.jobs.stream_records(_key(request), request.model_id):
                yield train_record(row, request.task_id, request.interface_id)
        except ServingError as exc:
            await abort_with(context, exc.code, exc.message)
        except Exception:
            # As _answer does for the unary calls: a 500 that points at the log, not gRPC's UNKNOWN with the
            # Python exception's text.
            log.exception("stream_train_progress failed")
            await abort_with(context, INTERNAL, "internal error in stream_train_progress (see the server log)")

    async def template_create(self, request, context):
        spec = {"name": request.name, "description": request.description,
                "json_mongodb_id": request.json_mongodb_id, "json_val_id": request.json_val_id,
                "trained_model_id": request.trained_model_id}
        if request.from_task_id:
            spec["from_task"] = (request.from_task_id, request.from_interface_id)
        else:
            spec["param_request"] = _param_dict(request.param_request)
        return await self._run(self.jobs.create_template(spec), "template_create")

    async def template_query(self, request, context):
        if not request.name:
            return await self._run(self.jobs.templates(), "template_query")
        return await self._run(self.jobs.template(request.name), "template_query")

    async def template_delete(self, request, context):
        return await self._run(self.jobs.delete_template(request.name), "template_delete")

    async def template_start(self, request, context):
        overrides = {"json_mongodb_id": request.json_mongodb_id, "json_val_id": request.json_val_id,
                     "trained_model_id": request.trained_model_id}
        key = jobdb.key_of(request.task_id, request.interface_id)

        async def start():
            await self.jobs.start_from_template(request.name, request.task_id, request.interface_id, overrides)
            return await self.jobs.task(key)

        return await self._run(start(), "template_start")

    async def model_export(self, request, context):
        return await self._run(self.jobs.export_model(request.model_id, request.app_name), "model_export")


def add_mvp_servicers_to_server(jobs, inspection, server):
    """Register FormatData and TaskControl on a grpc.aio server; the full service names (for reflection)."""
    pb_grpc.add_FormatDataServicer_to_server(FormatDataServicer(jobs, inspection), server)
    pb_grpc.add_TaskControlServicer_to_server(TaskControlServicer(jobs), server)
    return tuple(pb.DESCRIPTOR.services_by_name[name].full_name for name in ("FormatData", "TaskControl"))
