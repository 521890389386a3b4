# -*- coding: utf-8 -*-
'''
    oldscript: a fixture app written as public eval scripts for the old host are (tests/test_eval_contract.py).

    It indexes each image's data directly (data["uri"], data["body"], data["attribute"]), as those scripts
    do, and reports what it saw. Params steer it: {"raise": [name, *args]} raises that error class from
    evals.utils.error, {"top": [code, message]} returns that batch code with rets that match the requests,
    {"ret_code": n} gives every ret code n. An attribute {"fail": n} fails that image's request with code n.
'''
import threading
import time
import traceback

from evals.utils import create_net_handler, net_preprocess_handler, net_inference_handler, CTX, \
    monitor_rt_load, monitor_rt_forward, monitor_rt_post
from evals.utils import *
from evals.utils.error import *
from evals.utils.image import load_image
from evals.utils.logger import logger


@create_net_handler
def create_net(configs):
    start = time.time()
    logger.info("[Python net_init] configs: %s", configs, extra={"reqid": ""})
    model = {"batch_size": value_check(configs, "batch_size"), "thread": threading.get_ident(),
             "init": [CTX.app, CTX.reqID, CTX.logger.extra.get("reqid")]}
    monitor_rt_load().observe(time.time() - start)
    return model, 200, "Success"   # 200 is success too; a message with a success code is not a failure


@net_inference_handler
def net_inference(model, reqs):
    params = reqs[0]["params"]
    if params.get("raise"):
        name, args = params["raise"][0], params["raise"][1:]
        raise globals()[name](*args)
    if len(reqs) > model["batch_size"]:
        raise ErrorOutOfBatchSize(model["batch_size"])
    rets = []
    with monitor_rt_forward(number=len(reqs)).time():
        for req in reqs:
            rets.append(_one(model, req, len(reqs)))
    if params.get("top"):
        return rets, params["top"][0], params["top"][1]
    monitor_rt_post(number=len(reqs)).observe(0.0)
    return rets, 200, ""


def _one(model, req, n):
    datas = req["data"] if isinstance(req["data"], list) else [req["data"]]
    images = []
    try:
        for data in datas:
            attribute = data["attribute"]
            if attribute is not None and attribute.get("fail"):
                return {"code": attribute["fail"], "message": "refused by attribute"}
            img = load_image(data["uri"], body=data["body"])
            images.append({"shape": list(img.shape), "uri": data["uri"], "has_body": data["body"] is not None,
                           "attribute": attribute})
    except ErrorBase as e:
        return {"code": e.code, "message": e.message}
    except Exception as e:
        CTX.logger.error("inference error: %s", traceback.format_exc())
        return {"code": 599, "message": str(e)}
    code = req["params"].get("ret_code", 0)
    return {"code": code, "message": "", "result": {
        "images": images, "batch": n, "app": CTX.app, "reqid": CTX.reqID,
        "logger_reqid": CTX.logger.extra.get("reqid"), "init": model["init"],
        "same_thread": threading.get_ident() == model["thread"]}}
