# -*- coding: utf-8 -*-
'''
    oldpre: a fixture app (tests/test_eval_contract.py) whose net_preprocess decodes the image the way old
    scripts do, load_image(req["data"]["uri"], body=req["data"]["body"]), and whose net_inference reports it.
'''
from evals.utils import *
from evals.utils.error import *


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_preprocess_handler
def net_preprocess(model, req):
    img = load_image(req["data"]["uri"], body=req["data"]["body"])
    req["params"]["shape"] = list(img.shape)
    return req, 0, ""


@net_inference_handler
def net_inference(model, reqs):
    return [{"code": 0, "message": "", "result": {"shape": r["params"]["shape"]}} for r in reqs], 0, ""
