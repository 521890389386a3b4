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
    evals/src/                                               a copy of the app's src/, when it has one

In the image the context lands in /workspace/serving (the seed's runtime root) and `serving serve` serves
/workspace/serving/evals.

What the app folder holds is copied as plain files and folders, so the context depends on nothing of the build
host:
- a model_files / custom_files path of app.json that is absolute but lies inside the app folder is rewritten
  relative to it (the host's path does not exist in the image);
- a link to a file is copied as the file it points to; a link to a folder is followed only when the folder lies
  inside the app folder and does not contain the link (a loop); a broken link, a link to a folder outside the app
  folder and anything that is not a file or a folder are refused, naming the link. Everything is checked before
  --out is touched, and a build that fails while writing removes what it wrote.
- a classic-layout app (seed 003's: eval.py with its code under src/, imported as `evals.src.*`, served with
  `--app-name`) loads in the image as it does from its folder: the image serves evals/ as a folder of apps, where
  the app is evals/<app>/, so its src/ is also copied to evals/src/, where `evals.src` resolves (`src` is never an
  app name, so the server does not take it for an app). An app of the folder-per-app layout with a src/ of its
  own (imported as `evals.<app>.src`) is unaffected by the extra copy.
- any other module the app's code imports as `evals.<name>` (`import evals.x`, `from evals.x import y`,
  `from evals import x`), read from the app's .py files, is copied to evals/<name> as well, from where the
  server would have found it: the app folder (a classic app's sibling module, `evals.helpers` for its
  helpers.py), else the folder the app sits in (a package shared by the apps of an evals/ folder, such as
  `evals/common/`). `evals.utils` and the app's own package are the runtime's and the app's already. A name found
  in neither place is left alone (the server reports the failed import as it would without a build), and one
  that holds an eval.py is refused: the image would take it for a second app. Imports spelled as strings
  (`importlib.import_module("evals.x")`) are not seen: put such code under src/.
"""
import ast
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import stat
from pathlib import Path

from serving.apps import _APP_NAME, _RESERVED, module_name_for
from serving.config import load_app_config
from serving.errors import BAD_REQUEST, ServingError

# The source checkout this module belongs to: the runtime copied into every context.
SOURCE_ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("cpu", "gpu")
EXTERNAL_DIR = "_external"
BUILD_INFO = "build-info.json"
# The classic layout's code folder, imported as evals.src (see the module docstring).
CLASSIC_SRC = "src"
# Runtime files and folders copied from the checkout, as (path in the checkout, required).
_RUNTIME_FILES = (("setup.cfg", True), ("pyproject.toml", True), ("README.md", False))
_RUNTIME_TREES = ("serving", "protos", "evals/utils")
# Never part of a context: byte code, caches and packaging leftovers of a developer's checkout.
_IGNORED = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".pytest_cache", ".DS_Store")
# The runtime's own build products: the native front end's extension is built in the image, against the image's
# Python and gRPC libraries (dockerfiles/Dockerfile.cpu), never taken from the build host.
_RUNTIME_BUILT = ("_frontend*.so",)
_DOCKERIGNORE = ("".join(f"**/{pattern}\n" for pattern in _IGNORED) + ".git\n"
                 + "".join(f"serving/frontend/{pattern}\n" for pattern in _RUNTIME_BUILT))
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
    `force`, which empties it first. Raises BuildError (or the ConfigError of a bad app.json) naming the problem;
    then `out_dir` holds nothing of this build.
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
    # Everything the app contributes is planned (and every link checked) before --out is touched: a refused app
    # leaves --out as it was.
    app_files = _tree_files(app_dir, app_dir, "app folder")
    config, external_files = _plan_app_config(app_dir)
    classic_files = []
    if (None, Path(CLASSIC_SRC)) in app_files:  # the app folder has a src/ folder
        classic_files = [(source, relative) for source, relative in app_files if relative.parts[0] == CLASSIC_SRC]
    classic_files += _imported_evals_modules(app_dir, app_name, app_files)
    out_dir = Path(out_dir).resolve()
    existed = out_dir.exists()
    out_dir = _prepare_out_dir(out_dir, app_dir, force)
    try:
        _copy_runtime(out_dir)
        evals_out = out_dir / "evals"
        app_out = evals_out / app_name
        _copy_files(app_files, app_out)
        _copy_files(external_files, app_out)
        _copy_files(classic_files, evals_out)
        if config is not None:
            (app_out / "app.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(dockerfile, out_dir / "Dockerfile")
        (out_dir / ".dockerignore").write_text(_DOCKERIGNORE, encoding="utf-8")
        _write_build_info(out_dir, app_name, device)
    except BaseException as error:
        # No half-written context: one that looks complete could be built into an image missing files.
        _undo_out_dir(out_dir, existed)
        if isinstance(error, OSError):
            what = f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
            raise BuildError(f"writing the build context failed ({what}); nothing of it is left in {out_dir}") \
                from None
        raise
    return out_dir


def docker_build_command(out_dir, app_name, device="cpu"):
    """The `docker build` command line that builds the image of a context made by build_context, quoted for a
    POSIX shell (a path with a space or a quote pastes as one argument)."""
    suffix = "" if device == "cpu" else f"-{device}"
    return shlex.join(["docker", "build", "-t", f"serving-{app_name.lower()}{suffix}", str(out_dir)])


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


def _undo_out_dir(out_dir, existed):
    """Remove what a failed build wrote: the folder itself when the build made it, else its contents."""
    if not existed:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for child in out_dir.iterdir() if out_dir.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


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
        shutil.copytree(SOURCE_ROOT / tree, out_dir / tree,
                        ignore=shutil.ignore_patterns(*_IGNORED, *_RUNTIME_BUILT))
    shutil.copyfile(SOURCE_ROOT / "evals" / "__init__.py", out_dir / "evals" / "__init__.py")


def _ignored(name):
    return any(fnmatch.fnmatch(name, pattern) for pattern in _IGNORED)


def _tree_files(root, top, what, prefix=Path()):
    """[(source, path in the copy)] of everything under folder `root` (`source` None for a folder, so empty ones
    are kept), with links resolved by the rules of the module docstring. `top` is the folder that links to
    folders must stay inside (the app folder, or an external folder of app.json); `what` names it in errors.
    Raises BuildError naming a refused link or entry."""
    top = top.resolve()
    found = []

    def walk(folder, relative, ancestors):
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            raise BuildError(f"cannot read {folder}: {error.strerror}") from None
        for entry in entries:
            if _ignored(entry.name):
                continue
            path, inside = Path(entry.path), relative / entry.name
            shown = _link_shown(path) if entry.is_symlink() else str(path)
            try:
                info = path.stat()  # follows links: what the copy would hold
            except FileNotFoundError:
                raise BuildError(f"{shown} is broken: its target does not exist; remove the link or make it "
                                 f"point at a file") from None
            except OSError as error:
                raise BuildError(f"cannot read {shown}: {error.strerror}") from None
            if stat.S_ISDIR(info.st_mode):
                real = path.resolve()
                if entry.is_symlink():
                    if not _is_within(real, top):
                        raise BuildError(f"{shown} leads to a folder outside the {what} ({top}); a build never "
                                         f"follows folder links out of it: copy the folder in, or name it in "
                                         f"app.json model_files / custom_files")
                    if real in ancestors:
                        raise BuildError(f"{shown} leads to a folder that contains it: a loop")
                found.append((None, prefix / inside))
                walk(real, inside, ancestors | {real})
            elif stat.S_ISREG(info.st_mode):
                found.append((path.resolve(), prefix / inside))
            else:
                raise BuildError(f"{shown} is neither a file nor a folder (a pipe, a socket or a device); a build "
                                 f"copies only those")

    walk(root.resolve(), Path(), frozenset({root.resolve()}))
    return found


def _evals_names_imported(source):
    """The X of every `evals.X` a module's source imports (`import evals.X...`, `from evals.X... import`,
    `from evals import X`); a source that does not parse imports nothing here (the server reports it)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            dotted = [node.module]
            if node.module == "evals":
                names.update(alias.name for alias in node.names if alias.name != "*")
        else:
            continue
        names.update(name.split(".")[1] for name in dotted if name.startswith("evals."))
    return names


def _imported_evals_modules(app_dir, app_name, app_files):
    """[(source, path under the context's evals/)] of the modules and packages the app imports as `evals.X` that
    the image would not find otherwise (see the module docstring): X.py or the folder X, from the app folder,
    else from the folder the app folder sits in."""
    imported = set()
    for source, relative in app_files:
        if source is not None and relative.suffix == ".py":
            imported |= _evals_names_imported(source.read_bytes())
    # The runtime's eval API, the classic eval module and src/ (copied already), and the app's own package under
    # either name (a folder built with --app-name still imports itself by its folder's name).
    own = {"utils", "eval", CLASSIC_SRC, "__init__",
           *(module_name_for(name).split(".", 1)[1] for name in (app_name, app_dir.name))}
    files = []
    for name in sorted(imported - own):
        for folder in (app_dir, app_dir.parent):
            module, package = folder / f"{name}.py", folder / name
            if module.is_file():
                files.append((module.resolve(), Path(module.name)))
                break
            if package.is_dir():
                if (package / "eval.py").is_file():
                    raise BuildError(f"the app imports evals.{name}, but {package} holds an eval.py: in the image "
                                     f"it would be served as a second app; move the shared code out of it")
                files.append((None, Path(name)))
                files.extend(_tree_files(package, package, f"folder of evals.{name}", Path(name)))
                break
    return files


def _link_shown(path):
    try:
        return f"link {path} -> {os.readlink(path)}"
    except OSError:
        return f"link {path}"


def _plan_app_config(app_dir):
    """``(app.json rewritten for the context or None when it needs no change, [(source, path in the app's copy)]
    of the external files)``.

    A path outside the app folder is copied into `_external/` and pointed at there; an absolute path inside it is
    made relative to it (it travels with the folder; the host's path does not exist in the image). Other paths
    are left as written."""
    config_path = app_dir / "app.json"
    if not config_path.is_file():
        return None, []
    raw = json.loads(config_path.read_text(encoding="utf-8"))  # load_app_config validated it already
    changed, files = False, []
    for key in _FILE_KEYS:
        for name, path in (raw.get(key) or {}).items():
            full = (app_dir / path).resolve()  # an absolute `path` replaces app_dir
            if _is_within(full, app_dir):
                if Path(path).is_absolute():
                    raw[key][name] = full.relative_to(app_dir).as_posix() if full != app_dir else "."
                    changed = True
                continue
            relative = Path(EXTERNAL_DIR) / key / name / full.name
            if full.is_dir():
                files.append((None, relative))
                files.extend(_tree_files(full, full, f"folder of {key}.{name}", relative))
            elif full.is_file():
                files.append((full, relative))
            else:
                raise BuildError(f"app.json {key}.{name}: {full} is neither a file nor a folder (a pipe, a socket "
                                 f"or a device); a build copies only those")
            raw[key][name] = relative.as_posix()
            changed = True
    return (raw if changed else None), files


def _copy_files(files, destination):
    """Write the planned `files` ([(source or None for a folder, relative path)]) under `destination`."""
    for source, relative in files:
        target = destination / relative
        if source is None:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


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
