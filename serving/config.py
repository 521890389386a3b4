"""App settings: `evals/<app>/app.json`, validated at load, merged with defaults.

Two groups of keys live in one file:

- what `create_net(configs)` receives (the eval contract): `batch_size`, `use_device`, `model_files`,
  `custom_files`, `model_params`, `custom_params`;
- the runtime's knobs for the app: `batch_window_ms`, `queue_size`, `preprocess_workers`,
  `request_timeout_s`, `inference_timeout_s`.

Unknown keys and bad values are refused with a message naming the key. File paths are resolved relative to the
app folder (absolute paths are kept) and must exist.
"""
import dataclasses
import json
import math
from pathlib import Path

from serving.errors import BAD_REQUEST, ServingError

DEVICES = ("CPU", "GPU")


class ConfigError(ServingError):
    """A bad app.json: the message names the file, the key and what is wrong with it."""

    def __init__(self, message):
        super().__init__(BAD_REQUEST, message)


@dataclasses.dataclass(frozen=True)
class AppConfig:
    """The effective settings of one app (app.json merged with these defaults)."""

    # What create_net receives.
    batch_size: int = 1
    use_device: str = "CPU"
    model_files: dict = dataclasses.field(default_factory=dict)
    custom_files: dict = dataclasses.field(default_factory=dict)
    model_params: dict = dataclasses.field(default_factory=dict)
    custom_params: dict = dataclasses.field(default_factory=dict)
    # How long a batch waits for more requests after its first one, while more are on their way.
    batch_window_ms: float = 2.0
    # Images admitted (preprocessing or waiting) before new requests are refused with 429.
    queue_size: int = 256
    # Threads running net_preprocess; 0 runs it inline on the event loop (for cheap preprocessing: no thread hop).
    preprocess_workers: int = 2
    # A request's deadline when the caller gives none (or a later one).
    request_timeout_s: float = 30.0
    # A net_inference call running longer than this marks the app STUCK (health NOT_SERVING).
    inference_timeout_s: float = 60.0

    def create_net_configs(self, app, workspace):
        """The `configs` dict handed to the eval's create_net."""
        return {
            "app": app,
            "workspace": str(workspace),
            "batch_size": self.batch_size,
            "use_device": self.use_device,
            "model_files": dict(self.model_files),
            "model_params": json.loads(json.dumps(self.model_params)),
            "custom_files": dict(self.custom_files),
            "custom_params": json.loads(json.dumps(self.custom_params)),
        }

    def to_dict(self):
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(AppConfig)}


# The most each integer knob may be: far past any real app, and inside what the runtime and the wire carry
# (KServe's max_batch_size is an int32; a call carries at most serving.codec.MAX_INSTANCES_PER_CALL images).
_MAXIMUM = {"batch_size": 65536, "queue_size": 2**20, "preprocess_workers": 256}


def _positive_int(where, key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    if value > _MAXIMUM[key]:
        shown = f"{value}" if value < 10**20 else f"an integer of {len(str(value))} digits"
        raise ConfigError(f"{where}: {key} must be at most {_MAXIMUM[key]}, got {shown}")
    return value


def _number(where, key, value, *, allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        # JSON integers have no size limit: 10**400 is valid JSON, but no float (isfinite converts). Not repeated
        # in full: it may be thousands of digits.
        raise ConfigError(f"{where}: {key} must be a number {bound}, got an integer too large for a float "
                          f"({value.bit_length()} bits)") from None
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: {key} must be a number {bound}, got {value!r}")
    return float(value)


def _files(where, key, value, app_dir):
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be an object of name: path, got {type(value).__name__}")
    resolved = {}
    for name, path in value.items():
        if not isinstance(path, str) or not path:
            raise ConfigError(f"{where}: {key}.{name} must be a path string, got {path!r}")
        full = Path(path) if Path(path).is_absolute() else Path(app_dir) / path
        if not full.exists():
            raise ConfigError(f"{where}: {key}.{name}: file not found: {full}")
        resolved[name] = str(full.resolve())
    return resolved


def _object(where, key, value):
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a JSON object, got {type(value).__name__}")
    return value


def validate(raw, app_dir, where="app.json"):
    """Validate a parsed app.json object and return the effective AppConfig; ConfigError names what is wrong."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must hold a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_FIELDS)}")
    values = {}
    for key, value in raw.items():
        if key == "batch_size":
            values[key] = _positive_int(where, key, value, 1)
        elif key == "queue_size":
            values[key] = _positive_int(where, key, value, 1)
        elif key == "preprocess_workers":
            values[key] = _positive_int(where, key, value, 0)
        elif key == "use_device":
            if value not in DEVICES:
                raise ConfigError(f"{where}: use_device must be one of {', '.join(DEVICES)}, got {value!r}")
            values[key] = value
        elif key in ("model_files", "custom_files"):
            values[key] = _files(where, key, value, app_dir)
        elif key in ("model_params", "custom_params"):
            values[key] = _object(where, key, value)
        elif key == "batch_window_ms":
            values[key] = _number(where, key, value, allow_zero=True)
        else:  # request_timeout_s, inference_timeout_s
            values[key] = _number(where, key, value, allow_zero=False)
    config = AppConfig(**values)
    if config.queue_size < config.batch_size:
        raise ConfigError(f"{where}: queue_size ({config.queue_size}) must be >= batch_size ({config.batch_size})")
    return config


def load_app_config(app_dir):
    """Read `app_dir/app.json` (optional) and return the effective AppConfig."""
    path = Path(app_dir) / "app.json"
    try:
        if not path.exists():
            return AppConfig()
        data = path.read_bytes()
    except OSError as exc:
        # A directory named app.json, a file the server may not read, an I/O error: a configuration error naming
        # the file (400 on a reload), not an import failure with a traceback.
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return validate(raw, app_dir, where=str(path))
