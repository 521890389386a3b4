"""A minimal grpc.aio server with a batcher: the yardstick `bench_h2load.py` measures `serving` against.

    python bench/baseline_server.py MODEL.onnx [--port 0] [--batch-size 32] [--empty]

It serves only `inference.GRPCInferenceService/ModelInfer` for one ONNX model, with nothing a runtime adds:
no validation beyond what decoding needs, no deadlines, no metrics, no error mapping, no eval contract. Requests
join an asyncio queue; one loop takes the first, drains what else is waiting (up to `--batch-size`), runs the
stacked batch on one inference thread (ONNX Runtime at one intra-op thread, no spinning) and answers each caller
with its row. `--empty` answers every call at once without inference: gRPC's own floor for this payload.

Prints `serving on HOST:PORT` when ready, like `serving serve`.
"""
import argparse
import asyncio
import concurrent.futures
import sys
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.proto import kserve_pb2 as pb  # noqa: E402  (the repo's copy of the KServe messages)


def new_session(model_path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


async def serve(model_path, host, port, batch_size, empty):
    session = new_session(model_path)
    input_name = session.get_inputs()[0].name
    loop = asyncio.get_running_loop()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    queue = asyncio.Queue()

    def respond(request, row):
        output = pb.ModelInferResponse.InferOutputTensor(name="output", datatype="FP32", shape=[1, *row.shape])
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id, outputs=[output],
                                     raw_output_contents=[row.tobytes()])

    async def model_infer(request, context):
        if empty:
            return pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        tensor = request.inputs[0]
        image = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(tensor.shape)[1:])
        answer = loop.create_future()
        queue.put_nowait((image, answer))
        return respond(request, await answer)

    async def batch_loop():
        while True:
            batch = [await queue.get()]
            while len(batch) < batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            images = np.stack([image for image, _ in batch])
            logits = await loop.run_in_executor(pool, lambda: session.run(None, {input_name: images})[0])
            for (_, answer), row in zip(batch, logits):
                if not answer.done():
                    answer.set_result(row)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(model_infer, request_deserializer=pb.ModelInferRequest.FromString,
                                                  response_serializer=pb.ModelInferResponse.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": handler}),))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    batcher = loop.create_task(batch_loop())
    print(f"serving on {host}:{bound}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        batcher.cancel()
        pool.shutdown(wait=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--empty", action="store_true", help="answer without inference: gRPC's floor")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.model, args.host, args.port, args.batch_size, args.empty))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
