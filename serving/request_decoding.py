"""Request messages that do not decode are answered INVALID_ARGUMENT (400), like any other bad input.

grpc.aio decodes a request with the handler's `request_deserializer` before the servicer runs; when that raises,
gRPC ends the call with UNKNOWN and "Unexpected <class 'DecodeError'>", a status that says nothing useful to a
client. `DecodingRegistrar(server)` stands in for the server while the servicers register (the generated
`add_*_to_server` functions and libraries only call `add_generic_rpc_handlers` and
`add_registered_method_handlers`): every handler it forwards takes the raw bytes and decodes them itself, ending
the call with 400 "the request is not a valid <message type>" when they do not decode. In a request stream, a
message that does not decode ends the stream there, as if the client had closed it: the servicer answers what
came before, then the call ends with that 400 (aborting from inside the servicer's reading, which may run in a
task of its own, could leave the call hanging). The servicers are unchanged.
"""
import inspect

import grpc

from serving.errors import BAD_REQUEST, abort_with
from serving.rpc_handlers import behavior_of, method_handler, responses_of


def _message_name(deserializer):
    cls = getattr(deserializer, "__self__", None)  # a message class's FromString
    descriptor = getattr(cls, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "request message"


def _refusal(name):
    return f"the request is not a valid {name} message"


def _decoded(deserializer, raw):
    """The message of `raw`, or None when it does not decode (a message class's FromString never returns None).
    A plain function: the calls that decode, nearly all, pay no extra coroutine."""
    try:
        return deserializer(raw)
    except Exception:  # DecodeError, or whatever a custom deserializer raises on bad bytes
        return None


async def _decoded_stream(deserializer, raw_iterator, name, failures):
    """The decoded messages of a request stream, up to the first that does not decode (noted in `failures`)."""
    async for raw in raw_iterator:
        message = _decoded(deserializer, raw)
        if message is None:
            failures.append(_refusal(name))
            return
        yield message


def decoding_handler(handler):
    """`handler` (a grpc.RpcMethodHandler) decoding its own requests; unchanged when it has no deserializer."""
    if handler is None or handler.request_deserializer is None:
        return handler
    deserializer = handler.request_deserializer
    name = _message_name(deserializer)
    behavior = behavior_of(handler)
    if handler.request_streaming:
        # gRPC tells how to run a behavior by its kind of function: keep the servicer's kind.
        if inspect.isasyncgenfunction(behavior):
            async def decoding(raw_iterator, context):
                failures = []
                async for response in behavior(_decoded_stream(deserializer, raw_iterator, name, failures), context):
                    yield response
                if failures:
                    await abort_with(context, BAD_REQUEST, failures[0])
        else:
            async def decoding(raw_iterator, context):
                failures = []
                result = await behavior(_decoded_stream(deserializer, raw_iterator, name, failures), context)
                if failures:
                    await abort_with(context, BAD_REQUEST, failures[0])
                return result
    elif handler.response_streaming:
        async def decoding(raw, context):
            request = _decoded(deserializer, raw)
            if request is None:
                await abort_with(context, BAD_REQUEST, _refusal(name))
            async for response in responses_of(behavior(request, context)):
                yield response
    else:
        async def decoding(raw, context):
            request = _decoded(deserializer, raw)
            if request is None:
                await abort_with(context, BAD_REQUEST, _refusal(name))
            return await behavior(request, context)
    return method_handler(handler.request_streaming, handler.response_streaming, decoding,
                          request_deserializer=None, response_serializer=handler.response_serializer)


class _DecodingGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner):
        self._inner = inner
        self._handlers = {}  # method -> decoding handler: built once per method, not per call

    def service(self, handler_call_details):
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if method not in self._handlers:
            self._handlers[method] = decoding_handler(handler)
        return self._handlers[method]


class DecodingRegistrar:
    """Pass this instead of a grpc.aio server to `add_*_to_server` functions: see the module docstring."""

    def __init__(self, server):
        self._server = server
        #: Every handler registered, as registered on the server (serving.frontend resolves fast calls with them).
        self.generic_handlers = []

    def add_generic_rpc_handlers(self, generic_rpc_handlers):
        handlers = tuple(_DecodingGenericHandler(h) for h in generic_rpc_handlers)
        self.generic_handlers.extend(handlers)
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        """Not forwarded: the generated code registers every method twice, in the generic handler forwarded by
        `add_generic_rpc_handlers` and here. grpc.aio keeps one pending call request per registered method and
        waits on all of them (asyncio.wait) for every call it accepts: with the ~30 methods served that is ~10
        microseconds of the event loop per call, measured; through the generic handler alone it waits on one."""
