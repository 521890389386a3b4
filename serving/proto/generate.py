"""Regenerate the protobuf modules of `serving.proto` from `protos/*.proto`.

Usage: python -m serving.proto.generate [OUT_DIR]   (default: this package's folder)

protoc writes `import x_pb2` at top level; the imports are rewritten to relative ones so that the generated
modules live inside the `serving.proto` package instead of on sys.path.
"""
import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTOS_DIR = PACKAGE_DIR.parent.parent / "protos"

_TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def proto_files(protos_dir=PROTOS_DIR):
    return sorted(Path(protos_dir).glob("*.proto"))


def generate(out_dir=PACKAGE_DIR, protos_dir=PROTOS_DIR):
    """Run protoc on every .proto of `protos_dir`, writing *_pb2.py and *_pb2_grpc.py into `out_dir`."""
    from grpc_tools import protoc
    import grpc_tools

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = [str(p) for p in proto_files(protos_dir)]
    args = ["protoc", f"-I{protos_dir}", f"-I{include}", f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}", *files]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(files))
    for path in out_dir.glob("*_pb2*.py"):
        text = path.read_text()
        fixed = _TOP_LEVEL_IMPORT.sub(r"from . import \1 as \2", text)
        if fixed != text:
            path.write_text(fixed)
    return sorted(out_dir.glob("*_pb2*.py"))


if __name__ == "__main__":
    for written in generate(sys.argv[1] if len(sys.argv) > 1 else PACKAGE_DIR):
        print(written)
