"""Serving what was trained: a training snapshot (a store document of kind "model") becomes an app folder.

The app that trained the snapshot (its store meta's "app") decides what the folder holds, through a hook
beside train(job) in its eval.py:

    def export(model_bytes, meta, out_dir): ...   write a complete app folder (eval.py, app.json, model files)

The built-in trainer (evals/mvp_detector) writes an ONNX model plus its own pre- and post-processing
(serving.training.export). The hook runs in a process of its own (`python -m serving.jobs.export ...`), like
training, so torch and the ONNX exporter never load into the serving process.

Where exported apps go: `DATA/apps/<name>/`, a folder the server serves beside the evals dir (and again after a
restart); `serving export --model-id ID --out DIR` writes one anywhere instead (e.g. into evals/ to build an
image with it). The default name is `<net_model or app>_<task_id>_<iteration>`, e.g. `res18_7_1000`.
Exporting again under the same name replaces the folder and reloads the app without dropping calls in flight.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from serving.jobs.codes import BAD_PARAMS, CONFLICT, INTERNAL, NO_TRAINER, JobError

log = logging.getLogger("serving.jobs")

EXPORTED_APPS_DIR = "apps"
EXPORT_TIMEOUT_S = 300.0
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_OUTPUT_TAIL_CHARS = 2000


def exported_apps_dir(data_dir):
    """The folder of exported apps of a data folder (DATA/apps)."""
    return Path(data_dir) / EXPORTED_APPS_DIR


#: In an exported app's folder: who exported it ({"owner": user name}), so that only that user (or an admin)
#: exports over it. A dot file: the app loader and the build context look at eval.py and app.json, not at it.
EXPORTER_FILE = ".exported_by.json"


def read_exporter(app_folder):
    """The user name that exported the app in `app_folder`: None when there is no such folder, "" (the anonymous
    user) when it has no record of it or the record is unreadable."""
    folder = Path(app_folder)
    if not folder.is_dir():
        return None
    try:
        owner = json.loads((folder / EXPORTER_FILE).read_text(encoding="utf-8")).get("owner", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return owner if isinstance(owner, str) else ""


def write_exporter(app_folder, owner):
    (Path(app_folder) / EXPORTER_FILE).write_text(json.dumps({"owner": owner}), encoding="utf-8")


def default_app_name(meta):
    """`<net_model or app>_<task_id>_<iteration>` of a snapshot's store meta."""
    stem = meta.get("net_model") or meta.get("app") or "model"
    return f"{stem}_{meta.get('task_id', 0)}_{meta.get('iter', 0)}"


def check_app_name(name):
    if not isinstance(name, str) or not _APP_NAME.fullmatch(name):
        raise JobError(BAD_PARAMS, f"app name {name!r}: 1 to 64 letters, digits, '_', '.', '-', starting with a "
                                   "letter or digit")
    return name


async def export_in_subprocess(data_dir, evals_dir, model_id, out_dir, app_name=None):
    """Run the exporting app's export hook for `model_id` in a child process, writing `out_dir`.
    JobError with the child's reason when it fails.

    A coroutine, so that the export ends with its caller: when the call is cancelled (the server stopping after
    its grace, the client gone) the child is killed and waited for. Run from a thread (subprocess.run), it
    could not be: the stopping server waited for it (up to EXPORT_TIMEOUT_S), past its grace and its
    supervisor's patience, and a killed server left it running, writing into DATA/apps."""
    args = [sys.executable, "-m", "serving.jobs.export", "--data-dir", str(Path(data_dir).resolve()),
            "--evals", str(Path(evals_dir).resolve()), "--model-id", model_id, "--out", str(out_dir)]
    if app_name:
        args += ["--app-name", app_name]
    from serving.jobs.worker import child_environment

    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=child_environment())
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), EXPORT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise JobError(INTERNAL, f"exporting model {model_id} took longer than {EXPORT_TIMEOUT_S:.0f} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            # Shielded: a second cancellation must not leave the child unreaped (or running).
            await asyncio.shield(proc.wait())
    stderr = stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        # The child prints "CODE: message" on its last line for a refused export; anything else is a failure.
        last = (stderr.strip().splitlines() or [""])[-1]
        code, sep, message = last.partition(": ")
        if sep and code.isdigit():
            raise JobError(int(code), message)
        # The child's traceback names files of this server: it goes to the server's log, and the caller gets the
        # exception's own line only (any token user can upload a "model" document that makes an export fail).
        tail = stderr[-_OUTPUT_TAIL_CHARS:].strip()
        log.warning("exporting model %s failed:\n%s", model_id, tail)
        raise JobError(INTERNAL, f"exporting model {model_id} failed: {last or 'no message'} (the server log has "
                                 "the details)")


def replace_folder(new, target):
    """Move folder `new` to `target`, replacing what is there (the old folder is removed after the swap)."""
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def model_record(store, model_id):
    """The store Record of snapshot `model_id` as `store` (a user's view, or the whole store) sees it. JobError
    400 for a malformed id or a document that is not a model, 404 for an unknown one."""
    from serving.store import StoreError

    try:
        return store.get(model_id, kind="model")
    except StoreError as exc:
        raise JobError(exc.code, exc.message) from None


def export_model_folder(data_dir, evals_dir, model_id, out_dir, classic_name=None):
    """Check snapshot `model_id`, import the app that made it and call its export hook into `out_dir` (which
    must not exist or be empty), in this process. JobError for a refusal."""
    from serving.jobs.worker import import_app
    from serving.store import Store

    with Store(data_dir) as store:
        record = model_record(store, model_id)
        app = record.meta.get("app") or ""
        _, module = import_app(evals_dir, app, classic_name)
        hook = getattr(module, "export", None)
        if not callable(hook):
            raise JobError(NO_TRAINER, f"app {app!r}, which made model {record.id}, defines no export()")
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise JobError(CONFLICT, f"{out} is not empty")
        out.mkdir(parents=True, exist_ok=True)
        hook(store.read_blob(record.id), dict(record.meta), out)
        if not (out / "eval.py").is_file():
            raise JobError(INTERNAL, f"app {app}'s export() wrote no eval.py into its app folder")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m serving.jobs.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--evals", required=True)
    parser.add_argument("--app-name", default=None, help="the app name of a classic evals/eval.py layout")
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        export_model_folder(args.data_dir, args.evals, args.model_id, args.out, args.app_name)
    except JobError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
