"""mvi_ocr on freshly generated product codes: accuracy with and without a charset, beside the rapidocr-onnxruntime
package's own pipeline, and served throughput with concurrent callers vs the package called image by image, all
measured in one run on one image set.

    .venv/bin/python bench/bench_ocr.py [--n 200] [--seed 7] [--concurrency 8] [--fonts dot_matrix]

1. Generates ``--n`` codes with ``evals.mvi_ocr.data`` (PNG files and labels.json) from ``--seed``.
2. Serves ``mvi_ocr`` (``serving serve`` in a subprocess, its app.json as shipped) and runs the set through it
   with ``serving test``'s harness from ``--concurrency`` caller threads (native protocol, one image a call):
   once without a charset, once with ``charset=code`` (the generator's alphabet).
3. Runs the package's pipeline, ``RapidOCR()(png_bytes)`` with its defaults (detector input upscaled to 736
   pixels on the shorter side, angle classifier, recogniser), over the same files from one caller: a loop, image
   by image. Its ``code_str`` is chosen by the app's rule (the longest line), its text stripped of spaces at the
   ends as the app strips them.
4. The same loop with the package set up as the app runs the networks (detector input at most 960 pixels on the
   longer side, no angle classifier): what is left of the difference is the serving (concurrent detection,
   recognition batched across callers), not the input size.

Prints sequence accuracy (exact match) and character error rate of each, the batches the server formed, and
throughput: the server with ``--concurrency`` callers and each package loop, measured in ``--rounds`` interleaved
rounds over the first ``--round-images`` images (other load on the machine shifts over minutes; interleaving
gives every contender the same share of it), served / package ratios of those, and the CPU time each spent per
image (the server's and this process's: the callers' and the package's), which that load hardly inflates. The harness reports (latency
histogram, precision-recall curve) land in out/bench-ocr/<run>/report.html, the figures in
bench/results/ocr.json.

A benchmark, not a test: it prints figures, it asserts nothing.
"""
import argparse
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_serving import Server  # noqa: E402
from evals.mvi_ocr import data  # noqa: E402
from evals.mvi_ocr.eval import image_result  # noqa: E402
from serving.client import Client  # noqa: E402
from serving.harness import run_harness  # noqa: E402

APP = "mvi_ocr"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forward_batches(metrics_port):
    """{lines per recognition call: calls} from the app's py.forward histogram on the server's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    counts = {}
    for number, value in re.findall(r'ava_serving_eval_response_time_count\{[^}]*method="py.forward",'
                                    r'number="(\d+)"[^}]*\} ([\d.e+]+)', text):
        counts[int(number)] = counts.get(int(number), 0) + int(float(value))
    return counts


def package_infer(engine, **call_options):
    """A harness `infer` that runs the package's whole pipeline on the image bytes."""
    def infer(instance, params):
        found, _ = engine(instance["body"], **call_options)
        lines = [{"text": text.strip(), "score": float(score), "polygon": box} for box, text, score in found or []
                 if text.strip()]
        return image_result(lines)
    return infer


def run(name, infer, images, labels, out, concurrency, params=None):
    summary = run_harness(infer, images, out / name, app=APP, labels_path=labels, concurrency=concurrency,
                          params=params, progress=False)
    scores = summary["scores"]
    row = {"run": name, "concurrency": concurrency, "exact_match": scores["exact_match"], "cer": scores["cer"],
           "images_per_s": summary["images_per_s"], "p50_ms": summary["latency_ms"]["p50"],
           "p90_ms": summary["latency_ms"]["p90"], "errors": summary["n_errors"],
           "ap": (scores.get("pr_curve") or {}).get("ap"),
           "mismatches": [(m["expected"], m["predicted"]) for m in scores["mismatches"]]}
    print(f"  {name}: exact match {100 * row['exact_match']:.2f}%, CER {100 * row['cer']:.3f}%, "
          f"{row['images_per_s']:.1f} images/s, p50 {row['p50_ms']:.0f} ms, {row['errors']} errors", flush=True)
    return row


def cpu_seconds(pid=None):
    """CPU time (user + system, all threads) of this process, or of process ``pid`` (Linux: /proc)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_rate(infer, bodies, concurrency, server_pid):
    """(images, seconds, CPU seconds of this process and the server) of ``infer`` over ``bodies`` from
    ``concurrency`` threads, one image a call. CPU time is what other load on the machine cannot inflate much."""
    cpu_before = cpu_seconds() + cpu_seconds(server_pid)
    started = time.perf_counter()
    if concurrency == 1:
        for body in bodies:
            infer({"body": body}, None)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(lambda body: infer({"body": body}, None), bodies))
    elapsed = time.perf_counter() - started
    return len(bodies), elapsed, cpu_seconds() + cpu_seconds(server_pid) - cpu_before


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="codes to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=8, help="caller threads against the server")
    parser.add_argument("--fonts", default=",".join(data.DEFAULT_FONTS),
                        help=f"comma-separated faces of {', '.join(data.FONTS)}")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved speed rounds")
    parser.add_argument("--round-images", type=int, default=40, help="images of each speed round")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench-ocr")
    parser.add_argument("--skip-package", action="store_true", help="only the served runs")
    args = parser.parse_args()
    fonts = tuple(args.fonts.split(","))

    with tempfile.TemporaryDirectory(prefix="bench-ocr-") as tmp:
        tmp = Path(tmp)
        images = tmp / "codes"
        data.write_dataset(images, args.n, args.seed, fonts=fonts)
        labels = images / "labels.json"
        evals = tmp / "evals"
        evals.mkdir()
        (evals / APP).symlink_to(REPO / "evals" / APP)
        print(f"{args.n} codes (seed {args.seed}, fonts {', '.join(fonts)}); {os.cpu_count()} cores shared by "
              f"server, callers and the package", flush=True)
        bodies = [path.read_bytes() for path in sorted(images.glob("*.png"))[:args.round_images]]

        metrics_port = free_port()
        server = Server(evals, metrics_port)
        rows, speed = [], {}
        try:
            client = Client("127.0.0.1", server.port, APP, timeout=120)

            def served(instance, params):
                result = client.infer([instance], params)
                return result[0] if isinstance(result, list) else result

            for body in bodies[:3]:
                served({"body": body}, None)
            print("accuracy (every image, through serving test's harness):", flush=True)
            before = forward_batches(metrics_port)
            rows.append(run("served", served, images, labels, args.out, args.concurrency))
            rows.append(run("served_charset_code", served, images, labels, args.out, args.concurrency,
                            {"charset": "code"}))
            after = forward_batches(metrics_port)
            contenders = {"served": (served, args.concurrency)}
            if not args.skip_package:
                from rapidocr_onnxruntime import RapidOCR

                for name, engine, options in (
                        ("package_loop", RapidOCR(), {}),
                        ("package_loop_as_app", RapidOCR(det_limit_type="max", det_limit_side_len=960),
                         {"use_cls": False})):
                    infer = package_infer(engine, **options)
                    infer({"body": bodies[0]}, None)
                    rows.append(run(name, infer, images, labels, args.out, 1))
                    contenders[name] = (infer, 1)

            # Throughput, interleaved: other load on the machine changes over minutes, and a ratio of two runs
            # minutes apart would measure that change. Each round runs every contender on the same images.
            print(f"speed ({args.rounds} interleaved rounds of {len(bodies)} images):", flush=True)
            for _ in range(args.rounds):
                for name, (infer, concurrency) in contenders.items():
                    measured = timed_rate(infer, bodies, concurrency, server.proc.pid)
                    total = speed.setdefault(name, [0, 0.0, 0.0])
                    for i, value in enumerate(measured):
                        total[i] += value
            client.close()
        finally:
            server.stop()
    calls = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    n_calls = sum(calls.values())
    mean_lines = sum(size * count for size, count in calls.items()) / max(n_calls, 1)

    print(f"\n{'run':<22} {'callers':>7} {'exact match':>11} {'CER':>8} {'images/s':>9} {'p50 ms':>7}")
    for row in rows:
        print(f"{row['run']:<22} {row['concurrency']:>7} {100 * row['exact_match']:>10.2f}% "
              f"{100 * row['cer']:>7.3f}% {row['images_per_s']:>9.1f} {row['p50_ms']:>7.0f}")
    print(f"recognition calls while served: {n_calls}, mean {mean_lines:.1f} lines per call, "
          f"largest {max((s for s, c in calls.items() if c), default=0)}")
    rates = {name: done / seconds for name, (done, seconds, _) in speed.items()}
    cpu_ms = {name: 1000 * cpu / done for name, (done, _, cpu) in speed.items()}
    print("interleaved speed: " + ", ".join(f"{name} {rates[name]:.1f} images/s ({cpu_ms[name]:.0f} CPU-ms/image)"
                                             for name in rates))
    for package in ("package_loop", "package_loop_as_app"):
        if package in rates:
            print(f"served ({args.concurrency} callers) / {package}: {rates['served'] / rates[package]:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "ocr.json").write_text(json.dumps({
        "n": args.n, "seed": args.seed, "fonts": fonts, "cores": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"), "recognition_calls": calls, "rows": rows,
        "interleaved_images_per_s": rates, "cpu_ms_per_image": cpu_ms}, indent=2))
    print(f"reports: {args.out}/<run>/report.html; figures: {results / 'ocr.json'}")


if __name__ == "__main__":
    main()
