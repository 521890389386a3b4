"""A trainer that never polls job.should_stop(): stop must escalate (SIGTERM, then SIGKILL) and keep its snapshot.

Selected by ParamClass.model_name "stubborn" (an app with a train hook names itself). It ends on its own after
HANG_LIMIT_S so that a broken test cannot leave it running.
"""
import time

from evals.utils import create_net_handler, net_inference_handler

HANG_LIMIT_S = 60.0


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{"code": 0, "message": "", "result": {}} for _ in requests], 0, ""


def train(job):
    job.checkpoint(0, b"stubborn state")
    deadline = time.monotonic() + HANG_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.1)
