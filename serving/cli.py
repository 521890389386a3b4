"""The `serving` command.

    serving serve --evals DIR --port PORT [--host H] [--metrics-port P] [--app-name NAME] [--strict]
    serving infer --target HOST:PORT --app NAME FILE...
    serving test  --app NAME (--images DIR | --list FILE) [--target HOST:PORT | --evals DIR] [--labels FILE]
    serving apps  --target HOST:PORT
"""
import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from serving.codec import DEFAULT_MAX_MESSAGE_BYTES
from serving.harness.runner import to_jsonable
from serving.errors import ServingError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _target(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "localhost", int(port)


def _params(text):
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--params is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def build_parser():
    parser = argparse.ArgumentParser(prog="serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the apps of an evals dir over gRPC")
    serve.add_argument("--evals", default="evals", help="folder of app folders (or a classic evals/eval.py)")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=9000, help="gRPC port; 0 picks a free one")
    serve.add_argument("--metrics-port", type=int, default=None, help="Prometheus text on this port")
    serve.add_argument("--app-name", default=None, help="the app name of a classic evals/eval.py layout")
    serve.add_argument("--strict", action="store_true", help="fail start-up when any app fails to load")
    serve.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20)
    serve.add_argument("--grace", type=float, default=5.0, help="seconds to finish calls in flight on SIGTERM")
    serve.add_argument("--workers", type=int, default=1,
                       help="serving processes sharing the port, supervised (each loads every app)")

    infer = commands.add_parser("infer", help="send files to an app, print one JSON result per file")
    infer.add_argument("--target", type=_target, required=True, help="HOST:PORT")
    infer.add_argument("--app", required=True)
    infer.add_argument("--method", default="inference")
    infer.add_argument("--params", type=_params, default=None, help="JSON object sent as params")
    infer.add_argument("--timeout", type=float, default=30.0)
    infer.add_argument("files", nargs="+", type=Path)

    test = commands.add_parser("test", help="run a folder of images through an app: results, scores, report")
    test.add_argument("--app", required=True)
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    source.add_argument("--list", type=Path, help="file with one image path per line")
    where = test.add_mutually_exclusive_group()
    where.add_argument("--target", type=_target, help="HOST:PORT of a server; default: run in-process")
    where.add_argument("--evals", type=Path, default=Path("evals"), help="evals dir for in-process runs")
    test.add_argument("--app-name", default=None, help="the app name of a classic evals/eval.py layout")
    test.add_argument("--labels", type=Path, help="labels: {file: text|class} JSON, or COCO JSON for boxes")
    test.add_argument("--task", choices=["text", "class", "detection"], help="override label auto-detection")
    test.add_argument("--out", type=Path, default=None, help="output folder (default out/test-<app>)")
    test.add_argument("--concurrency", type=int, default=4)
    test.add_argument("--params", type=_params, default=None)
    test.add_argument("--timeout", type=float, default=60.0)
    test.add_argument("--no-progress", action="store_true")

    apps = commands.add_parser("apps", help="list the apps of a server with their state and settings")
    apps.add_argument("--target", type=_target, required=True)
    return parser


def _worker_args(args):
    """The serve options a worker of `--workers` gets: all but --port, --metrics-port and --workers."""
    out = ["--evals", str(args.evals), "--host", args.host, "--max-message-mb", str(args.max_message_mb),
           "--grace", str(args.grace)]
    if args.app_name:
        out += ["--app-name", args.app_name]
    if args.strict:
        out.append("--strict")
    return out


def cmd_serve(args):
    from serving.server import ServingServer, serve_until_signalled

    if args.workers < 1:
        print("serving serve: --workers must be >= 1", file=sys.stderr)
        return 2
    if args.workers > 1:
        from serving.workers import reserve_port, supervise

        port = args.port or reserve_port(args.host)
        return supervise(_worker_args(args), args.workers, port, args.metrics_port)

    server = ServingServer(args.evals, host=args.host, port=args.port, app_name=args.app_name,
                           max_message_bytes=int(args.max_message_mb * 2**20), metrics_port=args.metrics_port,
                           strict=args.strict)
    try:
        asyncio.run(serve_until_signalled(server, grace=args.grace))
    except ServingError as exc:
        print(f"serving: {exc.message}", file=sys.stderr)
        return 1
    return 0


def cmd_infer(args):
    from serving.client import Client

    failed = 0
    with Client(*args.target, args.app, args.method, timeout=args.timeout) as client:
        for path in args.files:
            try:
                body = path.read_bytes()
            except OSError as exc:
                print(json.dumps({"file": str(path), "error": str(exc), "code": 400}))
                failed += 1
                continue
            result = client.infer({"body": body}, args.params)
            result = result[0] if isinstance(result, list) else result
            failed += "error" in result
            print(json.dumps({"file": str(path), **to_jsonable(result)}), flush=True)
    return 1 if failed else 0


def cmd_test(args):
    from serving.harness import collect_images, format_summary, run_harness

    images = collect_images(args.images or args.list)
    if not images:
        print(f"serving test: no images in {args.images or args.list}", file=sys.stderr)
        return 1
    out_dir = args.out or Path("out") / f"test-{args.app}"
    if args.target:
        from serving.client import Client

        runner = Client(*args.target, args.app, timeout=args.timeout)
    else:
        from serving.inprocess import InProcessRunner

        runner = InProcessRunner(args.evals, args.app, app_name=args.app_name, timeout=args.timeout)

    def infer(instance, params):
        result = runner.infer([instance], params)
        return result[0] if isinstance(result, list) else result

    try:
        summary = run_harness(infer, images, out_dir, app=args.app, labels_path=args.labels, task=args.task,
                              concurrency=args.concurrency, params=args.params, progress=not args.no_progress)
    finally:
        runner.close()
    print(format_summary(summary))
    print(f"results: {out_dir / 'results.jsonl'}\nreport:  {out_dir / 'report.html'}")
    return 0


def cmd_apps(args):
    from serving.client import Client

    with Client(*args.target, "") as client:
        for app in client.apps():
            print(json.dumps(app))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    command = {"serve": cmd_serve, "infer": cmd_infer, "test": cmd_test, "apps": cmd_apps}[args.command]
    try:
        return command(args)
    except ServingError as exc:
        print(f"serving {args.command}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
