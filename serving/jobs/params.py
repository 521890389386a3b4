"""Checking a task's parameters (ParamClass as a dict) before anything is stored: absurd values are refused
with 400 and a message naming the field, so a bad request leaves no row, no queue entry and no file behind."""
import math

from serving.jobs.codes import BAD_PARAMS, JobError

# ParamClass fields in proto order, with the value an unset field takes (proto3: 0 / "" / []).
PARAM_FIELDS = ("model_name", "dataset_expansion_lst", "net_model", "model_scope", "device_type",
                "inital_learning_rate", "device_num", "max_num_iters", "batch_size", "snap_shot_ivterval")
MAX_BATCH_SIZE = 65536
MAX_ITERS = 10**9
MAX_LEARNING_RATE = 10.0
MAX_DEVICES = 64
EXPANSIONS = (0, 1, 2, 3)  # ExpansionDataClass: HOR_FLIPE, VER_FLIPE, ROTATE_90, VAGUE
MODEL_SCOPES = (0, 1, 2)  # SMALL, NORMAL, BIG
DEVICES = (0, 1)  # CPU, GPU


def _int(params, name, low, high, what):
    value = params.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise JobError(BAD_PARAMS, f"{name} must be {what} ({low}..{high}), got {value!r}")
    return value


def check_train_params(params, net_models=None):
    """A normalised copy of ParamClass-as-dict `params` for a TRAIN task; JobError 400 for absurd values.

    `net_models`: the names the trainer app accepts (its TRAIN_NET_MODELS), or None when it declares none.
    """
    unknown = sorted(set(params) - set(PARAM_FIELDS))
    if unknown:
        raise JobError(BAD_PARAMS, f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAM_FIELDS)}")
    out = {name: params.get(name) for name in PARAM_FIELDS}
    out["model_name"] = str(out["model_name"] or "")
    out["net_model"] = str(out["net_model"] or "")
    out["batch_size"] = _int(params, "batch_size", 1, MAX_BATCH_SIZE, "a positive number of images")
    out["max_num_iters"] = _int(params, "max_num_iters", 1, MAX_ITERS, "a positive number of iterations")
    out["snap_shot_ivterval"] = _int(params, "snap_shot_ivterval", 0, MAX_ITERS,
                                     "0 (snapshot at the end only) or a positive interval")
    out["device_num"] = _int(params, "device_num", 0, MAX_DEVICES, "a number of devices, 0 meaning 1") or 1
    out["model_scope"] = _int(params, "model_scope", 0, 2, "a ModelScopeClass value")
    out["device_type"] = _int(params, "device_type", 0, 1, "a DeviceClass value")
    rate = params.get("inital_learning_rate", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) \
            or not 0 < rate <= MAX_LEARNING_RATE:
        raise JobError(BAD_PARAMS, f"inital_learning_rate must be > 0 and <= {MAX_LEARNING_RATE}, got {rate!r}")
    out["inital_learning_rate"] = float(rate)
    expansions = list(params.get("dataset_expansion_lst") or [])
    bad = [value for value in expansions if value not in EXPANSIONS]
    if bad:
        raise JobError(BAD_PARAMS, f"dataset_expansion_lst holds unknown ExpansionDataClass values {bad}")
    out["dataset_expansion_lst"] = expansions
    if net_models is not None and out["net_model"] and out["net_model"] not in net_models:
        raise JobError(BAD_PARAMS, f"unknown net_model {out['net_model']!r}; the trainer knows "
                                   f"{', '.join(sorted(net_models))}")
    return out


def check_task_ids(task_id, interface_id):
    for name, value in (("task_id", task_id), ("interface_id", interface_id)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
            raise JobError(BAD_PARAMS, f"{name} must be a uint64, got {value!r}")
    if task_id == 0:
        raise JobError(BAD_PARAMS, "task_id is 0 (not given): choose a non-zero task id")
