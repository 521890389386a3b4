"""A test app whose model can be kept busy: a batch with params {"hold": true} does not return until the module's
GATE is set (at most 30 s). Every request is answered {"ok": true}."""
import threading

from evals.utils import create_net_handler, net_inference_handler

GATE = threading.Event()


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    if any(r["params"].get("hold") for r in requests):
        GATE.wait(30)
    return [{"code": 0, "message": "", "result": {"ok": True}} for _ in requests], 0, ""
