"""Validated training parameters (:class:`TrainParams`) and their mapping from the platform's ParamClass.

Every check raises ValueError with a message naming the field, the bad value and what is accepted, so a
task submitted with absurd values fails at once with a readable reason instead of deep inside torch.
"""
import math
from dataclasses import asdict, dataclass, field

NET_MODELS = ("resnet", "res18", "res34", "res50", "res101", "vgg16")
MODEL_SCOPES = ("SMALL", "NORMAL", "BIG")
EXPANSIONS = ("HOR_FLIPE", "VER_FLIPE", "ROTATE_90", "VAGUE")
DEVICES = ("CPU", "GPU")

# Upper bounds that catch typos (an extra zero or three) rather than limit real use.
MAX_BATCH_SIZE = 4096
MAX_ITERS = 10_000_000
MAX_LEARNING_RATE = 10.0
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 2048
MAX_DEVICE_NUM = 64


def _is_int(value):
    # bool is an int subclass; True as a batch size is a mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainParams:
    """What one training task needs to know.

    ``net_model`` picks the backbone family, ``model_scope`` its width and depth; ``expansions`` are the
    dataset expansions applied at random during training; ``lr`` is the initial (peak) learning rate of a
    warm-up + cosine schedule over ``max_iters`` iterations of ``batch_size`` images (the global batch: with
    ``device_num`` processes each takes its share); a checkpoint scored on the validation set is taken every
    ``snapshot_interval`` iterations and at the end. ``input_size`` is the square network input side (a
    multiple of 32). ``seed`` fixes initialisation, data order and augmentation. ``photometric`` and
    ``texture_mix`` are the shares of samples given those pixel-only augmentations (serving.training.augment),
    which are what carries a model to surfaces its training set does not hold.
    """

    net_model: str = "res18"
    model_scope: str = "SMALL"
    expansions: tuple = ()
    lr: float = 2e-3
    max_iters: int = 1000
    batch_size: int = 16
    snapshot_interval: int = 100
    device: str = "CPU"
    device_num: int = 1
    input_size: int = 256
    seed: int = 0
    weight_decay: float = 1e-4
    warmup_iters: int = field(default=-1)  # -1: 5 % of max_iters, at most 200
    photometric: float = 0.8  # share of samples given a photometric change (augment.photometric)
    texture_mix: float = 0.5  # share of samples given another defect-free image's relief (augment.texture_mix)

    def __post_init__(self):
        # Accept any iterable of expansion names but store a tuple, so params stay hashable and frozen.
        if isinstance(self.expansions, str):
            raise ValueError(f"expansions must be a list of names from {list(EXPANSIONS)}, "
                             f"not the string {self.expansions!r}")
        object.__setattr__(self, "expansions", tuple(self.expansions))
        self._validate()

    def _validate(self):
        if self.net_model not in NET_MODELS:
            raise ValueError(f"unknown net_model {self.net_model!r}; expected one of {list(NET_MODELS)}")
        if self.model_scope not in MODEL_SCOPES:
            raise ValueError(f"unknown model_scope {self.model_scope!r}; expected one of {list(MODEL_SCOPES)}")
        for name in self.expansions:
            if name not in EXPANSIONS:
                raise ValueError(f"unknown dataset expansion {name!r}; expected names from {list(EXPANSIONS)}")
        if len(set(self.expansions)) != len(self.expansions):
            raise ValueError(f"dataset expansions repeat a name: {list(self.expansions)}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr):
            raise ValueError(f"learning rate must be a finite number, got {self.lr!r}")
        if not 0 < self.lr <= MAX_LEARNING_RATE:
            raise ValueError(f"learning rate must be > 0 and <= {MAX_LEARNING_RATE}, got {self.lr}")
        self._check_int("max_iters", 1, MAX_ITERS)
        self._check_int("batch_size", 1, MAX_BATCH_SIZE)
        self._check_int("snapshot_interval", 1, MAX_ITERS)
        self._check_int("device_num", 1, MAX_DEVICE_NUM)
        self._check_int("input_size", MIN_INPUT_SIZE, MAX_INPUT_SIZE)
        self._check_int("seed", 0, 2**63 - 1)
        self._check_int("warmup_iters", -1, MAX_ITERS)
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (the backbone's total stride), "
                             f"got {self.input_size}")
        if self.batch_size % self.device_num:
            raise ValueError(f"batch_size {self.batch_size} must split evenly over device_num "
                             f"{self.device_num} processes")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not 0 <= self.weight_decay < 1:
            raise ValueError(f"weight_decay must be in [0, 1), got {self.weight_decay!r}")
        for name in ("photometric", "texture_mix"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; expected one of {list(DEVICES)}")
        if self.device == "GPU":
            self._check_cuda()

    def _check_int(self, name, low, high):
        value = getattr(self, name)
        if not _is_int(value):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, got {value}")

    def _check_cuda(self):
        import torch  # only here: plain CPU parameter checks should not pay for importing torch

        if not torch.cuda.is_available():
            raise ValueError("device GPU was requested but CUDA is not available on this machine "
                             "(this torch build or host has no usable GPU); use device CPU")
        if self.device_num > torch.cuda.device_count():
            raise ValueError(f"device_num {self.device_num} GPUs requested but only "
                             f"{torch.cuda.device_count()} are available")

    @property
    def warmup(self):
        """Warm-up length in iterations (``warmup_iters``, or 5 % of ``max_iters`` capped at 200)."""
        if self.warmup_iters >= 0:
            return min(self.warmup_iters, self.max_iters)
        return min(200, max(1, self.max_iters // 20))

    def to_dict(self):
        """A JSON-able dict (expansions as a list) that :meth:`from_dict` reads back."""
        data = asdict(self)
        data["expansions"] = list(self.expansions)
        return data

    @classmethod
    def from_dict(cls, data):
        """Params from :meth:`to_dict` output; unknown keys are refused (a typo should not be ignored)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_param_class(cls, param, **overrides):
        """Params from the platform's ParamClass fields (a dict or an object with those attributes).

        Maps ``net_model``, ``model_scope``, ``dataset_expansion_lst``, ``inital_learning_rate`` (sic),
        ``max_num_iters``, ``batch_size``, ``snap_shot_ivterval`` (sic), ``device`` and ``device_num``.
        Expansion entries may be names or objects/dicts with a ``name``; ``overrides`` win over ``param``.
        """
        def get(name, default=None):
            if isinstance(param, dict):
                return param.get(name, default)
            return getattr(param, name, default)

        mapped = {
            "net_model": get("net_model"), "model_scope": get("model_scope"),
            "expansions": [_expansion_name(e) for e in (get("dataset_expansion_lst") or [])],
            "lr": get("inital_learning_rate"), "max_iters": get("max_num_iters"),
            "batch_size": get("batch_size"), "snapshot_interval": get("snap_shot_ivterval"),
            "device": get("device"), "device_num": get("device_num"),
        }
        mapped = {key: value for key, value in mapped.items() if value is not None}
        mapped.update(overrides)
        return cls(**mapped)


def _expansion_name(entry):
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("name")
    return getattr(entry, "name", entry)
