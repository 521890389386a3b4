"""A test app for KServe v2 repository reloads: every result names the code version that produced it.

The tests copy this folder, rewrite VERSION on disk and reload it while calls are in flight. Each
net_inference call sleeps a little so that calls are still queued or running when the swap happens.
"""
import time

import numpy as np

from evals.utils import create_net_handler, net_inference_handler

VERSION = "v1"
_CALL_S = 0.005


@create_net_handler
def create_net(configs):
    return {"version": VERSION}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    time.sleep(_CALL_S)
    rets = [{"code": 0, "message": "", "result": {"version": model["version"], "ones": np.ones(2, np.int32)}}
            for _ in requests]
    return rets, 0, ""
