"""The `serving` command.

    serving serve --evals DIR --port PORT [--host H] [--metrics-port P] [--app-name NAME] [--strict]
                  [--workers N | --no-supervise] [--max-rss-mb M] [--max-concurrent-rpcs N]   (serving.workers)
                  [--frontend auto|native|python]   (serving.frontend)
    serving infer --target HOST:PORT --app NAME FILE...
    serving test  --app NAME (--images DIR | --list FILE) [--target HOST:PORT | --evals DIR] [--labels FILE]
    serving apps  --target HOST:PORT
    serving health [--target HOST:PORT] [--service NAME]
    serving build APP_DIR --out DIR [--device cpu|gpu] [--force]
    serving store put-image|put-json|put-blob|get|ls|check|gc ... [--data-dir DIR]
    serving dataset import --coco FILE --images DIR [--data-dir DIR]
    serving task start|stop|pause|resume|delete|show|ls|progress ... [--target HOST:PORT]   (serving.jobs.cli)
    serving template create|ls|show|delete|start ... [--target HOST:PORT]

Security (README "Security"): serve [--auth-tokens FILE] [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
[--data-root DIR]...; infer, test and apps [--token TOKEN] [--tls-ca PEM] [--tls-cert PEM --tls-key PEM].
"""
import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from serving.cli_args import add_client_security, client_security, host_port, json_object
from serving.codec import DEFAULT_MAX_MESSAGE_BYTES, Failure
from serving.limits import DEFAULT_MAX_CONCURRENT_RPCS
from serving.workers import DEFAULT_RESTART_BACKOFF_S
from serving.harness.runner import to_jsonable
from serving.store.cli import add_store_commands
from serving.jobs.cli import add_job_commands
from serving.errors import BAD_REQUEST, ServingError
from serving.frontend import MODES as FRONTEND_MODES, resolve_mode as resolve_frontend

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _installed_version():
    """The version pip installed (setup.cfg's), or "unknown" when run from a checkout that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("serving")
    except PackageNotFoundError:
        return "unknown"


def build_parser():
    parser = argparse.ArgumentParser(prog="serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--version", action="version", version=f"serving {_installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    # In a container the flags come from the environment: each SERVING_* variable is the default of its flag
    # (argparse converts a string default with the flag's type, so a bad SERVING_PORT fails like a bad --port).
    serve = commands.add_parser(
        "serve", help="serve the apps of an evals dir over gRPC",
        epilog="Environment: the SERVING_* variable named in a flag's help (in brackets) sets its default; flags "
               "win. Boolean ones (SERVING_STRICT, SERVING_NO_SUPERVISE) take 1/true/yes/on.")
    serve.add_argument("--evals", default=os.environ.get("SERVING_EVALS", "evals"),
                       help="folder of app folders (or a classic evals/eval.py) [SERVING_EVALS]")
    serve.add_argument("--host", default=os.environ.get("SERVING_HOST", "0.0.0.0"), help="[SERVING_HOST]")
    serve.add_argument("--data-dir", default=os.environ.get("SERVING_DATA_DIR", "var"),
                       help="the store: SQLite database and files (datasets, models, results) [SERVING_DATA_DIR]")
    serve.add_argument("--max-jobs", type=int, default=os.environ.get("SERVING_MAX_JOBS", "1"),
                       help="training/test tasks run at once; the rest wait in a FIFO queue [SERVING_MAX_JOBS]")
    serve.add_argument("--trainer-app", default=os.environ.get("SERVING_TRAINER_APP", "mvp_detector"),
                       help="app whose train(job) runs TRAIN tasks whose model_name is not itself a trainer app "
                            "[SERVING_TRAINER_APP]")
    serve.add_argument("--port", type=int, default=os.environ.get("SERVING_PORT", "9000"),
                       help="gRPC port; 0 picks a free one [SERVING_PORT]")
    serve.add_argument("--metrics-port", type=int, default=os.environ.get("SERVING_METRICS_PORT") or None,
                       help="Prometheus text on this port [SERVING_METRICS_PORT]")
    serve.add_argument("--app-name", default=os.environ.get("SERVING_APP_NAME") or None,
                       help="the app name of a classic evals/eval.py layout [SERVING_APP_NAME]")
    serve.add_argument("--strict", action="store_true", default=_env_flag("SERVING_STRICT"),
                       help="fail start-up when any app fails to load [SERVING_STRICT]")
    serve.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20)
    serve.add_argument("--max-concurrent-rpcs", type=int,
                       default=os.environ.get("SERVING_MAX_CONCURRENT_RPCS", str(DEFAULT_MAX_CONCURRENT_RPCS)),
                       help="calls one process runs at once; more are refused at once (429, retryable) "
                            "[SERVING_MAX_CONCURRENT_RPCS]")
    serve.add_argument("--grace", type=float, default=5.0, help="seconds to finish calls in flight on SIGTERM")
    serve.add_argument("--frontend", choices=FRONTEND_MODES, default=os.environ.get("SERVING_FRONTEND", "auto"),
                       help="who serves the port: native (C++ threads in front of grpc.aio, the fast calls handed "
                            "to Python directly), python (grpc.aio alone), auto (native when built) "
                            "[SERVING_FRONTEND]")
    serve.add_argument("--workers", type=int, default=os.environ.get("SERVING_WORKERS", "1"),
                       help="serving processes sharing the port, supervised (each loads every app) [SERVING_WORKERS]")
    serve.add_argument("--no-supervise", action="store_true", default=_env_flag("SERVING_NO_SUPERVISE"),
                       help="serve in this process, without the supervisor that restarts a crashed one "
                            "(under systemd, Kubernetes or a debugger) [SERVING_NO_SUPERVISE]")
    serve.add_argument("--restart-backoff", type=float, default=DEFAULT_RESTART_BACKOFF_S,
                       help="seconds before a crashed worker is restarted, doubling to 30 on repeated crashes")
    serve.add_argument("--max-rss-mb", type=float, default=os.environ.get("SERVING_MAX_RSS_MB") or None,
                       help="replace a worker whose resident memory grows past this, without dropping calls "
                            "[SERVING_MAX_RSS_MB]")
    serve.add_argument("--auth-tokens", metavar="FILE", default=os.environ.get("SERVING_AUTH_TOKENS_FILE") or None,
                       help="token file: every call but health needs 'authorization: Bearer <token>' "
                            "[SERVING_AUTH_TOKENS_FILE]")
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM server certificate: serve TLS")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM key of --tls-cert")
    serve.add_argument("--tls-client-ca", type=Path, default=None,
                       help="PEM CA: require client certificates it signed (mutual TLS)")
    serve.add_argument("--data-root", metavar="DIR", action="append", default=[],
                       help="a folder whose files a request's uri may name (repeatable); none: uris are refused")

    infer = commands.add_parser("infer", help="send files to an app, print one JSON result per file")
    infer.add_argument("--target", type=host_port, required=True, help="HOST:PORT")
    infer.add_argument("--app", required=True)
    infer.add_argument("--method", default="inference")
    infer.add_argument("--params", type=json_object, default=None, help="JSON object sent as params")
    infer.add_argument("--timeout", type=float, default=30.0)
    infer.add_argument("files", nargs="+", type=Path)
    add_client_security(infer)

    test = commands.add_parser("test", help="run a folder of images through an app: results, scores, report")
    test.add_argument("--app", required=True)
    source = test.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of images (searched recursively)")
    source.add_argument("--list", type=Path, help="file with one image path per line")
    where = test.add_mutually_exclusive_group()
    where.add_argument("--target", type=host_port, help="HOST:PORT of a server; default: run in-process")
    where.add_argument("--evals", type=Path, default=Path("evals"), help="evals dir for in-process runs")
    test.add_argument("--app-name", default=None, help="the app name of a classic evals/eval.py layout")
    test.add_argument("--labels", type=Path, help="labels: {file: text|class} JSON, or COCO JSON for boxes")
    test.add_argument("--task", choices=["text", "class", "detection"], help="override label auto-detection")
    test.add_argument("--out", type=Path, default=None, help="output folder (default out/test-<app>)")

    def at_least_one(text):
        # 0 would start no call and wait forever; argparse's own error (usage, exit 2) says so at once.
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
        return value

    test.add_argument("--concurrency", type=at_least_one, default=4, help="calls in flight at once (>= 1)")
    test.add_argument("--params", type=json_object, default=None)
    test.add_argument("--timeout", type=float, default=60.0)
    test.add_argument("--no-progress", action="store_true")
    add_client_security(test)

    apps = commands.add_parser("apps", help="list the apps of a server with their state and settings")
    apps.add_argument("--target", type=host_port, required=True)
    add_client_security(apps)

    health = commands.add_parser("health", help="grpc.health.v1 check: exit 0 iff the server reports SERVING")
    health.add_argument("--target", type=host_port, default=f"localhost:{os.environ.get('SERVING_PORT', '9000')}",
                        help="HOST:PORT (default localhost:$SERVING_PORT, for a container's HEALTHCHECK)")
    health.add_argument("--service", default="", help="service or app name; default: the whole server")
    health.add_argument("--timeout", type=float, default=3.0)
    add_client_security(health)  # its TLS defaults come from the environment: a container's HEALTHCHECK is bare

    build = commands.add_parser("build", help="write the Docker build context of one app (seed 003's build_pre)")
    build.add_argument("app_dir", type=Path, help="the app folder, e.g. evals/shapes")
    build.add_argument("--out", type=Path, required=True, help="the context folder to write")
    build.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="which dockerfiles/Dockerfile.*")
    build.add_argument("--app-name", default=None, help="the app's name in the image (default: the folder name)")
    build.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out")
    add_store_commands(commands)  # `serving store ...` and `serving dataset ...`
    add_job_commands(commands)  # `serving task ...` and `serving template ...`
    return parser


def _env_flag(name):
    """A boolean environment variable: 1/true/yes/on (any case) is true, anything else false."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _worker_args(args):
    """The serve command line of a supervised worker: the options given but --port, --metrics-port (the
    supervisor adds them per worker) and the supervisor's own."""
    out = ["--log-level", args.log_level, "serve", "--workers", "1", "--no-supervise",
           "--evals", str(args.evals), "--host", args.host, "--max-message-mb", str(args.max_message_mb),
           "--grace", str(args.grace), "--data-dir", str(args.data_dir), "--max-jobs", str(args.max_jobs),
           "--max-concurrent-rpcs", str(args.max_concurrent_rpcs), "--frontend", args.frontend,
           "--trainer-app", args.trainer_app]
    if args.app_name:
        out += ["--app-name", args.app_name]
    if args.strict:
        out.append("--strict")
    if args.auth_tokens:
        out += ["--auth-tokens", str(args.auth_tokens)]
    for flag, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                        ("--tls-client-ca", args.tls_client_ca)):
        if value is not None:
            out += [flag, str(value)]
    for root in args.data_root:
        out += ["--data-root", root]
    return out


def _serve_security(args):
    """(tokens, tls) of the serve security flags; ServingError for a bad combination or file. Read before
    `--workers` starts anything, so a bad token file or certificate stops start-up at once."""
    from serving.auth import load_tokens
    from serving.tls import server_tls

    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and args.tls_cert is None):
        raise ServingError(BAD_REQUEST, "--tls-cert and --tls-key go together; --tls-client-ca needs them")
    tokens = load_tokens(args.auth_tokens) if args.auth_tokens else None
    tls = server_tls(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    return tokens, tls


def cmd_serve(args):
    if args.workers < 1:
        print("serving serve: --workers must be >= 1", file=sys.stderr)
        return 2
    if args.no_supervise and args.workers != 1:
        print("serving serve: --no-supervise serves one process: --workers must be 1", file=sys.stderr)
        return 2
    if args.restart_backoff <= 0 or (args.max_rss_mb is not None and args.max_rss_mb <= 0):
        print("serving serve: --restart-backoff and --max-rss-mb must be > 0", file=sys.stderr)
        return 2
    if args.max_jobs < 1:
        print("serving serve: --max-jobs must be >= 1", file=sys.stderr)
        return 2
    if args.max_concurrent_rpcs < 1:
        print("serving serve: --max-concurrent-rpcs must be >= 1", file=sys.stderr)
        return 2
    try:
        tokens, tls = _serve_security(args)
        resolve_frontend(args.frontend)  # --frontend native without the extension stops start-up here
    except ServingError as exc:
        # Exit status 1, a start-up failure: the --workers supervisor does not restart it.
        print(f"serving: {exc.message}", file=sys.stderr)
        return 1
    if not args.no_supervise:
        return _supervise(args)

    from serving.server import ServingServer, serve_until_signalled
    from serving.workers import init_supervised_worker, is_supervised_worker

    quarantined = init_supervised_worker()  # {} unless a supervisor started this process
    server = ServingServer(args.evals, host=args.host, port=args.port, app_name=args.app_name,
                           max_message_bytes=int(args.max_message_mb * 2**20), metrics_port=args.metrics_port,
                           strict=args.strict, tokens=tokens, tls=tls, data_roots=args.data_root,
                           data_dir=args.data_dir, max_jobs=args.max_jobs, trainer_app=args.trainer_app,
                           max_concurrent_rpcs=args.max_concurrent_rpcs, quarantined=quarantined,
                           share_port=is_supervised_worker(), frontend=args.frontend)
    try:
        asyncio.run(serve_until_signalled(server, grace=args.grace))
    except ServingError as exc:
        print(f"serving: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _supervise(args):
    """`serve` as the supervisor of `--workers` serving processes (serving.workers)."""
    from serving.workers import PortUnavailable, Supervisor, app_folders, claim_port

    try:
        reserved = claim_port(args.host, args.port)
    except PortUnavailable as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return 1
    port = reserved.getsockname()[1]
    worker_args = _worker_args(args)
    argv = [sys.executable, "-m", "serving.cli", *worker_args]
    supervisor = Supervisor(argv, args.workers, port, args.metrics_port, restart_backoff_s=args.restart_backoff,
                            max_rss_mb=args.max_rss_mb, stop_timeout_s=args.grace + 30.0,
                            app_dirs=app_folders(args.evals, args.app_name))
    try:
        return supervisor.run()
    finally:
        reserved.close()


def cmd_infer(args):
    from serving.client import Client

    failed = 0
    with Client(*args.target, args.app, args.method, timeout=args.timeout, **client_security(args)) as client:
        for path in args.files:
            try:
                body = path.read_bytes()
            except OSError as exc:
                print(json.dumps({"file": str(path), "error": str(exc), "code": 400}))
                failed += 1
                continue
            result = client.infer({"body": body}, args.params)
            result = result[0] if isinstance(result, list) else result
            failed += isinstance(result, Failure)
            print(json.dumps({"file": str(path), **to_jsonable(result)}), flush=True)
    return 1 if failed else 0


def cmd_test(args):
    from serving.harness import collect_images, format_summary, run_harness
    from serving.harness.inputs import display_name
    from serving.harness.scoring import detect_task, load_labels

    source = args.images or args.list
    out_dir = args.out or Path("out") / f"test-{args.app}"
    # Every input is read and checked before the app starts (in-process, loading it can take a minute): a mistake
    # on the command line ends at once with one line and exit 2, like argparse's and ServingError's.
    try:
        images = collect_images(source)
        if not images:
            raise ValueError(f"no images in {display_name(str(source))}")
        labels = load_labels(args.labels) if args.labels is not None else None
        if labels is not None and args.task is not None:
            detect_task(labels, {}, args.task)  # only checks that the forced task fits the labels
        if out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {display_name(str(out_dir))}: is a file, not a folder")
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        # str() of an OSError is "[Errno 2] No such file or directory: '...'"; the path first reads better.
        what = f"{display_name(str(exc.filename))}: {exc.strerror}" if exc.filename and exc.strerror else exc
        print(f"serving test: {what}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"serving test: {exc}", file=sys.stderr)
        return 2
    if args.target:
        from serving.client import Client

        runner = Client(*args.target, args.app, timeout=args.timeout, **client_security(args))
    else:
        from serving.inprocess import InProcessRunner

        runner = InProcessRunner(args.evals, args.app, app_name=args.app_name, timeout=args.timeout)

    def infer(instance, params):
        result = runner.infer([instance], params)
        return result[0] if isinstance(result, list) else result

    try:
        summary = run_harness(infer, images, out_dir, app=args.app, labels=labels, task=args.task,
                              concurrency=args.concurrency, params=args.params, progress=not args.no_progress)
    finally:
        runner.close()
    print(format_summary(summary))
    print(f"results: {out_dir / 'results.jsonl'}\nreport:  {out_dir / 'report.html'}")
    return 0


def cmd_apps(args):
    import grpc

    from serving.client import Client, error_of

    with Client(*args.target, "", **client_security(args)) as client:
        try:
            apps = client.apps()
        except grpc.RpcError as exc:
            print(f"serving apps: {json.dumps(error_of(exc))} ({exc.code().name})", file=sys.stderr)
            return 1
        for app in apps:
            print(json.dumps(app))
    return 0


def cmd_health(args):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from serving.auth import bearer_metadata
    from serving.tls import client_credentials, open_channel

    target = "%s:%d" % args.target
    # As every client command: any TLS flag makes the channel TLS (a bad PEM path is a ServingError: exit 2). Health
    # needs no token on the server, but one given (--token, SERVING_TOKEN) is sent like every client command does.
    channel = open_channel(grpc, target, client_credentials(args.tls_ca, args.tls_cert, args.tls_key))
    metadata = bearer_metadata(args.token)
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"{target} {args.service or '(server)'}: {exc.code().name} {exc.details() or ''}".rstrip(),
                  file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{target} {args.service or '(server)'}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_build(args):
    from serving.build import build_context, docker_build_command

    out_dir = build_context(args.app_dir, args.out, device=args.device, app_name=args.app_name, force=args.force)
    print(f"build context: {out_dir}")
    print(docker_build_command(out_dir, args.app_name or args.app_dir.resolve().name, args.device))
    return 0


def main(argv=None):
    from evals.utils.image import cap_decoder_pixels

    # Before any command imports OpenCV: images of formats whose size load_image cannot read from the header are
    # then refused by the decoder before it allocates them (inherited by workers and training processes).
    cap_decoder_pixels()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    command = getattr(args, "func", None)  # commands registered by other modules carry their function
    if command is None:
        command = {"serve": cmd_serve, "infer": cmd_infer, "test": cmd_test, "apps": cmd_apps,
                   "health": cmd_health, "build": cmd_build}[args.command]
    try:
        status = command(args)
        sys.stdout.flush()  # here, not at exit: a reader gone before the last write is then handled below
        return status
    except ServingError as exc:
        print(f"serving {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C ends a command with one line, as the shell's convention has it (128 + SIGINT), not a traceback;
        # what the command had stored is what it committed (the store's writes are transactions).
        print(f"serving {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`serving apps | head`): stop quietly, as Unix tools do (128 + SIGPIPE).
        # stdout is pointed at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
