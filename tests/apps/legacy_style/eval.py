#!/usr/bin/env python
# -*- coding: utf-8 -*-
'''
    legacy_style: a fixture app written the way old eval scripts are written (in Python 3 syntax):
    star imports from evals.utils, a sibling module imported through the evals package, CTX.logger,
    the monitor helpers, per-request error codes, and batch_size enforced by the script itself.

    "model": for each image, its height, width and mean B, G, R, and a label from labels.csv chosen
    by that mean colour.
'''
import time

from evals.utils import *
from evals.utils.error import *
from evals.utils.image import load_image
from evals.utils.logger import logger
from evals.legacy_style.stats import image_stats, pick_label

_STATS_KEY = "legacy_style_stats"


@create_net_handler
def create_net(configs):
    start = time.time()
    CTX.logger.info("[Python net_init] app %s, configs: %s", CTX.app, configs)

    custom_files = value_check(configs, "custom_files", False, {})
    labels_file = file_check(custom_files, "labels")
    synset = _make_synset(labels_file)
    if len(synset) == 0:
        raise ErrorConfig("custom_files.labels")

    width, height = parse_crop_size(configs, default_image_width=224, default_image_height=224)
    batch_size = int(value_check(configs, "batch_size", False, 1))
    use_device = value_check(configs, "use_device", False, "CPU")

    monitor_rt_load().observe(time.time() - start)
    logger.info("labels: %d, crop: %dx%d, batch_size: %d, device: %s",
                len(synset), width, height, batch_size, use_device, extra={"reqid": "net_init"})
    return {"net": {"synset": synset, "batch_size": batch_size, "image_width": width,
                    "image_height": height}}, 0, ""


@net_preprocess_handler
def net_preprocess(model, req):
    data = req["data"]
    start = time.time()
    img = load_image(data.get("uri"), body=data.get("body"))
    monitor_rt_transform().observe(time.time() - start)
    attribute = data.get("attribute") or {}
    attribute[_STATS_KEY] = image_stats(img)
    data["attribute"] = attribute
    CTX.logger.info("preprocessed %s: %dx%d", data.get("uri"), img.shape[1], img.shape[0])
    return req, 0, ""


@net_inference_handler
def net_inference(model, reqs):
    net = model["net"]
    batch_size = net["batch_size"]
    if len(reqs) > batch_size:
        raise ErrorOutOfBatchSize(batch_size)

    rets = []
    with monitor_rt_forward(number=len(reqs)).time():
        for req in reqs:
            rets.append(_infer_one(net, req))
    start = time.time()
    CTX.logger.info("inference done: %d requests", len(reqs))
    monitor_rt_post(number=len(reqs)).observe(time.time() - start)
    return rets, 0, ""


def _infer_one(net, req):
    data = req.get("data")
    if not isinstance(data, dict):
        return {"code": 400, "message": "one image per request", "result": {}}
    try:
        stats = (data.get("attribute") or {}).get(_STATS_KEY)
        if stats is None:  # net_preprocess not run
            stats = image_stats(load_image(data.get("uri"), body=data.get("body")))
    except ErrorBase as _e:
        CTX.logger.warning("load image %s failed: %s", data.get("uri"), _e.message)
        return {"code": _e.code, "message": _e.message, "result": {}}
    result = {
        "height": stats["height"],
        "width": stats["width"],
        "mean_bgr": stats["mean_bgr"],
        "label": pick_label(net["synset"], stats["mean_bgr"]),
    }
    return {"code": 0, "message": "", "result": result}
