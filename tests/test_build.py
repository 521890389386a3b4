"""`serving build` (build_pre), the Dockerfiles and the deployment manifests, tested without a Docker engine.

What an image build would prove is checked piece by piece: the build context holds every file the Dockerfile
copies and nothing from outside it, the Dockerfiles parse and follow the image conventions, the image's exact CMD
serves the context when run directly with the image's environment, and the manifests validate offline.

The KServe kinds (ServingRuntime, InferenceService) are CRDs, for which kubernetes-validate has no schema (it
raises SchemaNotFoundError). They are checked in two parts: the Kubernetes objects they embed (the runtime's
containers, the predictor's resources) are validated with kubernetes-validate against the core schemas by
wrapping them in a Pod, and the KServe fields by a JSON schema below, written from the fields the KServe CRDs
define and the runtime relies on; then the InferenceService is checked to select the ServingRuntime.
"""
import configparser
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from conftest import RunningServer
from serving.build import BUILD_INFO, EXTERNAL_DIR, build_context, sha256_of
from serving.client import Client
from serving.config import load_app_config
from serving.frontend import load_extension

REPO = Path(__file__).resolve().parent.parent
APP_DIR = REPO / "evals" / "shapes"
APP = APP_DIR.name
DOCKERFILES = {device: REPO / "dockerfiles" / f"Dockerfile.{device}" for device in ("cpu", "gpu")}
# Where the Dockerfiles put the context: the seed's runtime root.
IMAGE_ROOT = "/workspace/serving"
K8S_VERSION = "1.30"
SERVE_TIMEOUT_S = 60
# How the CPU image builds the native front end (a RUN of its Dockerfile).
FRONTEND_BUILD = "python -m serving.frontend.build --force"


def _parse_dockerfile(path):
    return DockerfileParser(fileobj=io.BytesIO(Path(path).read_bytes()), env_replace=True)


def _instructions(parser, name):
    return [item["value"] for item in parser.structure if item["instruction"] == name]


def _run_cli(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "serving.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """{device: build context of the shapes app}, made by the `serving build` command."""
    built = {}
    for device in DOCKERFILES:
        out = tmp_path_factory.mktemp(f"context-{device}")
        result = _run_cli("build", str(APP_DIR), "--out", str(out), "--device", device)
        assert result.returncode == 0, result.stderr
        assert f"docker build -t serving-{APP}" in result.stdout
        built[device] = out
    return built


# ---- the build context ---------------------------------------------------------------------------------------


def test_context_holds_runtime_and_only_this_app(contexts):
    context = contexts["cpu"]
    for name in ("Dockerfile", ".dockerignore", BUILD_INFO, "setup.cfg", "pyproject.toml", "README.md",
                 "serving/cli.py", "serving/proto/inference_pb2.py", "protos/inference.proto",
                 "evals/__init__.py", "evals/utils/__init__.py", f"evals/{APP}/eval.py", f"evals/{APP}/app.json"):
        assert (context / name).is_file(), name
    assert sorted(p.name for p in (context / "evals").iterdir()) == sorted(["__init__.py", "utils", APP])
    assert not list(context.rglob("__pycache__")) and not list(context.rglob("*.pyc"))
    assert (context / "Dockerfile").read_bytes() == DOCKERFILES["cpu"].read_bytes()
    assert (contexts["gpu"] / "Dockerfile").read_bytes() == DOCKERFILES["gpu"].read_bytes()
    # Every model file app.json names is inside the context.
    config = load_app_config(context / "evals" / APP)
    for path in [*config.model_files.values(), *config.custom_files.values()]:
        assert Path(path).is_relative_to(context)


@pytest.mark.parametrize("device", sorted(DOCKERFILES))
def test_every_dockerfile_copy_source_is_in_the_context(contexts, device):
    context = contexts[device]
    parser = _parse_dockerfile(context / "Dockerfile")
    copies = _instructions(parser, "COPY")
    assert copies and not _instructions(parser, "ADD")
    for value in copies:
        sources = value.split()[:-1]
        assert not any(s.startswith("--from") for s in sources), "single-stage images copy from the context"
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context"
    # The app lands where SERVING_EVALS points.
    assert parser.envs["SERVING_EVALS"] == f"{IMAGE_ROOT}/evals"
    assert _instructions(parser, "WORKDIR") == [IMAGE_ROOT]


def test_build_info_lists_every_file_with_its_hash(contexts):
    context = contexts["cpu"]
    info = json.loads((context / BUILD_INFO).read_text())
    assert (info["app"], info["device"]) == (APP, "cpu")
    listed = {entry["path"]: entry for entry in info["files"]}
    on_disk = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()} - {BUILD_INFO}
    assert set(listed) == on_disk
    for path, entry in listed.items():
        assert entry["size"] == (context / path).stat().st_size
        assert entry["sha256"] == sha256_of(context / path)


def _write_app(app_dir, app_json):
    app_dir.mkdir(parents=True)
    (app_dir / "eval.py").write_text("def create_net(configs):\n    return {}, 0, ''\n\n\n"
                                     "def net_inference(model, requests):\n    return [], 0, ''\n")
    (app_dir / "app.json").write_text(json.dumps(app_json))


def test_external_model_files_are_copied_and_app_json_rewritten(tmp_path):
    shared = tmp_path / "shared"
    (shared / "vocab").mkdir(parents=True)
    (shared / "net.onnx").write_bytes(b"weights")
    (shared / "vocab" / "words.txt").write_text("a\nb\n")
    app_dir = tmp_path / "src" / "reader"
    _write_app(app_dir, {"model_files": {"net": str(shared / "net.onnx"), "local": "labels.txt"},
                         "custom_files": {"vocab": "../../shared/vocab"}})
    (app_dir / "labels.txt").write_text("x\n")

    context = build_context(app_dir, tmp_path / "context")

    app_out = context / "evals" / "reader"
    rewritten = json.loads((app_out / "app.json").read_text())
    assert rewritten["model_files"] == {"net": f"{EXTERNAL_DIR}/model_files/net/net.onnx", "local": "labels.txt"}
    assert rewritten["custom_files"] == {"vocab": f"{EXTERNAL_DIR}/custom_files/vocab/vocab"}
    assert (app_out / rewritten["model_files"]["net"]).read_bytes() == b"weights"
    assert (app_out / rewritten["custom_files"]["vocab"] / "words.txt").read_text() == "a\nb\n"
    # The rewritten app.json is valid and self-contained: every path resolves inside the context.
    config = load_app_config(app_out)
    for path in [*config.model_files.values(), *config.custom_files.values()]:
        assert Path(path).is_relative_to(context)
    # The source app is untouched.
    assert json.loads((app_dir / "app.json").read_text())["model_files"]["net"] == str(shared / "net.onnx")


def test_bad_app_and_out_dirs_fail_clearly(tmp_path):
    missing = _run_cli("build", str(tmp_path / "nope"), "--out", str(tmp_path / "o1"))
    assert missing.returncode == 2 and "app folder not found" in missing.stderr

    no_eval = tmp_path / "no_eval"
    no_eval.mkdir()
    result = _run_cli("build", str(no_eval), "--out", str(tmp_path / "o2"))
    assert result.returncode == 2 and "holds no eval.py" in result.stderr

    bad_config = tmp_path / "bad_config"
    _write_app(bad_config, {"batch_size": 0})
    result = _run_cli("build", str(bad_config), "--out", str(tmp_path / "o3"))
    assert result.returncode == 2 and "batch_size must be an integer >= 1" in result.stderr
    assert not (tmp_path / "o3").exists()

    good = tmp_path / "good"
    _write_app(good, {})
    out = tmp_path / "o4"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    refused = _run_cli("build", str(good), "--out", str(out))
    assert refused.returncode == 2 and "is not empty; pass --force" in refused.stderr
    assert (out / "stale.txt").exists()
    forced = _run_cli("build", str(good), "--out", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "stale.txt").exists() and (out / "evals" / "good" / "eval.py").is_file()

    # --force never empties a folder holding the sources.
    result = _run_cli("build", str(good), "--out", str(tmp_path), "--force")
    assert result.returncode == 2 and "holds the sources" in result.stderr
    assert (good / "eval.py").is_file()


def test_build_pre_script_wraps_serving_build(tmp_path):
    script = REPO / "build" / "build_pre"
    assert os.access(script, os.X_OK)
    env = dict(os.environ, SERVING=str(Path(sys.executable).parent / "serving"))
    result = subprocess.run([str(script), str(APP_DIR), str(tmp_path / "ctx")], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ctx" / "evals" / APP / "eval.py").is_file()
    usage = subprocess.run([str(script)], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def _write_answering_app(app_dir, body, app_json=None):
    """An app whose eval.py is `body` followed by handlers answering {"answer": answer(configs)}."""
    app_dir.mkdir(parents=True)
    (app_dir / "eval.py").write_text(body + "\n\n"
                                     "from evals.utils import create_net_handler, net_inference_handler\n\n\n"
                                     "@create_net_handler\n"
                                     "def create_net(configs):\n"
                                     "    return {'answer': answer(configs)}, 0, ''\n\n\n"
                                     "@net_inference_handler\n"
                                     "def net_inference(model, requests):\n"
                                     "    return [{'code': 0, 'message': '', 'result': {'answer': model['answer']}}\n"
                                     "            for _ in requests], 0, ''\n")
    if app_json is not None:
        (app_dir / "app.json").write_text(json.dumps(app_json))


def _served_answer(context, app):
    """What the image's CMD, run in `context`, answers for `app` (the app must be READY: SERVING_STRICT)."""
    server = _image_cmd_server(context)
    try:
        with Client("127.0.0.1", server.port, app, timeout=30) as client:
            states = {entry["name"]: entry["state"] for entry in client.apps()}
            result = client.infer({"body": b"x"})
    finally:
        server.stop()
    assert states == {app: "READY"}
    assert "error" not in result[0], result
    return result[0]["answer"]


def test_classic_layout_app_loads_in_the_image(tmp_path):
    """Seed 003's layout: eval.py with its code under src/, imported as evals.src.*; served with --app-name."""
    classic = tmp_path / "classic"
    _write_answering_app(classic, "from evals.src.post import answer")
    (classic / "src").mkdir()
    (classic / "src" / "__init__.py").write_text("")
    (classic / "src" / "post.py").write_text("from evals.src.numbers import FORTY_TWO\n\n\n"
                                             "def answer(configs):\n    return FORTY_TWO\n")
    (classic / "src" / "numbers.py").write_text("FORTY_TWO = 42\n")
    context = tmp_path / "ctx"
    result = _run_cli("build", str(classic), "--out", str(context), "--app-name", "legacy")
    assert result.returncode == 0, result.stderr
    assert (context / "evals" / "src" / "post.py").read_text() == (classic / "src" / "post.py").read_text()
    assert _served_answer(context, "legacy") == 42


def test_modules_imported_as_evals_siblings_load_in_the_image(tmp_path):
    """A classic app's own modules beside eval.py (`evals.helpers`, `from evals import tables`) and a package shared
    by the apps of an evals/ folder (`evals.common`) resolve in the image as they did from the folders."""
    classic = tmp_path / "classic"
    _write_answering_app(classic, "import evals.helpers\nfrom evals import tables\n\n\n"
                                  "def answer(configs):\n    return evals.helpers.twice(tables.TWENTY_ONE)")
    (classic / "helpers.py").write_text("def twice(x):\n    return 2 * x\n")
    (classic / "tables.py").write_text("TWENTY_ONE = 21\n")
    result = _run_cli("build", str(classic), "--out", str(tmp_path / "ctx1"), "--app-name", "legacy")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ctx1" / "evals" / "helpers.py").is_file()
    assert _served_answer(tmp_path / "ctx1", "legacy") == 42

    evals_dir = tmp_path / "evals"
    _write_answering_app(evals_dir / "reader", "from evals.common.units import answer")
    (evals_dir / "common").mkdir()
    (evals_dir / "common" / "__init__.py").write_text("")
    (evals_dir / "common" / "units.py").write_text("def answer(configs):\n    return 'shared'\n")
    (evals_dir / "unrelated").mkdir()  # not imported: stays out of the context
    result = _run_cli("build", str(evals_dir / "reader"), "--out", str(tmp_path / "ctx2"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "ctx2" / "evals" / "unrelated").exists()
    assert _served_answer(tmp_path / "ctx2", "reader") == "shared"


def test_an_imported_evals_sibling_that_is_an_app_is_refused(tmp_path):
    evals_dir = tmp_path / "evals"
    _write_answering_app(evals_dir / "reader", "from evals.other.post import answer")
    _write_answering_app(evals_dir / "other", "")
    result = _run_cli("build", str(evals_dir / "reader"), "--out", str(tmp_path / "ctx"))
    assert result.returncode == 2
    assert "imports evals.other" in result.stderr and "second app" in result.stderr
    assert not (tmp_path / "ctx").exists()


def test_absolute_paths_inside_the_app_are_made_relative(tmp_path):
    """The image has no build host's folders: an absolute path into the app folder must point at the copy."""
    app_dir = tmp_path / "src" / "reader"
    body = "def answer(configs):\n    return open(configs['model_files']['net']).read()"
    _write_answering_app(app_dir, body, {"model_files": {"net": str(app_dir / "weights" / "net.txt")},
                                         "custom_files": {"vocab": str(app_dir)}})
    (app_dir / "weights").mkdir()
    (app_dir / "weights" / "net.txt").write_text("the app's own weights")
    context = build_context(app_dir, tmp_path / "ctx")
    rewritten = json.loads((context / "evals" / "reader" / "app.json").read_text())
    assert rewritten["model_files"] == {"net": "weights/net.txt"}
    assert rewritten["custom_files"] == {"vocab": "."}
    # Served with the source gone: nothing may still point at it.
    (tmp_path / "src").rename(tmp_path / "gone")
    assert _served_answer(context, "reader") == "the app's own weights"


@pytest.mark.parametrize("name, target, message", [
    ("weights.bin", "/nonexistent/weights.bin", "is broken: its target does not exist"),
    ("parent", "..", "leads to a folder outside the app folder"),
    ("elsewhere", "{outside}", "leads to a folder outside the app folder"),
    ("sub/again", "..", "leads to a folder that contains it: a loop"),
])
def test_bad_links_are_refused_naming_them_and_leave_no_output(tmp_path, name, target, message):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not the app's")
    app_dir = tmp_path / "app"
    _write_app(app_dir, {})
    (app_dir / "sub").mkdir()
    (app_dir / name).symlink_to(target.format(outside=outside))
    fresh = _run_cli("build", str(app_dir), "--out", str(tmp_path / "new"))
    assert fresh.returncode == 2, fresh.stderr
    assert "Traceback" not in fresh.stderr and message in fresh.stderr and str(app_dir / name) in fresh.stderr
    assert not (tmp_path / "new").exists()
    # An earlier context is kept, even with --force: the app is checked before --out is touched.
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "Dockerfile").write_text("an earlier build")
    forced = _run_cli("build", str(app_dir), "--out", str(kept), "--force")
    assert forced.returncode == 2 and message in forced.stderr
    assert [p.name for p in kept.iterdir()] == ["Dockerfile"]


def test_links_that_stay_usable_are_copied_as_plain_files(tmp_path):
    shared = tmp_path / "shared.bin"
    shared.write_bytes(b"weights kept elsewhere")
    app_dir = tmp_path / "app"
    _write_app(app_dir, {})
    (app_dir / "data").mkdir()
    (app_dir / "data" / "labels.txt").write_text("a\n")
    (app_dir / "model.bin").symlink_to(shared)          # a file anywhere: its content is copied
    (app_dir / "current").symlink_to("data")            # a folder inside the app: copied as a folder
    context = build_context(app_dir, tmp_path / "ctx")
    app_out = context / "evals" / "app"
    assert (app_out / "model.bin").read_bytes() == b"weights kept elsewhere"
    assert (app_out / "current" / "labels.txt").read_text() == "a\n"
    assert not [p for p in context.rglob("*") if p.is_symlink()]


def test_printed_docker_command_is_shell_quoted(tmp_path):
    app_dir = tmp_path / "app"
    _write_app(app_dir, {})
    out = tmp_path / "build's ctx"
    result = _run_cli("build", str(app_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    command = result.stdout.strip().splitlines()[-1]
    assert shlex.split(command) == ["docker", "build", "-t", "serving-app", str(out)]


# ---- the Dockerfiles -----------------------------------------------------------------------------------------


def _torch_pin():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    pins = re.findall(r"^\s*torch==(\S+)", setup["options"]["install_requires"], re.M)
    assert len(pins) == 1
    return pins[0]


@pytest.mark.parametrize("device", sorted(DOCKERFILES))
def test_dockerfile_conventions(device):
    parser = _parse_dockerfile(DOCKERFILES[device])
    assert not parser.is_multistage
    users = _instructions(parser, "USER")
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    healthchecks = _instructions(parser, "HEALTHCHECK")
    assert len(healthchecks) == 1 and healthchecks[0].endswith('CMD ["serving", "health"]')
    assert json.loads(parser.cmd) == ["serving", "serve"]
    # tini as PID 1 (installed by the image): signals forwarded, orphans reaped.
    assert _instructions(parser, "ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
    runs = " ".join(_instructions(parser, "RUN"))
    assert re.search(r"apt-get install -y --no-install-recommends [\w.\- ]*\btini\b", runs)
    envs = parser.envs
    assert (envs["SERVING_PORT"], envs["SERVING_METRICS_PORT"]) == ("9000", "9100")
    assert envs["PYTHONPATH"] == IMAGE_ROOT
    assert _instructions(parser, "EXPOSE") == ["9000 9100"]
    # The server writes only under SERVING_DATA_DIR: made in the image for its user, and a volume.
    data_dir = envs["SERVING_DATA_DIR"]
    assert data_dir == "/data" and json.loads(_instructions(parser, "VOLUME")[-1]) == [data_dir]
    assert f"install -d -o {users[-1]} -g {users[-1]} {data_dir}" in runs
    assert parser.args["TORCH_VERSION"] == _torch_pin()
    assert "pip install --no-cache-dir ." in runs
    # rapidocr-onnxruntime's opencv-python (the GUI build, needing libGL) is swapped for the headless build.
    assert re.search(r"pip uninstall -y [\w -]*\bopencv-python\b", runs) and '"opencv-python-headless==' in runs
    if device == "cpu":
        assert parser.baseimage == "python:3.11-slim"
        assert "--index-url https://download.pytorch.org/whl/cpu" in runs
        # The native front end is built in the image (the context carries its source, never a host's build), the
        # packages of the libraries it links are kept, and the image serves with it.
        assert FRONTEND_BUILD in runs and envs["SERVING_FRONTEND"] == "native"
        assert re.search(r"apt-mark manual \$\(ldd serving/frontend/_frontend\*\.so .*dpkg -S", runs)
    else:
        assert re.match(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu22\.04$", parser.baseimage)
        assert re.search(r"download\.pytorch\.org/whl/cu\d+$", parser.args["TORCH_INDEX"])
        assert "python3.11" in runs and "pip uninstall -y onnxruntime" in runs
        # onnxruntime-gpu pinned to the onnxruntime version pip resolved (not whatever PyPI has newest).
        assert '"onnxruntime-gpu==${ort_version}"' in runs and 'ort_version="$(python -c' in runs
        assert envs["SERVING_FRONTEND"] == "python" and FRONTEND_BUILD not in runs


def _data_dir_of(context):
    return context.parent / f"{context.name}-data"


def _image_cmd_server(context):
    """The image's CMD run directly in a context: its environment as the Dockerfile sets it, paths under the
    image root mapped to the context, the ports left to the OS. The native front end the image builds is this
    checkout's build (test_image_cmd_serves_the_context builds it from a context, as the image does)."""
    frontend = context / "serving" / "frontend"
    if not list(frontend.glob("_frontend*.so")):
        built = load_extension()
        assert built is not None, "the native front end is not built: make install"
        shutil.copy2(built.__file__, frontend)
    parser = _parse_dockerfile(context / "Dockerfile")
    command = json.loads(parser.cmd)
    # The console script `pip install .` puts on PATH in the image is the one of this environment here.
    executable = Path(sys.executable).parent / command[0]
    env = {name: value.replace(IMAGE_ROOT, str(context)) for name, value in parser.envs.items()
           if name.startswith(("SERVING_", "PYTHON"))}
    # The image's data volume: a folder beside the context here (not /data of this machine).
    env.update(SERVING_PORT="0", SERVING_METRICS_PORT="0", SERVING_HOST="127.0.0.1",
               SERVING_DATA_DIR=str(_data_dir_of(context)))
    return RunningServer([], env=env, timeout=SERVE_TIMEOUT_S, command=[str(executable), *command[1:]],
                         cwd=context)


def _shape_png():
    image = np.full((96, 96, 3), 40, np.uint8)
    cv2.circle(image, (48, 48), 30, (0, 200, 255), -1)
    ok, encoded = cv2.imencode(".png", image)
    assert ok
    return encoded.tobytes()


def test_image_cmd_serves_the_context(contexts):
    context = contexts["cpu"]
    assert not list((context / "serving" / "frontend").glob("_frontend*.so")), "a host's build went into the context"
    # The Dockerfile's build of the native front end, from the context's own source.
    built = subprocess.run([sys.executable, *FRONTEND_BUILD.split()[1:]], cwd=context, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(context)})
    assert built.returncode == 0, built.stderr
    server = _image_cmd_server(context)
    assert "(native front end" in server.output
    try:
        # The runtime imported is the context's copy, not this checkout's.
        probe = "import serving, evals; print(serving.__file__, evals.__file__)"
        where = subprocess.run([sys.executable, "-c", probe], cwd=context, env=server.env, capture_output=True,
                               text=True, timeout=30)
        assert where.stdout.split() == [str(context / name / "__init__.py") for name in ("serving", "evals")]

        with Client("127.0.0.1", server.port, APP, timeout=30) as client:
            apps = {app["name"]: app for app in client.apps()}
            assert list(apps) == [APP] and apps[APP]["state"] == "READY"
            model_path = apps[APP]["config"]["model_files"]["model"]
            assert Path(model_path).is_relative_to(context)
            result = client.infer({"body": _shape_png()})
        assert "error" not in result[0], result
        assert result[0]["class"] in ("circle", "square", "triangle", "star")

        # The store writes under the image's SERVING_DATA_DIR (mapped to a folder beside the context here).
        import grpc

        from serving.proto import store_pb2, store_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stored = store_pb2_grpc.StoreStub(channel).Put(store_pb2.PutRequest(kind="image", data=_shape_png()),
                                                           timeout=30)
        assert stored.id and (_data_dir_of(context) / "store.sqlite3").is_file()

        # The image's HEALTHCHECK: `serving health` on localhost:$SERVING_PORT.
        health_env = dict(server.env, SERVING_PORT=str(server.port))
        healthy = subprocess.run([str(Path(sys.executable).parent / "serving"), "health"], env=health_env,
                                 capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0 and "SERVING" in healthy.stdout
        unknown = _run_cli("health", "--target", f"127.0.0.1:{server.port}", "--service", "no-such-app")
        assert unknown.returncode == 1
    finally:
        server.stop()
    down = _run_cli("health", "--target", f"127.0.0.1:{server.port}", "--timeout", "2")
    assert down.returncode == 1


# ---- the manifests -------------------------------------------------------------------------------------------


def _manifests(*parts):
    with open(REPO.joinpath("deploy", *parts), encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _k8s_validate(resource):
    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def _grpc_probe_ports(container):
    return {container[probe]["grpc"]["port"] for probe in ("readinessProbe", "livenessProbe")}


def test_deployment_and_service_validate():
    resources = {doc["kind"]: doc for doc in _manifests("kubernetes", "deployment.yaml")}
    assert set(resources) == {"Deployment", "Service"}
    for resource in resources.values():
        _k8s_validate(resource)
    container, = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert _grpc_probe_ports(container) == {int(env["SERVING_PORT"])}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": int(env["SERVING_PORT"]), "metrics": int(env["SERVING_METRICS_PORT"])}
    # The root filesystem is read-only: the data folder the server writes is a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"]
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts.get(env["SERVING_DATA_DIR"]) in {volume["name"] for volume in pod["volumes"]}
    service_ports = {port["targetPort"] for port in resources["Service"]["spec"]["ports"]}
    assert service_ports <= set(ports)
    assert resources["Service"]["spec"]["selector"].items() <= \
        resources["Deployment"]["spec"]["template"]["metadata"]["labels"].items()


def test_crds_have_no_bundled_schema():
    """Why the KServe kinds need a check of their own (see the module docstring)."""
    runtime, = _manifests("kserve", "servingruntime.yaml")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        _k8s_validate(runtime)


# The KServe fields the runtime relies on, from the ServingRuntime (serving.kserve.io/v1alpha1) and
# InferenceService (serving.kserve.io/v1beta1) CRDs: required fields and the protocol enums.
_PROTOCOLS = {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}
_NAMED = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}
_SERVING_RUNTIME_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
        "kind": {"const": "ServingRuntime"},
        "metadata": _NAMED,
        "spec": {
            "type": "object",
            "required": ["supportedModelFormats", "containers"],
            "properties": {
                "supportedModelFormats": {"type": "array", "minItems": 1, "items": {
                    **_NAMED, "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                             "autoSelect": {"type": "boolean"}, "priority": {"type": "integer"}},
                    "additionalProperties": False}},
                "protocolVersions": {"type": "array", "items": _PROTOCOLS},
                "multiModel": {"type": "boolean"},
                "containers": {"type": "array", "minItems": 1},
            },
        },
    },
}
_INFERENCE_SERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": _NAMED,
        "spec": {"type": "object", "required": ["predictor"], "properties": {"predictor": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "model": {"type": "object", "required": ["modelFormat"], "properties": {
                    "modelFormat": _NAMED,
                    "runtime": {"type": "string"},
                    "protocolVersion": _PROTOCOLS,
                    "storageUri": {"type": "string"},
                }},
            },
        }}},
    },
}
# KServe's model spec inlines a core Container; these are its own fields on top.
_KSERVE_MODEL_FIELDS = ("modelFormat", "runtime", "protocolVersion", "storageUri")


def _pod_of(containers):
    """A Pod around containers, so kubernetes-validate checks them against the core v1 Container schema."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "embedded"}, "spec": {"containers": containers}}


def test_kserve_runtime_and_inference_service():
    runtime, = _manifests("kserve", "servingruntime.yaml")
    service, = _manifests("kserve", "inferenceservice.yaml")
    jsonschema.validate(runtime, _SERVING_RUNTIME_SCHEMA)
    jsonschema.validate(service, _INFERENCE_SERVICE_SCHEMA)

    spec = runtime["spec"]
    _k8s_validate(_pod_of(spec["containers"]))
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    container, = spec["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    # KServe sends gRPC to the container port named h2c: the port the server listens on and is probed on.
    h2c, = [port["containerPort"] for port in container["ports"] if port["name"] == "h2c"]
    assert h2c == int(env["SERVING_PORT"]) and _grpc_probe_ports(container) == {h2c}
    assert container["resources"]["requests"]

    model = service["spec"]["predictor"]["model"]
    as_container = {key: value for key, value in model.items() if key not in _KSERVE_MODEL_FIELDS}
    _k8s_validate(_pod_of([{"name": "kserve-container", **as_container}]))
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {fmt["name"] for fmt in spec["supportedModelFormats"]}
    assert model["protocolVersion"] in spec["protocolVersions"]


@pytest.mark.parametrize("bad", [
    {"spec": {"containers": [{"name": "c"}]}},  # no supportedModelFormats
    {"spec": {"supportedModelFormats": [{"name": "x"}], "protocolVersions": ["v3"], "containers": [{}]}},
])
def test_kserve_schema_refuses_broken_runtimes(bad):
    """The hand-written schema has teeth: it refuses what the CRD would."""
    runtime = {"apiVersion": "serving.kserve.io/v1alpha1", "kind": "ServingRuntime", "metadata": {"name": "r"},
               **bad}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(runtime, _SERVING_RUNTIME_SCHEMA)
