"""Building blocks for wrapping gRPC method handlers (serving.auth, serving.request_decoding): a handler of a
given streaming shape, and the responses of a response-streaming behavior."""
import grpc


def method_handler(request_streaming, response_streaming, behavior, **kwargs):
    """A grpc.RpcMethodHandler of the given streaming shape that runs `behavior` (kwargs: the
    request_deserializer and response_serializer)."""
    if request_streaming and response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)


def behavior_of(handler):
    """The function a grpc.RpcMethodHandler runs, whatever its streaming shape."""
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


async def responses_of(result):
    """The responses of a response-streaming behavior's `result`: an async iterator of them, or a coroutine that
    writes them with context.write() (then nothing is yielded here)."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result
