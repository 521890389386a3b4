"""Python clients of the native protocol.

    from serving.client import Client
    client = Client("localhost", 9000, "shapes", "inference")
    results = client.infer([{"body": open("a.png", "rb").read()}, {"body": ...}])

`instances` is a dict or a list of dicts whose values may be numpy arrays, numpy scalars, bool, int, float, str
or bytes; `uri`, `body` and `attribute` land in the request's data where evals expect them. An instance that is a
list of dicts is a multi-image request.

`infer` returns a list with one dict per instance: the result's keys (numpy arrays and numpy scalars for tensors,
plain values otherwise, "body" when the eval returned bytes), or a `Failure`, the dict {"error": message, "code":
code}, for a failed instance. A failure of the whole call returns one `Failure`. Test `isinstance(r, Failure)`:
an eval's own result may hold an "error" key.

`AsyncClient` has the same interface with `async def infer`, for callers with many calls in flight.

Security: `token` is sent as `authorization: Bearer <token>` on every call. `tls_ca` (the CA that signed the
server's certificate; None: the system's roots), `tls_cert` and `tls_key` (a client certificate, for mutual TLS)
are PEM file paths or PEM bytes; giving any of them makes the channel TLS (see serving.tls).
"""
import json

import grpc

from serving import codec
from serving.auth import bearer_metadata
from serving.codec import DEFAULT_MAX_MESSAGE_BYTES, Failure
from serving.errors import CODE_METADATA_KEY, REQUEST_ID_METADATA_KEY, code_for_grpc_status
from serving.proto import inference_pb2 as pb
from serving.proto import inference_pb2_grpc as pb_grpc
from serving.tls import client_credentials, open_channel


def _channel_options(max_message_bytes):
    return [("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)]


def error_of(rpc_error):
    """The Failure ({"error": message, "code": code}) of a failed call: the serving code from trailing metadata
    when the server sent one, else the code of the gRPC status."""
    code = None
    for key, value in rpc_error.trailing_metadata() or ():
        if key == CODE_METADATA_KEY:
            try:
                code = int(value)
            except ValueError:
                code = None
    if code is None:
        code = code_for_grpc_status(rpc_error.code(), rpc_error.details())
    return Failure(rpc_error.details() or rpc_error.code().name, code)


class _ClientBase:
    def __init__(self, host, port, servable_name, method_name="inference", *, timeout=None, request_id=None,
                 max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, token=None, tls_ca=None, tls_cert=None, tls_key=None):
        self.target = f"{host}:{port}"
        self.app = servable_name
        self.method = method_name
        self.timeout = timeout
        self.request_id = request_id
        self._options = _channel_options(max_message_bytes)
        self._auth = bearer_metadata(token)
        self._credentials = client_credentials(tls_ca, tls_cert, tls_key)

    def _metadata(self):
        metadata = self._auth
        if self.request_id:
            metadata += ((REQUEST_ID_METADATA_KEY, self.request_id),)
        return metadata or None

    def _call_args(self, instances, params):
        request = codec.instances_to_request(self.app, self.method, instances, params)
        return request, {"timeout": self.timeout, "metadata": self._metadata()}

    def _open_channel(self, grpc_module):
        """A channel of `grpc_module` (grpc or grpc.aio) to the target: TLS when TLS was asked for."""
        return open_channel(grpc_module, self.target, self._credentials, self._options)

    @staticmethod
    def _results(response):
        return [codec.result_to_dict(result) for result in response.results]


class Client(_ClientBase):
    """A blocking client of one app's method; see the module docstring."""

    def __init__(self, host, port, servable_name, method_name="inference", **kwargs):
        super().__init__(host, port, servable_name, method_name, **kwargs)
        self._channel = self._open_channel(grpc)
        self._stub = pb_grpc.InferenceStub(self._channel)

    def infer(self, instances, params=None):
        request, kwargs = self._call_args(instances, params)
        try:
            return self._results(self._stub.Infer(request, **kwargs))
        except grpc.RpcError as exc:
            return error_of(exc)

    def apps(self):
        """[{name, state, reason, config, methods}] of every app the server holds."""
        response = self._stub.ListApps(pb.ListAppsRequest(), timeout=self.timeout, metadata=self._metadata())
        return [_app_dict(app) for app in response.apps]

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_ClientBase):
    """An asyncio client of one app's method; create it inside the running event loop."""

    def __init__(self, host, port, servable_name, method_name="inference", **kwargs):
        super().__init__(host, port, servable_name, method_name, **kwargs)
        self._channel = self._open_channel(grpc.aio)
        self._stub = pb_grpc.InferenceStub(self._channel)

    async def infer(self, instances, params=None):
        request, kwargs = self._call_args(instances, params)
        try:
            return self._results(await self._stub.Infer(request, **kwargs))
        except grpc.RpcError as exc:
            return error_of(exc)

    async def apps(self):
        response = await self._stub.ListApps(pb.ListAppsRequest(), timeout=self.timeout,
                                             metadata=self._metadata())
        return [_app_dict(app) for app in response.apps]

    async def close(self):
        await self._channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


def _app_dict(app):
    return {"name": app.name, "state": app.state, "reason": app.reason,
            "config": json.loads(app.config) if app.config else {}, "methods": list(app.methods)}
