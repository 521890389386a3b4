"""A test app that answers every request with its process id and the request's attribute; params {"sleep_ms": n}
make a batch take that long (load for the fault tests)."""
import os
import time

from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    sleep_ms = max(r["params"].get("sleep_ms", 0) for r in requests)
    if sleep_ms:
        time.sleep(sleep_ms / 1000.0)
    return [{"code": 0, "message": "", "result": {"pid": os.getpid(), "attribute": r["data"].get("attribute")}}
            for r in requests], 0, ""
