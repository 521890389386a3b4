"""The `serving task` and `serving template` commands: clients of a running server's MVP services.

    serving task start --task-id N [--interface-id N] [--type train|test] --dataset ID [--val ID] [--model ID]
                       [--params JSON]        JSON: ParamClass fields, e.g. '{"max_num_iters": 100, ...}'
    serving task stop|pause|resume|delete|show TASK_ID [--interface-id N]
    serving task ls
    serving task progress TASK_ID [--interface-id N] [--follow]    TrainRecords as JSON lines (--follow: live)
    serving template create NAME (--from-task N [--from-interface-id N] | --params JSON --dataset ID [--val ID]
                                  [--model ID]) [--description TEXT]
    serving template ls | show NAME | delete NAME
    serving template start NAME --task-id N [--interface-id N] [--dataset ID] [--val ID] [--model ID]
    serving export --model-id ID [--name APP]      serve a snapshot: export it and load it into the server
    serving export --model-id ID --out DIR [--data-dir D] [--evals E]    write the app folder only (offline)

Every command takes --target HOST:PORT (default $SERVING_TARGET or localhost:9000), --token (default
$SERVING_TOKEN) and the TLS flags of the other client commands (--tls-ca, --tls-cert, --tls-key). Output is JSON;
a refused call prints "code: message" on stderr and exits 1, and so does a call that fails on the way (no server
listening: "503: ... (UNAVAILABLE)"). Task ids are uint64, as on the wire: others are refused by the argument
parser (exit 2).
"""
import argparse
import json
import os
import sys
from pathlib import Path

from serving.cli_args import add_client_security, client_security, json_object

DEFAULT_TARGET = "localhost:9000"
CALL_TIMEOUT_S = 30.0
UINT64_MAX = 2**64 - 1


def uint64(text):
    """argparse type: a task or interface id, a uint64 as the proto's fields are (protobuf would raise on any
    other value after parsing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= UINT64_MAX:
        raise argparse.ArgumentTypeError(f"{value} is out of range: ids are 0 to {UINT64_MAX}")
    return value


def add_job_commands(subparsers):
    """Register `task` and `template` on the `serving` command's subparsers. Each leaf command sets `func`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default=os.environ.get("SERVING_TARGET", DEFAULT_TARGET),
                        help="the server, HOST:PORT [SERVING_TARGET, default localhost:9000]")
    add_client_security(common)
    task_ref = argparse.ArgumentParser(add_help=False, parents=[common])
    task_ref.add_argument("task_id", type=uint64)
    task_ref.add_argument("--interface-id", type=uint64, default=0)

    task = subparsers.add_parser("task", help="MVP training and test tasks on a running server")
    task_commands = task.add_subparsers(dest="task_command", required=True)
    start = task_commands.add_parser("start", parents=[common], help="start a TRAIN or TEST task")
    start.add_argument("--task-id", type=uint64, required=True)
    start.add_argument("--interface-id", type=uint64, default=0)
    start.add_argument("--type", choices=["train", "test"], default="train")
    start.add_argument("--dataset", default="", help="store id of the dataset (json_mongodb_id)")
    start.add_argument("--val", default="", help="store id of the validation dataset (json_val_id)")
    start.add_argument("--model", default="", help="store id of a model: to test, or to start training from")
    start.add_argument("--params", type=json_object, default=None, help="ParamClass fields as a JSON object")
    start.set_defaults(func=cmd_task_start)
    for name, help_text in (("stop", "stop a task (keeps its last snapshot)"),
                            ("pause", "pause a training task (resume continues from its snapshot)"),
                            ("resume", "queue a PAUSED or INTERRUPTED task again"),
                            ("delete", "forget a task at rest and its records"), ("show", "print a task")):
        sub = task_commands.add_parser(name, parents=[task_ref], help=help_text)
        sub.set_defaults(func=cmd_task_action, action=name)
    ls = task_commands.add_parser("ls", parents=[common], help="one JSON line per task")
    ls.set_defaults(func=cmd_task_ls)
    progress = task_commands.add_parser("progress", parents=[task_ref], help="TrainRecords as JSON lines")
    progress.add_argument("--follow", action="store_true", help="stream records until the task is at rest")
    progress.set_defaults(func=cmd_task_progress)

    template = subparsers.add_parser("template", help="saved training configurations")
    template_commands = template.add_subparsers(dest="template_command", required=True)
    create = template_commands.add_parser("create", parents=[common], help="save a template")
    create.add_argument("name")
    create.add_argument("--description", default="")
    create.add_argument("--from-task", type=uint64, default=0, help="a DONE or STOPPED training task's id")
    create.add_argument("--from-interface-id", type=uint64, default=0)
    create.add_argument("--params", type=json_object, default=None, help="ParamClass fields as a JSON object")
    create.add_argument("--dataset", default="")
    create.add_argument("--val", default="")
    create.add_argument("--model", default="")
    create.set_defaults(func=cmd_template_create)
    for name in ("ls", "show", "delete"):
        sub = template_commands.add_parser(name, parents=[common], help=f"{name} templates")
        if name != "ls":
            sub.add_argument("name")
        sub.set_defaults(func=cmd_template_query, action=name)
    tstart = template_commands.add_parser("start", parents=[common], help="start a training task from a template")
    tstart.add_argument("name")
    tstart.add_argument("--task-id", type=uint64, required=True)
    tstart.add_argument("--interface-id", type=uint64, default=0)
    tstart.add_argument("--dataset", default="")
    tstart.add_argument("--val", default="")
    tstart.add_argument("--model", default="")
    tstart.set_defaults(func=cmd_template_start)

    export = subparsers.add_parser("export", parents=[common], help="serve a training snapshot as an app")
    export.add_argument("--model-id", required=True, help="store id of the snapshot (a model_id_lst entry)")
    export.add_argument("--name", default="", help="the app's name (default <net_model>_<task_id>_<iteration>)")
    export.add_argument("--out", type=Path, default=None,
                        help="write the app folder here instead of asking the server (reads the store itself)")
    export.add_argument("--data-dir", type=Path, default=os.environ.get("SERVING_DATA_DIR", "var"),
                        help="with --out: the store's folder [SERVING_DATA_DIR, default ./var]")
    export.add_argument("--evals", type=Path, default=os.environ.get("SERVING_EVALS", "evals"),
                        help="with --out: the evals dir holding the app that trained the model [SERVING_EVALS]")
    export.set_defaults(func=cmd_export)


class _Connection:
    """A channel to the server with the FormatData and TaskControl stubs."""

    def __init__(self, args):
        import grpc

        from serving.auth import bearer_metadata
        from serving.proto import mvp_pb2_grpc
        from serving.tls import client_credentials, open_channel

        security = client_security(args)
        credentials = client_credentials(security["tls_ca"], security["tls_cert"], security["tls_key"])
        self.channel = open_channel(grpc, args.target, credentials)
        self.metadata = bearer_metadata(security["token"])
        self.format_data = mvp_pb2_grpc.FormatDataStub(self.channel)
        self.control = mvp_pb2_grpc.TaskControlStub(self.channel)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.channel.close()

    def call(self, method, request, with_call=False, timeout=CALL_TIMEOUT_S):
        """Call a unary method; with `with_call`, (reply, call) to read the trailing metadata too. A call that
        fails (no server, refused by its auth, deadline) ends the command: "code: message" on stderr, exit 1."""
        import grpc

        try:
            if with_call:
                return method.with_call(request, timeout=timeout, metadata=self.metadata)
            return method(request, timeout=timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise SystemExit(_report_rpc_error(exc)) from None


def _report_rpc_error(exc):
    """Print a failed call as a refused one (the serving code and message, as `serving apps` reads them, and the
    gRPC status); the exit status."""
    from serving.client import error_of

    error = error_of(exc)
    return _report(error["code"], f"{error['error']} ({exc.code().name})")


def _report(code, message, value_json=""):
    """Print a reply; the exit status."""
    if code:
        print(f"{code}: {message}", file=sys.stderr)
        return 1
    if value_json:
        value = json.loads(value_json)
        for item in value if isinstance(value, list) else [value]:
            print(json.dumps(item, ensure_ascii=False))
    return 0


def _params_message(params):
    from serving.proto import mvp_pb2

    try:
        return mvp_pb2.ParamClass(**(params or {}))
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"serving: --params: {exc}") from None


def _data_task_id(args):
    from serving.proto import mvp_pb2

    return mvp_pb2.Data_task_id(task_id=args.task_id, interface_id=args.interface_id)


def cmd_task_start(args):
    from serving.proto import mvp_pb2

    request = mvp_pb2.Data_task_request(
        param_request=_params_message(args.params), task_id=args.task_id, interface_id=args.interface_id,
        task_type=mvp_pb2.TRAIN if args.type == "train" else mvp_pb2.TEST, json_mongodb_id=args.dataset,
        json_val_id=args.val, trained_model_id=args.model)
    with _Connection(args) as conn:
        reply, call = conn.call(conn.format_data.task_start_request, request, with_call=True)
        message = dict(call.trailing_metadata() or ()).get("serving-message", "")
        if reply.resCode:
            return _report(reply.resCode, message)
        return _report(0, "", conn.call(conn.control.task_query, _data_task_id(args)).json)


def cmd_task_action(args):
    with _Connection(args) as conn:
        if args.action == "stop":
            reply, call = conn.call(conn.format_data.task_stop_request, _data_task_id(args), with_call=True)
            if reply.resCode:
                return _report(reply.resCode, dict(call.trailing_metadata() or ()).get("serving-message", ""))
            reply = conn.call(conn.control.task_query, _data_task_id(args))
        else:
            method = {"pause": conn.control.task_pause_request, "resume": conn.control.task_resume_request,
                      "delete": conn.control.task_delete_request, "show": conn.control.task_query}[args.action]
            reply = conn.call(method, _data_task_id(args))
        return _report(reply.resCode, reply.ErrorMsg, reply.json)


def cmd_task_ls(args):
    from serving.proto import mvp_pb2

    with _Connection(args) as conn:
        reply = conn.call(conn.control.task_query, mvp_pb2.Data_task_id(task_id=0))
        return _report(reply.resCode, reply.ErrorMsg, reply.json)


def _record_dict(record):
    return {"model_id": record.model_id, "record_time": record.record_time, "cur_iter_num": record.cur_iter_num,
            "loss": record.loss, "mAP": record.mAP, "lr": record.lr, "max_iter_num": record.max_iter_num,
            "model_name": record.model_name}


def cmd_task_progress(args):
    import grpc

    with _Connection(args) as conn:
        if args.follow:
            try:
                for record in conn.control.stream_train_progress(_data_task_id(args), metadata=conn.metadata):
                    print(json.dumps(_record_dict(record)), flush=True)
            except grpc.RpcError as exc:
                return _report_rpc_error(exc)
            return 0
        reply = conn.call(conn.format_data.get_train_progresses, _data_task_id(args))
        if reply.resCode:
            return _report(reply.resCode, reply.ErrorMsg)
        print(json.dumps({"model_id_lst": list(reply.model_id_lst)}))
        for record in reply.train_records_lst:
            print(json.dumps(_record_dict(record)))
        return 0


def cmd_template_create(args):
    from serving.proto import mvp_pb2

    request = mvp_pb2.TemplateRequest(name=args.name, description=args.description,
                                      from_task_id=args.from_task, from_interface_id=args.from_interface_id,
                                      json_mongodb_id=args.dataset, json_val_id=args.val,
                                      trained_model_id=args.model)
    if not args.from_task:
        request.param_request.CopyFrom(_params_message(args.params))
    with _Connection(args) as conn:
        reply = conn.call(conn.control.template_create, request)
        return _report(reply.resCode, reply.ErrorMsg, reply.json)


def cmd_template_query(args):
    from serving.proto import mvp_pb2

    with _Connection(args) as conn:
        request = mvp_pb2.TemplateName(name=getattr(args, "name", ""))
        method = conn.control.template_delete if args.action == "delete" else conn.control.template_query
        reply = conn.call(method, request)
        return _report(reply.resCode, reply.ErrorMsg, reply.json)


def cmd_template_start(args):
    from serving.proto import mvp_pb2

    request = mvp_pb2.TemplateStartRequest(name=args.name, task_id=args.task_id, interface_id=args.interface_id,
                                           json_mongodb_id=args.dataset, json_val_id=args.val,
                                           trained_model_id=args.model)
    with _Connection(args) as conn:
        reply = conn.call(conn.control.template_start, request)
        return _report(reply.resCode, reply.ErrorMsg, reply.json)


def cmd_export(args):
    if args.out is not None:
        from serving.jobs.codes import JobError
        from serving.jobs.export import export_model_folder

        try:
            export_model_folder(args.data_dir, args.evals, args.model_id, args.out)
        except JobError as exc:
            return _report(exc.code, exc.message)
        print(json.dumps({"model_id": args.model_id, "path": str(args.out.resolve())}))
        return 0
    from serving.proto import mvp_pb2

    with _Connection(args) as conn:
        from serving.jobs.export import EXPORT_TIMEOUT_S

        request = mvp_pb2.ModelExportRequest(model_id=args.model_id, app_name=args.name)
        reply = conn.call(conn.control.model_export, request, timeout=EXPORT_TIMEOUT_S + CALL_TIMEOUT_S)
        return _report(reply.resCode, reply.ErrorMsg, reply.json)
