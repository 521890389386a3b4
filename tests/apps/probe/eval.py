"""A test app that reports what the runtime did: batch sizes, the thread it ran on, the values it received.

Params steer failures: {"raise": true} raises in net_inference, {"exit": true} calls sys.exit there,
{"wrong_count": true} returns one ret too few, {"array_body": true} returns its body as a numpy array
(a ret the runtime cannot read: its truth value is ambiguous), {"batch_fail": [code, message]} fails the batch, {"sleep_ms": n}
sleeps, {"hang_s": n} blocks that long. An instance's attribute {"fail": code} fails that instance only;
{"pre_fail": code} fails it in net_preprocess ({"pre_exit": true}: sys.exit there); {"mark": text} is remembered,
and every result lists the marks seen so far (to prove what never arrived).
"""
import os
import sys
import threading
import time

import numpy as np

from evals.utils import CTX, create_net_handler, net_inference_handler, net_preprocess_handler
from evals.probe.helper import describe


@create_net_handler
def create_net(configs):
    model = {"thread": threading.get_ident(), "configs": configs, "calls": 0, "running": threading.Lock(),
             "seen_marks": []}
    return model, 0, ""


@net_preprocess_handler
def net_preprocess(model, request):
    data = request["data"]
    items = data if isinstance(data, list) else [data]
    for item in items:
        attribute = item.get("attribute")
        if isinstance(attribute, dict) and attribute.get("pre_fail"):
            return request, attribute["pre_fail"], "refused in preprocess"
        if isinstance(attribute, dict) and attribute.get("pre_exit"):
            sys.exit("preprocess gave up")
    request["preprocess_thread"] = threading.get_ident()
    request["preprocess_reqid"] = CTX.reqID
    return request, 0, ""


@net_inference_handler
def net_inference(model, requests):
    if not model["running"].acquire(blocking=False):
        raise RuntimeError("net_inference calls overlapped")
    try:
        return _infer(model, requests)
    finally:
        model["running"].release()


def _infer(model, requests):
    model["calls"] += 1
    params = requests[0]["params"]
    for r in requests:
        attribute = r["data"].get("attribute") if isinstance(r["data"], dict) else None
        if isinstance(attribute, dict) and "mark" in attribute:
            model["seen_marks"].append(attribute["mark"])
    images = sum(len(r["data"]) if isinstance(r["data"], list) else 1 for r in requests)
    if any(r["params"].get("raise") for r in requests):
        raise RuntimeError("boom in eval")
    if any(r["params"].get("exit") for r in requests):
        sys.exit("eval gave up")
    if any(r["params"].get("hang_s") for r in requests):
        time.sleep(max(r["params"].get("hang_s", 0) for r in requests))
    for r in requests:
        if r["params"].get("batch_fail"):
            code, message = r["params"]["batch_fail"]
            return [], code, message
    if params.get("sleep_ms"):
        time.sleep(params["sleep_ms"] / 1000.0)
    rets = []
    for request in requests:
        data = request["data"]
        attribute = data.get("attribute") if isinstance(data, dict) else None
        if isinstance(attribute, dict) and attribute.get("fail"):
            rets.append({"code": attribute["fail"], "message": f"instance refused with {attribute['fail']}"})
            continue
        result = {
            "batch_images": images,
            "batch_requests": len(requests),
            "same_thread": threading.get_ident() == model["thread"],
            "preprocessed": "preprocess_thread" in request,
            "app": CTX.app,
            "reqid": CTX.reqID,
            "params": request["params"],
            "data": describe(data),
            "seen_marks": list(model["seen_marks"]),
            "pid": os.getpid(),
        }
        ret = {"code": 0, "message": "", "result": result}
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, np.ndarray) or isinstance(value, np.generic):
                    result["echo_" + key] = value
            if "body" in data:
                ret["body"] = bytes(reversed(data["body"]))
        rets.append(ret)
    if any(r["params"].get("wrong_count") for r in requests):
        rets = rets[:-1]
    if any(r["params"].get("array_body") for r in requests):
        for ret in rets:
            ret["body"] = np.arange(4, dtype=np.uint8)
    return rets, 0, ""
