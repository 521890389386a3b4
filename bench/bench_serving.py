"""Served vs raw in-process ONNX Runtime: throughput and latency of one app, measured in one run.

    .venv/bin/python bench/bench_serving.py [--app shapes] [--duration 5] [--in-flight 1,8,32] [--body]

1. Raw: the app's ONNX model in this process (one intra-op thread, no spinning, as the app sets it), one image
   per `session.run` in a loop, then 16 per run; images/s of each.
2. Served: `serving serve --evals evals` in a subprocess; single-instance Infer calls from an asyncio client
   (a separate process from the server) with 1, 8 and 32 calls in flight, each for `--duration` seconds after a
   warm-up; requests/s, latency p50/p90/p99, the mean batch the server formed, and the ratio to raw batch-1 runs.

By default each call carries the preprocessed 3x64x64 float32 tensor (input "image"), so served and raw run the
same network on the same input and the difference is the runtime. `--body` sends PNG bytes instead (decode and
resize in net_preprocess, on the preprocess pool).

A benchmark, not a test: it prints figures, it asserts nothing. Results also go to bench/results/serving.json.
"""
import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evals.shapes.data import make_dataset  # noqa: E402
from evals.shapes.preprocess import preprocess  # noqa: E402
from serving.client import AsyncClient  # noqa: E402
from serving.codec import Failure  # noqa: E402


def percentiles(latencies):
    values = np.asarray(latencies) * 1000.0
    return {f"p{p}": float(np.percentile(values, p)) for p in (50, 90, 99)}


def raw_session(model_path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def measure_raw(session, tensors, batch, duration):
    """Images/s of session.run with `batch` images per run, for `duration` seconds."""
    name = session.get_inputs()[0].name
    stacked = np.stack([tensors[i % len(tensors)] for i in range(batch)])
    for _ in range(20):
        session.run(None, {name: stacked})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        session.run(None, {name: stacked})
        runs += 1
    return runs * batch / (time.perf_counter() - started)


class Server:
    def __init__(self, evals, metrics_port):
        cmd = [sys.executable, "-m", "serving.cli", "--log-level", "WARNING", "serve", "--evals", str(evals),
               "--host", "127.0.0.1", "--port", "0", "--metrics-port", str(metrics_port)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.port = None
        for line in self.proc.stdout:
            found = re.match(r"serving on [\d.]+:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                break
        if self.port is None:
            raise RuntimeError("the server did not start")
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)


def batch_histogram(metrics_port, app):
    """(sum, count) of the server's serving_batch_size histogram for `app`."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    total = re.search(rf'serving_batch_size_sum{{app="{app}"}} ([\d.e+]+)', text)
    count = re.search(rf'serving_batch_size_count{{app="{app}"}} ([\d.e+]+)', text)
    return float(total.group(1)), float(count.group(1))


async def drive(port, app, instances, in_flight, duration, warmup):
    """Keep `in_flight` single-instance calls going; returns (requests/s, latencies, errors)."""
    latencies, errors = [], 0
    async with AsyncClient("127.0.0.1", port, app, timeout=30) as client:
        async def worker(seed, until, record):
            nonlocal errors
            i = seed
            while time.perf_counter() < until:
                started = time.perf_counter()
                result = await client.infer(instances[i % len(instances)])
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += not isinstance(result, list) or isinstance(result[0], Failure)
                i += in_flight

        until = time.perf_counter() + warmup
        await asyncio.gather(*(worker(k, until, False) for k in range(in_flight)))
        started = time.perf_counter()
        until = started + duration
        await asyncio.gather(*(worker(k, until, True) for k in range(in_flight)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="shapes")
    parser.add_argument("--evals", type=Path, default=REPO / "evals")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--in-flight", default="1,8,32")
    parser.add_argument("--body", action="store_true", help="send PNG bytes instead of the tensor")
    parser.add_argument("--metrics-port", type=int, default=19109)
    args = parser.parse_args()

    app_dir = args.evals / args.app
    app_json = json.loads((app_dir / "app.json").read_text())
    model_path = app_dir / app_json["model_files"]["model"]
    threads = app_json.get("model_params", {}).get("intra_op_threads", 1)
    images, _ = make_dataset(64, seed=1234)
    tensors = [preprocess(image) for image in images]
    if args.body:
        import cv2

        instances = [{"body": cv2.imencode(".png", image)[1].tobytes()} for image in images]
    else:
        instances = [{"image": tensor} for tensor in tensors]

    session = raw_session(model_path, threads)
    raw1 = measure_raw(session, tensors, 1, args.duration)
    raw16 = measure_raw(session, tensors, 16, args.duration)
    del session
    print(f"raw in-process ONNX Runtime ({threads} intra-op thread): batch 1 {raw1:,.0f} img/s, "
          f"batch 16 {raw16:,.0f} img/s")

    server = Server(args.evals, args.metrics_port)
    rows = []
    try:
        for in_flight in [int(k) for k in args.in_flight.split(",")]:
            before = batch_histogram(args.metrics_port, args.app)
            rps, latencies, errors = asyncio.run(drive(server.port, args.app, instances, in_flight,
                                                       args.duration, args.warmup))
            after = batch_histogram(args.metrics_port, args.app)
            mean_batch = (after[0] - before[0]) / max(after[1] - before[1], 1)
            rows.append({"in_flight": in_flight, "requests_per_s": rps, **percentiles(latencies),
                         "mean_batch": mean_batch, "errors": errors, "ratio_to_raw_batch1": rps / raw1,
                         "ratio_to_raw_batch16": rps / raw16})
    finally:
        server.stop()

    payload = "PNG body" if args.body else "3x64x64 float32 tensor"
    print(f"\nserved: app {args.app}, single-instance Infer calls, {payload}, {args.duration:g}s each, "
          f"{os.cpu_count()} cores shared by client and server")
    print(f"{'in flight':>9} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'batch':>6} {'errors':>6} "
          f"{'served/raw b1':>14} {'served/raw b16':>15}")
    for row in rows:
        print(f"{row['in_flight']:>9} {row['requests_per_s']:>9,.0f} {row['p50']:>8.2f} {row['p90']:>8.2f} "
              f"{row['p99']:>8.2f} {row['mean_batch']:>6.1f} {row['errors']:>6} "
              f"{row['ratio_to_raw_batch1']:>14.2f} {row['ratio_to_raw_batch16']:>15.2f}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving.json").write_text(json.dumps({"raw_batch1": raw1, "raw_batch16": raw16, "payload": payload,
                                                  "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
