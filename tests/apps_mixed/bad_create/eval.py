from evals.utils import create_net_handler, net_inference_handler
from evals.utils.error import ErrorFileNotExist


@create_net_handler
def create_net(configs):
    raise ErrorFileNotExist("/models/missing.onnx")


@net_inference_handler
def net_inference(model, requests):
    return [], 0, ""
