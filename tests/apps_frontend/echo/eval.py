"""A test app whose every answer is a function of its request alone, so that two servers can be compared byte for
byte (tests/test_frontend.py).

Each instance's result echoes its tensors (as tensors), its attribute and the params; a body comes back reversed.
An attribute {"fail": code} fails that instance; params {"sleep_ms": n} make net_inference sleep; params
{"batch_fail": [code, message]} fail the whole batch; an attribute {"mark": text} is remembered, and params
{"marks": true} return the marks seen so far (what never reached net_inference is not among them).
"""
import time

import numpy as np

from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    return {"marks": []}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    for request in requests:
        attribute = request["data"].get("attribute")
        if isinstance(attribute, dict) and "mark" in attribute:
            model["marks"].append(attribute["mark"])
    for request in requests:
        if request["params"].get("batch_fail"):
            code, message = request["params"]["batch_fail"]
            return [], code, message
    sleep_ms = max(request["params"].get("sleep_ms", 0) for request in requests)
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    rets = []
    for request in requests:
        data = request["data"]
        attribute = data.get("attribute")
        if isinstance(attribute, dict) and attribute.get("fail"):
            rets.append({"code": attribute["fail"], "message": f"instance refused with {attribute['fail']}"})
            continue
        result = {"attribute": attribute, "params": request["params"]}
        for key, value in data.items():
            if isinstance(value, np.ndarray):
                result["echo_" + key] = value
        if request["params"].get("marks"):
            result["marks"] = list(model["marks"])
        ret = {"code": 0, "message": "", "result": result}
        if data.get("body") is not None:
            ret["body"] = bytes(reversed(data["body"]))
        rets.append(ret)
    return rets, 0, ""
