"""The native protocol's servicer (`serving.v1.Inference`, protos/inference.proto)."""
import json
import logging

from serving import codec
from serving.errors import INTERNAL, MAX_REQUEST_ID_CHARS, REQUEST_ID_METADATA_KEY, ServingError, abort_with
from serving.dataplane import new_request_id
from serving.proto import inference_pb2 as pb
from serving.proto import inference_pb2_grpc as pb_grpc

log = logging.getLogger("serving.native")


def request_id_of(context):
    """The caller's `x-request-id`, or a new one; sent back in the initial metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and value:
            return value[:MAX_REQUEST_ID_CHARS]
    return new_request_id()


def app_info_message(info):
    return pb.AppInfo(name=info["name"], state=info["state"], reason=info["reason"],
                      config=json.dumps(info["config"]), methods=info["methods"])


class NativeServicer(pb_grpc.InferenceServicer):
    def __init__(self, dataplane):
        self.dataplane = dataplane

    async def Infer(self, request, context):
        request_id = request_id_of(context)
        try:
            requests = codec.request_to_eval_requests(request)
            outcomes = await self.dataplane.infer(request.app, request.method, requests, request_id,
                                                  context.time_remaining())
            return pb.InferResponse(results=[codec.outcome_to_result(o) for o in outcomes], request_id=request_id)
        except ServingError as exc:
            await abort_with(context, exc.code, exc.message, request_id)
            return None
        except Exception:
            # A bug of ours: the traceback goes to the log, never onto the wire.
            log.exception("[%s] Infer failed", request_id)
            await abort_with(context, INTERNAL, f"internal error (request id {request_id})", request_id)
            return None

    async def ListApps(self, request, context):
        apps = self.dataplane.registry.apps.values()
        return pb.ListAppsResponse(apps=[app_info_message(app.info()) for app in apps])

    async def GetApp(self, request, context):
        try:
            app = self.dataplane.registry.get(request.name)
        except ServingError as exc:
            await abort_with(context, exc.code, exc.message)
            return None
        return app_info_message(app.info())
