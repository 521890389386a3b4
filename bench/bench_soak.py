"""A bounded soak: minutes of steady load at a fraction of measured capacity; errors, latency and memory over time.

    .venv/bin/python bench/bench_soak.py [--minutes 5] [--load 0.8] [--app shapes] [--evals evals]

1. Serves `--evals` with `serving serve` (supervised, one worker, as deployed) in a subprocess (as
   bench_serving.py does).
2. Capacity: single-instance Infer calls, each a PNG (decoded and resized by the app), 32 in flight from an asyncio
   client process, for 20 s after a warm-up: requests/s.
3. Soak: an open-loop client sends calls at `--load` x capacity for `--minutes`, each on its schedule whether or not
   earlier ones have returned (latency counts from the scheduled time, so a stall shows instead of slowing the
   sender). Every 5 s it samples the worker's resident memory (RSS) and the calls answered.

It prints the machine's load average (other programs compete for the same cores: a soak is only as steady as
the machine), the capacity, the rate held, calls and errors by code, latency p50/p99 and errors per minute, and
RSS at the start
of the soak (after its first minute: caches and pools warmed), at the end, its range and its trend (least-squares
slope, MiB per minute). Memory is "flat" when the worker ends within 5% (or 10 MiB) of where the first minute
left it. A benchmark, not a test: it prints figures and asserts nothing. Results also go to
bench/results/soak.json.
"""
import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_serving import Server  # noqa: E402
from evals.shapes.data import make_dataset  # noqa: E402
from serving.client import AsyncClient  # noqa: E402

SAMPLE_EVERY_S = 5.0
MAX_OUTSTANDING = 400  # below --max-concurrent-rpcs; a stalled server shows as latency, not client memory


def worker_rss_mib(server):
    """Resident memory of the serving process: the supervisor's (only) child."""
    worker = psutil.Process(server.proc.pid).children()[0]
    return worker.memory_info().rss / 2**20


def first(result):
    return result[0] if isinstance(result, list) else result


async def capacity(port, app, instances, in_flight=32, duration=20.0, warmup=2.0):
    """Requests/s of a closed loop with `in_flight` calls outstanding."""
    done = 0
    async with AsyncClient("127.0.0.1", port, app, timeout=30) as client:
        async def loop(seed, until, count):
            nonlocal done
            i = seed
            while time.perf_counter() < until:
                await client.infer(instances[i % len(instances)])
                done += count
                i += in_flight

        await asyncio.gather(*(loop(k, time.perf_counter() + warmup, 0) for k in range(in_flight)))
        started = time.perf_counter()
        await asyncio.gather(*(loop(k, started + duration, 1) for k in range(in_flight)))
        return done / (time.perf_counter() - started)


async def soak(server, app, instances, rate, duration):
    """Open-loop calls at `rate`/s for `duration` s: [(minute, latency s, code)], RSS samples, backlog peak."""
    loop = asyncio.get_running_loop()
    outcomes, samples, outstanding, peak = [], [], set(), 0
    async with AsyncClient("127.0.0.1", server.port, app, timeout=30) as client:
        async def call(index, due):
            result = first(await client.infer(instances[index % len(instances)]))
            outcomes.append((int((due - started) // 60), loop.time() - due, result.get("code", 0)))

        started = loop.time()
        next_sample, sent = started, 0
        while True:
            now = loop.time()
            if now >= next_sample:
                samples.append((now - started, worker_rss_mib(server), len(outcomes)))
                next_sample += SAMPLE_EVERY_S
            if now - started >= duration:
                break
            while sent < (now - started) * rate and len(outstanding) < MAX_OUTSTANDING:
                task = loop.create_task(call(sent, started + sent / rate))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
                sent += 1
            peak = max(peak, len(outstanding))
            # Until the next call is due (at least a millisecond: a full window waits for answers).
            await asyncio.sleep(max(min(started + sent / rate, next_sample) - now, 0.001))
        await asyncio.gather(*outstanding)
        samples.append((loop.time() - started, worker_rss_mib(server), len(outcomes)))
    return outcomes, samples, peak, sent


def trend_mib_per_minute(samples):
    t = np.array([s[0] for s in samples]) / 60.0
    rss = np.array([s[1] for s in samples])
    return float(np.polyfit(t, rss, 1)[0]) if len(samples) > 2 else 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", default="shapes")
    parser.add_argument("--evals", type=Path, default=REPO / "evals")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity to hold")
    args = parser.parse_args()

    load_before = os.getloadavg()
    images, _ = make_dataset(64, seed=99)
    instances = [{"body": cv2.imencode(".png", image)[1].tobytes()} for image in images]
    server = Server(args.evals, metrics_port=0)
    try:
        measured = asyncio.run(capacity(server.port, args.app, instances))
        rate = measured * args.load
        print(f"capacity: {measured:,.0f} requests/s (32 in flight, PNG bodies); soak at {args.load:.0%}: "
              f"{rate:,.0f}/s for {args.minutes:g} min", flush=True)
        outcomes, samples, peak, sent = asyncio.run(soak(server, args.app, instances, rate, args.minutes * 60))
    finally:
        server.stop()
        status = server.proc.returncode

    errors = {}
    for _, _, code in outcomes:
        if code:
            errors[code] = errors.get(code, 0) + 1
    minutes = sorted({minute for minute, _, _ in outcomes})
    per_minute = []
    for minute in minutes:
        latencies = np.array([lat for m, lat, _ in outcomes if m == minute]) * 1000
        failed = sum(1 for m, _, code in outcomes if m == minute and code)
        per_minute.append({"minute": minute + 1, "calls": int(latencies.size), "errors": failed,
                           "p50_ms": float(np.percentile(latencies, 50)),
                           "p99_ms": float(np.percentile(latencies, 99))})
    warm = [s for s in samples if s[0] >= 60.0] or samples
    start_rss, end_rss = warm[0][1], samples[-1][1]
    growth = end_rss - start_rss
    flat = growth <= max(0.05 * start_rss, 10.0)
    elapsed = samples[-1][0]
    report = {
        "capacity_rps": measured, "target_rps": rate, "held_rps": len(outcomes) / elapsed, "calls": len(outcomes),
        "sent": sent, "errors": errors, "peak_outstanding": peak, "per_minute": per_minute,
        "rss_mib": {"first_minute_end": start_rss, "end": end_rss, "min": min(s[1] for s in samples),
                    "max": max(s[1] for s in samples), "trend_mib_per_min": trend_mib_per_minute(warm)},
        "memory_flat": flat, "server_exit": status, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    print(f"machine load average (1, 5, 15 min): {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} "
          f"before, {report['loadavg_after'][0]:.1f} {report['loadavg_after'][1]:.1f} "
          f"{report['loadavg_after'][2]:.1f} after ({os.cpu_count()} cores)")
    print(f"held: {report['held_rps']:,.0f} requests/s; {len(outcomes):,} calls, "
          f"{sum(errors.values())} errors {errors or ''}; at most {peak} outstanding")
    for row in per_minute:
        print(f"  minute {row['minute']}: {row['calls']:,} calls, {row['errors']} errors, p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms")
    rss = report["rss_mib"]
    print(f"worker RSS: {rss['first_minute_end']:.0f} MiB after the first minute, {rss['end']:.0f} MiB at the end "
          f"(range {rss['min']:.0f}-{rss['max']:.0f}, trend {rss['trend_mib_per_min']:+.2f} MiB/min): "
          f"{'flat' if flat else 'GROWING'}; server exit status {status}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps({**report, "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
