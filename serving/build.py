"""`serving build`: a Docker build context for one eval app (the step seed 003 calls build_pre).

    serving build evals/shapes --out out/build-shapes [--device cpu|gpu] [--force]
    docker build -t serving-shapes out/build-shapes

The context holds everything the image needs and nothing that lives elsewhere:

    Dockerfile            dockerfiles/Dockerfile.<device> of this checkout
    .dockerignore
    build-info.json       app, device and every file of the context with its size and sha256
    setup.cfg, pyproject.toml, README.md, protos/, serving/    the runtime, installed with pip in the image
    evals/__init__.py, evals/utils/                          the eval API (not the other example apps)
    evals/<app>/                                             the app folder
    evals/<app>/_external/<key>/<name>/...                   model_files / custom_files of app.json that
                                                             lie outside the app folder; the context's
                                                             app.json is rewritten to point at them

In the image the context lands in /workspace/serving (the seed's runtime root) and `serving serve` serves
/workspace/serving/evals.
"""
import hashlib
import json
import shutil
from pathlib import Path

from serving.apps import _APP_NAME, _RESERVED
from serving.config import load_app_config
from serving.errors import BAD_REQUEST, ServingError

# The source checkout this module belongs to: the runtime copied into every context.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("cpu", "gpu")
EXTERNAL_DIR = "_external"
BUILD_INFO = "build-info.json"
# Runtime files and folders copied from the checkout, as (path in the checkout, required).
_RUNTIME_FILES = (("setup.cfg", True), ("pyproject.toml", True), ("README.md", False))
_RUNTIME_TREES = ("serving", "protos", "evals/utils")
# Never part of a context: byte code, caches and packaging leftovers of a developer's checkout.
_IGNORED = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".pytest_cache", ".DS_Store")
_DOCKERIGNORE = "".join(f"**/{pattern}\n" for pattern in _IGNORED) + ".git\n"
# setup.cfg reads its long_description from README.md, so pip needs the file even when the checkout has none.
_README_STUB = "# serving\n\nInference-serving runtime for eval.py apps.\n"
_FILE_KEYS = ("model_files", "custom_files")
_HASH_CHUNK = 1 << 20


class BuildError(ServingError):
    """The app or the output folder cannot make a build context; the message says which and why."""

    def __init__(self, message):
        super().__init__(BAD_REQUEST, message)


def build_context(app_dir, out_dir, *, device="cpu", app_name=None, force=False):
    """Write the Docker build context of the app in `app_dir` into `out_dir` and return out_dir (resolved).

    `app_name` names the app in the image (default: the folder name). A non-empty `out_dir` is refused unless
    `force`, which empties it first. Raises BuildError (or the ConfigError of a bad app.json) naming the problem.
    """
    if device not in DEVICES:
        raise BuildError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    # The runtime is copied from its source checkout; an installed wheel alone cannot make a context.
    if not (SOURCE_ROOT / "setup.cfg").is_file():
        raise BuildError(f"serving build needs the runtime's source checkout; {SOURCE_ROOT} has no setup.cfg")
    app_dir = Path(app_dir).resolve()
    app_name = app_name or app_dir.name
    _check_app(app_dir, app_name)
    dockerfile = SOURCE_ROOT / "dockerfiles" / f"Dockerfile.{device}"
    if not dockerfile.is_file():
        raise BuildError(f"no Dockerfile for device {device}: {dockerfile} not found")
    out_dir = _prepare_out_dir(Path(out_dir).resolve(), app_dir, force)

    _copy_runtime(out_dir)
    app_out = out_dir / "evals" / app_name
    shutil.copytree(app_dir, app_out, ignore=shutil.ignore_patterns(*_IGNORED))
    _internalize_external_files(app_dir, app_out)
    shutil.copyfile(dockerfile, out_dir / "Dockerfile")
    (out_dir / ".dockerignore").write_text(_DOCKERIGNORE, encoding="utf-8")
    _write_build_info(out_dir, app_name, device)
    return out_dir


def docker_build_command(out_dir, app_name, device="cpu"):
    """The `docker build` command line that builds the image of a context made by build_context."""
    suffix = "" if device == "cpu" else f"-{device}"
    return f"docker build -t serving-{app_name.lower()}{suffix} {out_dir}"


def _check_app(app_dir, app_name):
    """Refuse what the server would refuse: no eval.py, a bad app name, a bad app.json (ConfigError)."""
    if not app_dir.is_dir():
        raise BuildError(f"app folder not found: {app_dir}")
    if not (app_dir / "eval.py").is_file():
        raise BuildError(f"{app_dir} is not an app folder: it holds no eval.py")
    # The app must be discoverable under evals/ in the image: a valid folder name that discover() does not skip.
    if app_name in _RESERVED or not _APP_NAME.match(app_name):
        raise BuildError(f"{app_name!r} cannot name an app folder under evals/ (reserved or invalid name)")
    load_app_config(app_dir)


def _is_within(path, folder):
    return path == folder or folder in path.parents


def _prepare_out_dir(out_dir, app_dir, force):
    """An empty out_dir, refusing one whose emptying or filling would touch the sources."""
    sources = [SOURCE_ROOT, app_dir]
    if any(_is_within(source, out_dir) for source in sources):
        raise BuildError(f"--out {out_dir} holds the sources it would be built from; choose another folder")
    copied = [app_dir, *(SOURCE_ROOT / tree for tree in _RUNTIME_TREES)]
    if any(_is_within(out_dir, source) for source in copied):
        raise BuildError(f"--out {out_dir} lies inside a folder copied into the context; choose another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise BuildError(f"--out {out_dir} is not empty; pass --force to replace its contents")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _copy_runtime(out_dir):
    """The runtime source: what `pip install .` in the image needs, and the eval API."""
    for name, required in _RUNTIME_FILES:
        source = SOURCE_ROOT / name
        if source.is_file():
            shutil.copyfile(source, out_dir / name)
        elif required:
            raise BuildError(f"runtime file missing from the checkout: {source}")
        else:
            (out_dir / name).write_text(_README_STUB, encoding="utf-8")
    for tree in _RUNTIME_TREES:
        shutil.copytree(SOURCE_ROOT / tree, out_dir / tree, ignore=shutil.ignore_patterns(*_IGNORED))
    shutil.copyfile(SOURCE_ROOT / "evals" / "__init__.py", out_dir / "evals" / "__init__.py")


def _internalize_external_files(app_dir, app_out):
    """Copy the app.json files that lie outside the app folder into `_external/` and rewrite app.json to them.

    Paths inside the app folder already travel with it and are left as written."""
    config_path = app_dir / "app.json"
    if not config_path.is_file():
        return
    raw = json.loads(config_path.read_text(encoding="utf-8"))  # load_app_config validated it already
    changed = False
    for key in _FILE_KEYS:
        for name, path in (raw.get(key) or {}).items():
            full = (app_dir / path).resolve()  # an absolute `path` replaces app_dir
            if _is_within(full, app_dir):
                continue
            relative = Path(EXTERNAL_DIR) / key / name / full.name
            target = app_out / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if full.is_dir():
                shutil.copytree(full, target, ignore=shutil.ignore_patterns(*_IGNORED))
            else:
                shutil.copyfile(full, target)
            raw[key][name] = relative.as_posix()
            changed = True
    if changed:
        (app_out / "app.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_build_info(out_dir, app_name, device):
    files = [{"path": path.relative_to(out_dir).as_posix(), "size": path.stat().st_size, "sha256": sha256_of(path)}
             for path in sorted(out_dir.rglob("*")) if path.is_file()]
    info = {"app": app_name, "device": device, "files": files}
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
