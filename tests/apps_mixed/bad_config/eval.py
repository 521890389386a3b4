from evals.utils import create_net_handler, net_inference_handler


@create_net_handler
def create_net(configs):
    return {"batch_size": configs["batch_size"]}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    return [{"code": 0, "message": "", "result": {"ok": True}} for _ in requests], 0, ""
