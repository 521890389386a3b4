"""Server capacity with a C load generator: served vs raw in-process ONNX Runtime, in one run.

    .venv/bin/python bench/bench_h2load.py [--requests 6000] [--in-flight 1,8,32] [--workers 1]
                                           [--protocol kserve|native] [--models small,large]

Needs h2load (Debian's nghttp2-client: `apt-get install nghttp2-client`).

Two CNNs are generated here with onnx.helper (fixed random weights, no download): `small`, about 0.15 ms for a
3x64x64 image, and `large`, about 6 ms for 3x128x128, both at one intra-op thread without spinning. Each is
served by a generic tensor app (batch_size 32, batch window 2 ms, preprocessing none). For each model:

1. raw: `session.run` in this process, one image per run, for a few seconds: images/s;
2. served: h2load sends one pre-encoded single-instance request (KServe v2 ModelInfer by default, or the native
   Infer) on one connection with 1, 8 and 32 streams in flight: requests/s, mean latency, and the ratio to raw.

A benchmark, not a test: it prints figures and writes bench/results/h2load.json.
"""
import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# name: (input side, conv channels, the same-size convs after each stride-2 conv)
MODELS = {"small": (64, (24, 48, 96), 0), "large": (128, (28, 56, 112, 224), 2)}

TENSOR_APP = '''"""A generic tensor app for benchmarks: data["input"] float32 CHW -> {"output": logits}."""
import numpy as np
import onnxruntime as ort

from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = configs["model_params"].get("intra_op_threads", 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(configs["model_files"]["model"], options, providers=["CPUExecutionProvider"])
    return {"session": session, "input": session.get_inputs()[0].name}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    batch = np.stack([r["data"]["input"] for r in requests])
    logits = model["session"].run(None, {model["input"]: batch})[0]
    return [{"code": 0, "message": "", "result": {"output": row}} for row in logits], 0, ""
'''


def build_cnn(path, side, channels, extra_convs, seed=0):
    """A plain conv/relu CNN ending in global average pooling and a 10-way linear layer."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(name, source, cin, cout, stride):
        weight = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"{name}_w"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}_b"))
        nodes.append(helper.make_node("Conv", [source, f"{name}_w", f"{name}_b"], [f"{name}_c"],
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"{name}_c"], [f"{name}_r"]))
        return f"{name}_r"

    tensor, width = "input", 3
    for i, out in enumerate(channels):
        tensor = conv(f"down{i}", tensor, width, out, 2)
        for j in range(extra_convs):
            tensor = conv(f"same{i}_{j}", tensor, out, out, 1)
        width = out
    nodes.append(helper.make_node("GlobalAveragePool", [tensor], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"]))
    inits.append(numpy_helper.from_array(rng.standard_normal((width, 10)).astype(np.float32) * 0.1, "fc_w"))
    nodes.append(helper.make_node("MatMul", ["flat", "fc_w"], ["logits"]))
    graph = helper.make_graph(nodes, "bench_cnn",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def raw_images_per_s(model_path, image, seconds=3.0):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feed = {"input": image[None]}
    for _ in range(10):
        session.run(None, feed)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feed)
        runs += 1
    return runs / (time.perf_counter() - started)


def encode_request(protocol, app, image):
    """A gRPC-framed request body (flag byte, big-endian length, message) and its path."""
    if protocol == "native":
        from serving import codec

        message = codec.instances_to_request(app, "inference", {"input": image})
        path = "/serving.v1.Inference/Infer"
    else:
        from serving.proto import kserve_pb2 as kpb

        message = kpb.ModelInferRequest(model_name=app, inputs=[kpb.ModelInferRequest.InferInputTensor(
            name="input", datatype="FP32", shape=[1, *image.shape])], raw_input_contents=[image.tobytes()])
        path = "/inference.GRPCInferenceService/ModelInfer"
    data = message.SerializeToString()
    return b"\0" + struct.pack(">I", len(data)) + data, path


def h2load(port, body_file, path, requests, in_flight):
    run = subprocess.run(["h2load", "-n", str(requests), "-c", "1", "-m", str(in_flight), "-d", str(body_file),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=600)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", run.stdout)
    failed = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", run.stdout)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", run.stdout)
    if not rate or not failed:
        raise RuntimeError("h2load failed:\n" + run.stdout + run.stderr)
    return float(rate.group(1)), int(failed.group(2)) + int(failed.group(3)), mean.group(1) if mean else "?"


def start_server(evals, workers):
    cmd = [sys.executable, "-m", "serving.cli", "--log-level", "WARNING", "serve", "--evals", str(evals),
           "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, port = 0, None
    for line in proc.stdout:
        found = re.match(r"serving on [\d.]+:(\d+)", line)
        if found:
            port, seen = int(found.group(1)), seen + 1
            if seen == workers:
                break
    if port is None:
        raise RuntimeError("the server did not start")
    return proc, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--in-flight", default="1,8,32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--protocol", choices=["kserve", "native"], default="kserve")
    parser.add_argument("--models", default="small,large")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install nghttp2-client")

    work = Path(tempfile.mkdtemp(prefix="bench-h2load-"))
    evals = work / "evals"
    names = args.models.split(",")
    raw, images = {}, {}
    for name in names:
        side, channels, extra = MODELS[name]
        app = evals / f"cnn_{name}"
        app.mkdir(parents=True)
        build_cnn(app / "model.onnx", side, channels, extra)
        (app / "eval.py").write_text(TENSOR_APP)
        (app / "app.json").write_text(json.dumps({
            "batch_size": 32, "batch_window_ms": 2, "queue_size": 1024, "preprocess_workers": 0,
            "model_files": {"model": "model.onnx"}, "model_params": {"intra_op_threads": 1}}))
        images[name] = np.random.default_rng(1).random((3, side, side), dtype=np.float32)
        raw[name] = raw_images_per_s(app / "model.onnx", images[name])
        print(f"{name}: 3x{side}x{side}, raw in-process {1000 / raw[name]:.3f} ms/image, {raw[name]:,.0f} images/s")

    proc, port = start_server(evals, args.workers)
    rows = []
    try:
        for name in names:
            body, path = encode_request(args.protocol, f"cnn_{name}", images[name])
            body_file = work / f"{name}.bin"
            body_file.write_bytes(body)
            h2load(port, body_file, path, 200, 8)  # warm-up
            for in_flight in [int(k) for k in args.in_flight.split(",")]:
                requests = args.requests if name == "small" else max(args.requests // 20, 300)
                rate, failed, mean = h2load(port, body_file, path, requests, in_flight)
                rows.append({"model": name, "in_flight": in_flight, "requests_per_s": rate, "failed": failed,
                             "mean_latency": mean, "raw_images_per_s": raw[name], "ratio": rate / raw[name]})
    finally:
        proc.terminate()
        proc.wait(15)
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.protocol} protocol, h2load on one connection, {args.workers} worker(s)")
    print(f"{'model':>6} {'in flight':>9} {'req/s':>9} {'mean lat':>9} {'failed':>6} {'raw img/s':>10} "
          f"{'served/raw':>10}")
    for row in rows:
        print(f"{row['model']:>6} {row['in_flight']:>9} {row['requests_per_s']:>9,.0f} {row['mean_latency']:>9} "
              f"{row['failed']:>6} {row['raw_images_per_s']:>10,.0f} {row['ratio']:>10.2f}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2load.json").write_text(json.dumps({"protocol": args.protocol, "workers": args.workers,
                                                 "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
