"""A test app whose create_net takes a minute (a large model loading): for stopping a server during start-up.
It says on stdout when create_net has begun, so that a test signals the server while it runs."""
import time

from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    print("slow_start: create_net started", flush=True)
    time.sleep(60)
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{"code": 0, "message": "", "result": {}} for _ in requests], 0, ""
