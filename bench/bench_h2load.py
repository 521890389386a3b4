"""Server capacity with a C load generator: `serving` vs a minimal grpc.aio + batcher server vs raw ONNX Runtime,
interleaved in one run.

    .venv/bin/python bench/bench_h2load.py [--rounds 3] [--requests 6000] [--in-flight 1,8,32]
                                           [--workers 1] [--connections 1]
                                           [--protocol kserve|native] [--models small,large] [--floor]
                                           [--frontend auto|native|python] [--python-frontend]

Needs h2load (Debian's nghttp2-client): `make bench-capacity` installs it when missing and runs this script.

Two CNNs are generated here with onnx.helper (fixed random weights, no download): `small`, about 0.15 ms for a
3x64x64 image, and `large`, about 6 ms for 3x128x128, both at one intra-op thread without spinning. Each is
served by a generic tensor app (batch_size 32, batch window 2 ms, preprocessing none), and, as the yardstick, by
`bench/baseline_server.py`: a minimal grpc.aio server with a batcher and nothing else (the kind of server the
project's notes measured at 1,205 requests/s at 1 in flight and 2,132 at 32). `--floor` adds that server with an
empty handler (no inference): what gRPC in Python costs alone for this payload. `--python-frontend` adds serving
itself with `--frontend python` (`serving_py`: grpc.aio serving the port, as before the native front end), and
`vs py` is serving / serving_py.

h2load sends one pre-encoded single-instance request (KServe v2 ModelInfer by default, or the native Infer to
`serving`; the yardstick always speaks KServe) on one connection with 1, 8 and 32 streams in flight. The machine
is shared and its speed drifts, so every figure is taken in rounds: in each round, for each model, ONNX Runtime
runs raw in this process (one image per run), then each server takes the same load in turn (the order rotates per
round), each at every in-flight count. Ratios are formed within a round, between runs seconds apart, and the
median over rounds is printed with its range: `vs base` is serving / yardstick requests/s, `vs raw` is
serving requests/s / raw images/s. `cpu ms` is the server process's CPU time (all its threads, user + system)
per request, steadier than wall-clock rates on a busy machine.

The issue's goals, as ratios to the yardstick measured beside us: at 1 in flight 4x the best peer (302) is
1,208 requests/s, 1.00x the notes' 1,205; at 32 in flight 2x the best peer (1,622) is 3,244, 1.52x the notes'
2,132; the 6 ms model at 32 in flight at least 0.95 of raw. A benchmark, not a test: it prints figures, asserts
nothing, and writes bench/results/h2load.json.
"""
import argparse
import json
import os
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
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from baseline_server import new_session  # noqa: E402  (bench/: the session settings every measurement shares)

# name: (input side, conv channels, the same-size convs after each stride-2 conv)
MODELS = {"small": (64, (24, 48, 96), 0), "large": (128, (28, 56, 112, 224), 2)}

TENSOR_APP = '''"""A generic tensor app for benchmarks: data["input"] float32 CHW -> {"output": logits}."""
import numpy as np

from evals.utils import create_net_handler, net_inference_handler
from evals.utils.onnx import onnx_session


@create_net_handler
def create_net(configs):
    session = onnx_session(configs)  # one intra-op thread (app.json), no spinning
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


def raw_images_per_s(session, image, seconds):
    """Images/s of session.run with one image per run, for `seconds` after a warm-up."""
    feed = {"input": image[None]}
    for _ in range(5):
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


def h2load(port, body_file, path, requests, in_flight, connections=1):
    """(requests/s, failed requests, mean latency text) of one h2load run: `in_flight` streams spread over
    `connections` connections (at most one per stream)."""
    connections = min(connections, in_flight)
    run = subprocess.run(["h2load", "-n", str(requests), "-c", str(connections), "-m", str(in_flight // connections),
                          "-d", str(body_file),
                          "-H", "content-type: application/grpc", "-H", "te: trailers",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, timeout=600)
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", run.stdout)
    failed = re.search(r"(\d+) succeeded, (\d+) failed, (\d+) errored", run.stdout)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", run.stdout)
    if not rate or not failed:
        raise RuntimeError("h2load failed:\n" + run.stdout + run.stderr)
    return float(rate.group(1)), int(failed.group(2)) + int(failed.group(3)), mean.group(1) if mean else "?"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path):
    """The fields of a /proc stat file after the command name (which may hold spaces)."""
    return path.read_text().rpartition(")")[2].split()


def cpu_seconds(pid):
    """CPU time (user + system, every thread) of process `pid` and of its children (`--workers`), from /proc."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            fields = _stat_fields(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        ticks += int(fields[11]) + int(fields[12])
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parent = int(_stat_fields(proc / "stat")[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        if parent == pid:
            ticks += cpu_seconds(int(proc.name)) * _CLOCK_TICKS
    return ticks / _CLOCK_TICKS


class Server:
    """A server process on an OS-assigned port; `ready` reads its output until each worker said `serving on`."""

    def __init__(self, name, cmd, workers=1):
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = None
        seen = 0
        for line in self.proc.stdout:
            found = re.match(r"serving on [\d.]+:(\d+)", line)
            if found:
                self.port, seen = int(found.group(1)), seen + 1
                if seen == workers:
                    break
        if self.port is None:
            raise RuntimeError(f"{name}: the server did not start")

    def load(self, body_file, path, requests, in_flight, connections=1):
        """h2load against this server: a result row, with the server's CPU time per request."""
        before = cpu_seconds(self.proc.pid)
        rate, failed, mean = h2load(self.port, body_file, path, requests, in_flight, connections)
        cpu_ms = (cpu_seconds(self.proc.pid) - before) * 1000 / requests
        return {"requests_per_s": rate, "failed": failed, "mean_latency": mean, "cpu_ms_per_request": cpu_ms}

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def write_apps(evals, names):
    """The generic tensor app for each model under `evals`; returns {name: (model path, image)}."""
    made = {}
    for name in names:
        side, channels, extra = MODELS[name]
        app = evals / f"cnn_{name}"
        app.mkdir(parents=True)
        build_cnn(app / "model.onnx", side, channels, extra)
        (app / "eval.py").write_text(TENSOR_APP)
        (app / "app.json").write_text(json.dumps({
            "batch_size": 32, "batch_window_ms": 2, "queue_size": 1024, "preprocess_workers": 0,
            "model_files": {"model": "model.onnx"}, "model_params": {"intra_op_threads": 1}}))
        made[name] = (app / "model.onnx", np.random.default_rng(1).random((3, side, side), dtype=np.float32))
    return made


def median(values):
    return float(np.median(values))


def summarise(runs, raws, names, in_flights, servers):
    """One row per model and in-flight count: medians over rounds, and ranges of the in-round ratios."""
    rows = []
    for name in names:
        for in_flight in in_flights:
            row = {"model": name, "in_flight": in_flight, "raw_images_per_s": median(raws[name])}
            for server in servers:
                mine = [run for run in runs if run["model"] == name and run["in_flight"] == in_flight
                        and run["server"] == server]
                row[server] = {key: median([run[key] for run in mine])
                               for key in ("requests_per_s", "cpu_ms_per_request")}
                row[server]["failed"] = sum(run["failed"] for run in mine)
                row[server]["mean_latency"] = mine[len(mine) // 2]["mean_latency"]
            by_round = {}
            for run in runs:
                if run["model"] == name and run["in_flight"] == in_flight:
                    by_round.setdefault(run["round"], {})[run["server"]] = run["requests_per_s"]
            vs_raw = [rates["serving"] / raws[name][r] for r, rates in by_round.items()]
            row["vs_raw"] = [median(vs_raw), min(vs_raw), max(vs_raw)]
            for key, other in (("vs_baseline", "baseline"), ("vs_python", "serving_py")):
                if other in servers:
                    ratios = [rates["serving"] / rates[other] for rates in by_round.values()]
                    row[key] = [median(ratios), min(ratios), max(ratios)]
            rows.append(row)
    return rows


def print_table(rows, servers):
    head = f"{'model':>6} {'in flight':>9} {'raw img/s':>9}"
    for server in servers:
        head += f" {server + ' req/s':>15} {'cpu ms':>6}"
    head += f" {'vs base (range)':>18} {'vs raw (range)':>18}"
    if "serving_py" in servers:
        head += f" {'vs py (range)':>18}"
    head += f" {'serving mean':>12}"
    print(head)
    for row in rows:
        line = f"{row['model']:>6} {row['in_flight']:>9} {row['raw_images_per_s']:>9,.0f}"
        for server in servers:
            line += f" {row[server]['requests_per_s']:>15,.0f} {row[server]['cpu_ms_per_request']:>6.3f}"
        for key in ("vs_baseline", "vs_raw", *(["vs_python"] if "serving_py" in servers else [])):
            if key in row:
                mid, low, high = row[key]
                line += f" {mid:>6.2f} ({low:.2f}-{high:.2f})"
            else:
                line += f" {'-':>18}"
        line += f" {row['serving']['mean_latency']:>12}"
        failed = {server: row[server]["failed"] for server in servers if row[server]["failed"]}
        print(line + (f"  FAILED {failed}" if failed else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=6000, help="per run of the small model (large: 1/20)")
    parser.add_argument("--in-flight", default="1,8,32")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1,
                        help="h2load connections sharing the streams in flight (the kernel spreads connections over "
                             "--workers)")
    parser.add_argument("--protocol", choices=["kserve", "native"], default="kserve")
    parser.add_argument("--models", default="small,large")
    parser.add_argument("--floor", action="store_true", help="add the empty-handler server (gRPC's floor)")
    parser.add_argument("--frontend", choices=["auto", "native", "python"], default="auto",
                        help="serving's front end (serve --frontend)")
    parser.add_argument("--python-frontend", action="store_true",
                        help="add serving with --frontend python beside it (`serving_py`)")
    parser.add_argument("--no-baseline", action="store_true", help="measure serving alone")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: `make bench-capacity` installs it (apt-get install nghttp2-client)")

    names = args.models.split(",")
    in_flights = [int(k) for k in args.in_flight.split(",")]
    servers = (["serving"] + (["serving_py"] if args.python_frontend else [])
               + ([] if args.no_baseline else ["baseline"]) + (["floor"] if args.floor else []))
    work = Path(tempfile.mkdtemp(prefix="bench-h2load-"))
    made = write_apps(work / "evals", names)
    sessions = {name: new_session(model) for name, (model, _image) in made.items()}
    bodies = {}
    for name, (_model, image) in made.items():
        for protocol in {args.protocol, "kserve"}:
            body, path = encode_request(protocol, f"cnn_{name}", image)
            body_file = work / f"{name}-{protocol}.bin"
            body_file.write_bytes(body)
            bodies[name, protocol] = (body_file, path)

    started = {}
    runs, raws = [], {name: [] for name in names}
    try:
        for server, frontend in (("serving", args.frontend), ("serving_py", "python")):
            if server in servers:
                started[server] = Server(server, [
                    sys.executable, "-m", "serving.cli", "--log-level", "WARNING", "serve", "--evals",
                    str(work / "evals"), "--host", "127.0.0.1", "--port", "0", "--workers", str(args.workers),
                    "--data-dir", str(work / f"var-{server}"), "--frontend", frontend], args.workers)
        for name, (model, _image) in made.items():
            for server, extra in (("baseline", []), ("floor", ["--empty"])):
                if server in servers:
                    started[server, name] = Server(server, [sys.executable, str(REPO / "bench" / "baseline_server.py"),
                                                            str(model), *extra])

        def target(server, name):
            protocol = args.protocol if server.startswith("serving") else "kserve"
            return started.get((server, name)) or started[server], bodies[name, protocol]

        for name in names:  # warm-up: first calls pay for lazy set-up in every server
            for server in servers:
                process, (body_file, path) = target(server, name)
                process.load(body_file, path, 200, 8)
        for round_ in range(args.rounds):
            order = servers[round_ % len(servers):] + servers[:round_ % len(servers)]
            for name in names:
                raws[name].append(raw_images_per_s(sessions[name], made[name][1], 1.0))
                requests = args.requests if name == "small" else max(args.requests // 20, 300)
                for in_flight in in_flights:
                    for server in order:
                        process, (body_file, path) = target(server, name)
                        row = process.load(body_file, path, requests, in_flight, args.connections)
                        runs.append({"round": round_, "server": server, "model": name, "in_flight": in_flight,
                                     **row})
            print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for process in started.values():
            process.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows = summarise(runs, raws, names, in_flights, servers)
    for name in names:
        side = MODELS[name][0]
        print(f"{name}: 3x{side}x{side}, raw in-process {1000 / median(raws[name]):.3f} ms/image "
              f"(rounds: {', '.join(f'{r:,.0f}' for r in raws[name])} images/s)")
    print(f"\n{args.protocol} protocol to serving, h2load on {args.connections} connection(s), "
          f"{args.workers} worker(s), {args.rounds} rounds; medians, ranges over rounds")
    print_table(rows, servers)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "h2load.json").write_text(json.dumps({"protocol": args.protocol, "workers": args.workers,
                                                 "connections": args.connections,
                                                 "rounds": args.rounds, "rows": rows, "runs": runs,
                                                 "raw_images_per_s": raws}, indent=2))


if __name__ == "__main__":
    main()
