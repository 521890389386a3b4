"""Build the native front end: `python -m serving.frontend.build [--install-deps] [--force]`.

Compiles frontend.cc into the extension module `serving/frontend/_frontend<EXT_SUFFIX>` beside it, with g++
against gRPC's C++ library found by pkg-config (Debian: `libgrpc++-dev`, with `g++` and `pkg-config`).
`--install-deps` installs those Debian packages first when they are missing (root and apt-get needed). Nothing
is done when the module is newer than its source (`--force` rebuilds). Exit status 1, with the reason, when the
build cannot be done; `make install` and the CPU Dockerfile run it.
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "frontend.cc"
DEBIAN_PACKAGES = ("g++", "pkg-config", "libgrpc++-dev")


def module_path():
    """Where the built extension goes: beside its source, named as this Python imports extensions."""
    return HERE / ("_frontend" + sysconfig.get_config_var("EXT_SUFFIX"))


def _missing_tools():
    missing = [tool for tool in ("g++", "pkg-config") if shutil.which(tool) is None]
    if not missing and subprocess.run(["pkg-config", "--exists", "grpc++"]).returncode != 0:
        missing.append("grpc++ (pkg-config)")
    return missing


def install_deps():
    """apt-get install the Debian packages the build needs (updating the package lists when the first try fails)."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit("serving.frontend.build: install g++, pkg-config and gRPC's C++ library (Debian: "
                         f"apt-get install {' '.join(DEBIAN_PACKAGES)}); --install-deps needs root and apt-get")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *DEBIAN_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(command, env=env, stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
        subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=True)


def compile_module(target):
    """Compile SOURCE into `target` (through a temporary file: a failed build leaves the old module)."""
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "grpc++"], capture_output=True, text=True,
                           check=True).stdout.split()
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(dir=HERE) as folder:
        built = Path(folder) / target.name
        command = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", f"-I{include}",
                   str(SOURCE), *flags, "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"serving.frontend.build: g++ failed:\n{result.stderr[-4000:]}")
        os.replace(built, target)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install-deps", action="store_true", help="apt-get install what the build needs")
    parser.add_argument("--force", action="store_true", help="rebuild even when the module is up to date")
    args = parser.parse_args(argv)
    target = module_path()
    if not args.force and target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return 0
    missing = _missing_tools()
    if missing and args.install_deps:
        install_deps()
        missing = _missing_tools()
    if missing:
        raise SystemExit(f"serving.frontend.build: missing {', '.join(missing)}: apt-get install "
                         f"{' '.join(DEBIAN_PACKAGES)} (or run with --install-deps as root)")
    compile_module(target)
    print(f"built {target.relative_to(HERE.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
