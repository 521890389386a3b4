"""mvp_detector: the built-in defect-detector trainer behind the MVP training RPCs.

It is an app like any other (the folder name is its name), with the training hooks of serving.jobs beside
the inference functions. The server's default trainer app (`serve --trainer-app`) is this one, so a TRAIN
task whose ParamClass.model_name names no trainer app of its own (the seed's "mvp_model") runs here.

    train(job)                 trains the detector of serving.training (a CenterNet on a ResNet / VGG style
                               backbone) on json_mongodb_id, scores every snapshot on json_val_id
    test(job)                  runs a snapshot over a dataset: COCO detections, which the worker stores,
                               renders and evaluates
    export(model, meta, out)   writes a servable app folder for a snapshot (ONNX + this app's pre- and
                               post-processing): `serving export --model-id ID`, TaskControl.model_export
    check_train_params(params) refuses at submit time what train() would refuse (400 before anything is stored)

ParamClass mapping: net_model (resnet, res18, res34, res50, res101, vgg16; "" = res18, or the snapshot's when
fine-tuning) and model_scope (SMALL / NORMAL / BIG) choose the backbone's depth and width; dataset_expansion_lst
the augmentations (HOR_FLIPE, VER_FLIPE, ROTATE_90 move the boxes with the pixels; VAGUE = blur);
inital_learning_rate is the peak of a warm-up + cosine schedule over max_num_iters iterations of batch_size
images; snap_shot_ivterval is the snapshot interval (0: at the end only); device_type GPU needs a CUDA device
(refused with 400 otherwise); device_num > 1 trains with that many torch.distributed processes (gloo on CPU,
NCCL on GPU) sharing each batch.

Decisions:
- Without json_val_id, every 10th training image (at least one) is held out for validation, so the mAP in the
  progress records still measures images the step did not train on.
- A TrainRecord is written at every snapshot (with that snapshot's validation mAP@.5 in `mAP`); loss is the
  mean over the iterations since the previous record.
- Images are resized to INPUT_SIZE x INPUT_SIZE (256) for the network; boxes come back in image pixels.
- Inference calls on this app itself are refused with 400: it trains; a snapshot is served once exported.
- Fine-tuning (trained_model_id) keeps the snapshot's architecture, since its weights fit no other: a
  net_model or model_scope left at the ParamClass default ("" / SMALL = 0) takes the snapshot's value, so a
  task naming only the model and data fine-tunes any snapshot. proto3 cannot tell an explicit SMALL from an
  unset scope, so SMALL follows the snapshot too; a net_model or a NORMAL / BIG scope set to something else
  than the snapshot's fails the task with a message naming both architectures. A resumed task reads its
  architecture from its own last snapshot the same way.

The heavy modules (torch, serving.training.trainer) are imported inside the hooks: they run in the task's
worker process, never in the serving process that imports this file to serve.
"""
from evals.utils import create_net_handler, net_inference_handler
from serving.training.params import NET_MODELS

# The ParamClass.net_model names train() accepts ("" is the default, res18); others are refused at submit.
TRAIN_NET_MODELS = NET_MODELS
INPUT_SIZE = 256
DEFAULT_NET_MODEL = "res18"
_SCOPES = ("SMALL", "NORMAL", "BIG")  # ModelScopeClass values 0, 1, 2
_EXPANSIONS = ("HOR_FLIPE", "VER_FLIPE", "ROTATE_90", "VAGUE")  # ExpansionDataClass values 0..3
_VALIDATION_EVERY = 10
_TEST_CHUNK = 16


@create_net_handler
def create_net(configs):
    return {"name": configs.get("app", "mvp_detector")}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    message = (f"{model['name']} trains detectors and serves none itself: export a snapshot "
               "(`serving export --model-id ID`) and call the exported app")
    return [{"code": 400, "message": message, "result": None} for _ in requests], 0, ""


# ---------------------------------------------------------------------------------------------- parameters


def _train_params(params, device_checked=True, start=None):
    """TrainParams of a task's normalised ParamClass dict (serving.jobs.params.check_train_params output).

    ``start``: the TrainParams dict of the checkpoint training starts from (fine-tuning or resuming), whose
    net_model / model_scope fill those left at the ParamClass defaults (see Decisions above).
    """
    from serving.training.params import TrainParams

    max_iters = params["max_num_iters"]
    interval = params["snap_shot_ivterval"] or max_iters
    device = "GPU" if params["device_type"] == 1 else "CPU"
    net_model = params["net_model"] or (start or {}).get("net_model") or DEFAULT_NET_MODEL
    scope = _SCOPES[params["model_scope"]]
    if start and params["model_scope"] == 0 and start.get("model_scope") in _SCOPES:
        scope = start["model_scope"]
    return TrainParams(
        net_model=net_model, model_scope=scope,
        expansions=[_EXPANSIONS[value] for value in params["dataset_expansion_lst"]],
        lr=params["inital_learning_rate"], max_iters=max_iters, batch_size=params["batch_size"],
        snapshot_interval=min(interval, max_iters), device=device if device_checked else "CPU",
        device_num=params["device_num"], input_size=INPUT_SIZE, seed=int(params.get("task_id", 0)) % 2**32)


def check_train_params(params):
    """Called by the server when a TRAIN task is submitted: ValueError (answered 400) for what train() refuses.

    The GPU check here does not import torch (the serving process must stay light): it asks the CUDA driver
    whether it sees a device. train() checks again with torch in the worker.
    """
    _train_params(params, device_checked=False)
    if params["device_type"] == 1:
        found = _cuda_devices()
        if found < params["device_num"]:
            raise ValueError(f"device_type GPU with device_num {params['device_num']}: this server has "
                             f"{found} CUDA GPU(s); use device_type CPU")


def _cuda_devices():
    """The number of CUDA devices the driver reports (0 without a driver), without importing torch."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


# ---------------------------------------------------------------------------------------------- hooks


class _Reporter:
    """serving.training.trainer's reporter interface on top of a serving.jobs Job."""

    def __init__(self, job):
        self.job = job

    def progress(self, record):
        self.job.progress(record.cur_iter_num, record.loss, record.lr, record.max_iter_num, record.map50)

    def checkpoint(self, iteration, state, metrics):
        self.job.checkpoint(iteration, state, metrics)

    def should_stop(self):
        return self.job.should_stop()


def _hold_out(coco, images):
    """(train, val) of one dataset: every _VALIDATION_EVERY-th image (at least one) becomes validation."""
    picked = set(range(0, len(images), _VALIDATION_EVERY)) if len(images) > 1 else set()
    if not picked:
        return (coco, images), (coco, images)

    def subset(indices):
        metas = [coco["images"][i] for i in indices]
        ids = {meta["id"] for meta in metas}
        part = {**coco, "images": metas, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
        return part, [images[i] for i in indices]

    rest = [i for i in range(len(images)) if i not in picked]
    return subset(rest), subset(sorted(picked))


def train(job):
    from serving.training.trainer import load_state, train as run_training

    if job.resume_state is not None:
        init_state, resume = job.resume_state, True  # paused or interrupted: continue where it stopped
    else:
        init_state, resume = job.initial_model, False  # from trained_model_id's weights, or from scratch
    start = load_state(init_state)["params"] if init_state is not None else None
    params = _train_params(job.params, start=start)
    train_coco, train_images = job.train_dataset()
    validation = job.val_dataset()
    if validation is None:
        (train_coco, train_images), validation = _hold_out(train_coco, train_images)
    val_coco, val_images = validation
    run_training(params, train_coco, train_images, val_coco, val_images, _Reporter(job), init_state=init_state,
                 resume=resume)


def test(job):
    """COCO detections of the model under test (trained_model_id) on the task's dataset."""
    from serving.training.trainer import (EVAL_SCORE_THRESHOLD, check_categories, coco_detections, load_state,
                                          model_from_state, predict)

    model, classes = model_from_state(job.initial_model)
    input_size = load_state(job.initial_model)["params"]["input_size"]
    coco, images = job.train_dataset()
    # Classes map to categories by name: a dataset stored before the store refused repeated names could
    # otherwise send one class's detections to another category.
    check_categories(coco, f"dataset {job.params['json_mongodb_id']}")
    category_of = {category["name"]: category["id"] for category in coco["categories"]}
    missing = [name for name in classes if name not in category_of]
    if missing:
        raise ValueError(f"the model's classes {missing} are not categories of dataset "
                         f"{job.params['json_mongodb_id']} ({sorted(category_of)})")
    category_ids = [category_of[name] for name in classes]
    detections = []
    for start in range(0, len(images), _TEST_CHUNK):
        if job.should_stop():
            break
        metas = coco["images"][start:start + _TEST_CHUNK]
        chunk = predict(model, images[start:start + _TEST_CHUNK], input_size, EVAL_SCORE_THRESHOLD)
        for meta, (boxes, scores, labels) in zip(metas, chunk):
            detections += coco_detections(meta["id"], boxes, scores, labels, category_ids)
        job.test_progress(start + len(metas), len(images))
    return detections


def export(model_bytes, meta, out_dir):
    """Write the servable app of a snapshot into out_dir (see serving.training.export.export_app). A model
    document that is not one of this trainer's checkpoints is refused with 400."""
    from serving.jobs.codes import BAD_PARAMS, JobError
    from serving.training.export import export_app
    from serving.training.trainer import load_state

    try:
        state = load_state(model_bytes)
    except ValueError as error:
        # Bad input (400), not an export that broke (500 with a traceback).
        raise JobError(BAD_PARAMS, str(error)) from None
    export_app(state, None, out_dir)  # the dict: the checkpoint is read once
