"""Loading apps: failures reported per app while the others serve, --strict, the classic layout, app.json."""
import asyncio
import gc
import json
import shutil
import subprocess
import sys
import weakref

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import REPO, TESTS, RunningServer, wait_until
from serving.client import Client
from serving.apps import AppRegistry
from serving.config import ConfigError, load_app_config
from serving.inprocess import InProcessRunner


@pytest.fixture(scope="module")
def mixed_server():
    server = RunningServer(["--evals", str(TESTS / "apps_mixed")])
    yield server
    server.stop()


@pytest.mark.parametrize("app, reason", [
    ("bad_import", "No module named 'this_module_does_not_exist'"),
    ("bad_create", "create_net failed with code 400: file not exist: /models/missing.onnx"),
    ("bad_config", "unknown key(s) batch_windw_ms"),
    ("no_inference", "eval.py defines no net_inference()"),
])
def test_a_failed_app_is_reported_and_the_others_keep_serving(mixed_server, app, reason):
    host, port = mixed_server.target.split(":")
    with Client(host, int(port), app) as client:
        result = client.infer({"uri": "x"})
        assert result["code"] == 503 and reason in result["error"]
        info = {a["name"]: a for a in client.apps()}[app]
        assert info["state"] == "FAILED" and reason in info["reason"]
    with Client(host, int(port), "good") as client:
        assert client.infer({"uri": "x"}) == [{"ok": True}]
    with mixed_server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = lambda name: health.Check(health_pb2.HealthCheckRequest(service=name)).status  # noqa: E731
        assert check(app) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert check("good") == health_pb2.HealthCheckResponse.SERVING
        assert check("") == health_pb2.HealthCheckResponse.SERVING
    assert f"app {app}: FAILED" in mixed_server.output


def test_strict_start_up_fails_with_the_reason():
    run = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--evals", str(TESTS / "apps_mixed"),
                          "--port", "0", "--host", "127.0.0.1", "--strict"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    assert "app bad_config failed to load" in run.stderr and "batch_windw_ms" in run.stderr


def _write_classic(root):
    evals = root / "evals"
    (evals / "src").mkdir(parents=True)
    (evals / "src" / "__init__.py").write_text("")
    (evals / "src" / "tools.py").write_text("def shout(text):\n    return text.upper()\n")
    (evals / "eval.py").write_text(
        "from evals.utils import create_net_handler, net_inference_handler\n"
        "from evals.src.tools import shout\n\n"
        "@create_net_handler\n"
        "def create_net(configs):\n"
        "    return {'app': configs['app'], 'n': configs['custom_params']['n']}, 0, ''\n\n"
        "@net_inference_handler\n"
        "def net_inference(model, requests):\n"
        "    return [{'code': 0, 'message': '', 'result': {'text': shout(r['data']['text']), 'n': model['n'],\n"
        "             'app': model['app']}} for r in requests], 0, ''\n")
    (evals / "app.json").write_text(json.dumps({"custom_params": {"n": 3}}))
    return evals


def test_classic_layout_serves_under_the_name_given(tmp_path):
    evals = _write_classic(tmp_path)
    server = RunningServer(["--evals", str(evals), "--app-name", "classic"])
    try:
        host, port = server.target.split(":")
        with Client(host, int(port), "classic") as client:
            assert client.infer({"text": "abc"}) == [{"text": "ABC", "n": 3, "app": "classic"}]
    finally:
        assert server.stop() == 0


def test_classic_layout_needs_a_name(tmp_path):
    evals = _write_classic(tmp_path)
    run = subprocess.run([sys.executable, "-m", "serving.cli", "serve", "--evals", str(evals), "--port", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "--app-name" in run.stderr


def test_app_names_that_are_not_identifiers_import_their_siblings(tmp_path):
    app = tmp_path / "evals" / "text-detection"
    app.mkdir(parents=True)
    (app / "post.py").write_text("def tag():\n    return 'post'\n")
    (app / "eval.py").write_text(
        "from evals.utils import create_net_handler, net_inference_handler\n"
        "from evals.text_detection.post import tag\n"
        "from .post import tag as relative_tag\n\n"
        "@create_net_handler\n"
        "def create_net(configs):\n    return {}, 0, ''\n\n"
        "@net_inference_handler\n"
        "def net_inference(model, requests):\n"
        "    return [{'code': 0, 'message': '', 'result': {'tag': tag(), 'rel': relative_tag()}}\n"
        "            for r in requests], 0, ''\n")
    with InProcessRunner(tmp_path / "evals", "text-detection") as runner:
        assert runner.infer({"uri": "x"}) == [{"tag": "post", "rel": "post"}]


@pytest.mark.parametrize("content, message", [
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
    ({"batch_size": 10**400}, "batch_size must be at most 65536, got an integer of 401 digits"),
    ({"preprocess_workers": 100000}, "preprocess_workers must be at most 256, got 100000"),
    ({"use_device": "TPU"}, "use_device must be one of CPU, GPU, got 'TPU'"),
    ({"batch_window_ms": -1}, "batch_window_ms must be a number >= 0, got -1"),
    ({"request_timeout_s": 0}, "request_timeout_s must be a number > 0, got 0"),
    ({"model_files": {"net": "missing.onnx"}}, "model_files.net: file not found:"),
    ({"model_files": ["a"]}, "model_files must be an object"),
    ({"model_params": 3}, "model_params must be a JSON object"),
    ({"batch_size": 8, "queue_size": 4}, "queue_size (4) must be >= batch_size (8)"),
    ({"bogus": 1, "other": 2}, "unknown key(s) bogus, other"),
    # Valid JSON, but no float: math.isfinite raised OverflowError, reported as an import failure.
    ({"batch_window_ms": 10**400}, "batch_window_ms must be a number >= 0, got an integer too large for a float"),
    ({"request_timeout_s": -10**400}, "request_timeout_s must be a number > 0, got an integer too large"),
    ([1, 2], "must hold a JSON object"),
])
def test_bad_app_json_names_the_key(tmp_path, content, message):
    (tmp_path / "app.json").write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_app_config(tmp_path)
    assert message in err.value.message and err.value.code == 400


def test_app_json_that_cannot_be_read_names_the_file(tmp_path):
    # A directory named app.json stands for any unreadable app.json (the tests may run as root, who reads any file).
    (tmp_path / "app.json").mkdir()
    with pytest.raises(ConfigError) as err:
        load_app_config(tmp_path)
    assert err.value.message == f"{tmp_path / 'app.json'}: cannot be read: Is a directory"
    assert err.value.code == 400


def test_app_json_errors_at_start_up_fail_the_app_with_the_reason_and_no_traceback(tmp_path):
    # The two app.json errors that escaped validation (a number too large for a float, an app.json that cannot be
    # read) were reported as "import of eval.py failed" with a traceback in the server's log.
    evals = tmp_path / "evals"
    for name in ("good", "bigint", "dirjson"):
        shutil.copytree(TESTS / "apps_mixed" / "good", evals / name, ignore=shutil.ignore_patterns("__pycache__"))
    (evals / "bigint" / "app.json").write_text('{"batch_window_ms": 1' + "0" * 400 + "}")
    (evals / "dirjson" / "app.json").mkdir()
    server = RunningServer(["--evals", str(evals)])
    try:
        host, port = server.target.split(":")
        with Client(host, int(port), "good") as client:
            assert client.infer({"uri": "x"}) == [{"ok": True}]
            apps = {app["name"]: app for app in client.apps()}
        where = evals.resolve()
        assert apps["bigint"]["state"] == "FAILED"
        assert apps["bigint"]["reason"] == (f"{where / 'bigint' / 'app.json'}: batch_window_ms must be a number "
                                            ">= 0, got an integer too large for a float (1329 bits)")
        assert apps["dirjson"]["state"] == "FAILED"
        assert apps["dirjson"]["reason"] == f"{where / 'dirjson' / 'app.json'}: cannot be read: Is a directory"
    finally:
        assert server.stop() == 0
    assert "app bigint: FAILED" in server.output and "app dirjson: FAILED" in server.output
    assert "Traceback" not in server.output and "import of eval.py failed" not in server.output


def test_app_json_resolves_files_and_keeps_defaults(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"x")
    (tmp_path / "app.json").write_text(json.dumps({"batch_size": 8, "batch_window_ms": 0,
                                                   "model_files": {"net": "net.onnx"}}))
    config = load_app_config(tmp_path)
    assert config.model_files == {"net": str((tmp_path / "net.onnx").resolve())}
    assert config.batch_window_ms == 0.0 and config.batch_size == 8 and config.use_device == "CPU"
    configs = config.create_net_configs("a", tmp_path)
    assert set(configs) == {"app", "workspace", "batch_size", "use_device", "model_files", "model_params",
                            "custom_files", "custom_params"}
    (tmp_path / "app.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_app_config(tmp_path)


def test_retired_apps_are_freed(tmp_path):
    # The registry freezes the heap once the apps are loaded (gc.freeze); a reloaded or unloaded app, and the model
    # it holds, must still be freed.
    evals = tmp_path / "evals"
    shutil.copytree(TESTS / "apps_kserve", evals, ignore=shutil.ignore_patterns("__pycache__"))

    async def retire_three():
        registry = AppRegistry(evals)
        await registry.load_all()
        retired = []
        for _ in range(2):
            retired.append(weakref.ref(registry.apps["versioned"]))
            await registry.load_app("versioned")
        retired.append(weakref.ref(registry.apps["versioned"]))
        await registry.unload_app("versioned")
        await registry.close()
        return retired

    retired = asyncio.run(retire_three())

    def all_freed():  # (an inference thread may still be ending: it holds nothing, but give it a moment)
        gc.collect()
        return [ref() for ref in retired] == [None, None, None]

    assert wait_until(all_freed, 5)
