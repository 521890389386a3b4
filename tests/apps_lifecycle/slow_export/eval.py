"""A test app whose export hook takes as long as its snapshot's meta says: for stopping a server while it exports.

export() writes its process id to the file the snapshot's meta names ("pid_file"), so that a test knows the
export has begun and can check that its process is gone afterwards, then sleeps meta["sleep_s"] seconds before
it writes a servable app."""
import os
import time
from pathlib import Path

from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{"code": 0, "message": "", "result": {"ok": True}} for _ in requests], 0, ""


_EXPORTED_APP = '''
from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{"code": 0, "message": "", "result": {"exported": True}} for _ in requests], 0, ""
'''


def export(model_bytes, meta, out_dir):
    Path(meta["pid_file"]).write_text(str(os.getpid()))
    time.sleep(float(meta.get("sleep_s", 0)))
    (Path(out_dir) / "eval.py").write_text(_EXPORTED_APP)
