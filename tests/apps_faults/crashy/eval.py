"""A test app whose native code fails on request: params {"crash": "segv"} dereferences NULL through ctypes (a
segmentation fault in native code), {"crash": "abort"} calls abort(3); {"leak_mb": n} keeps n MiB it never frees
(a leak). Anything else answers {"pid": <process id>}."""
import ctypes
import os

from evals.utils import create_net_handler, net_inference_handler

_LEAKED = []


@create_net_handler
def create_net(configs):
    return {}, 0, ""


def _crash(kind):
    if kind == "segv":
        ctypes.string_at(0)  # reads address 0: SIGSEGV in native code
    elif kind == "abort":
        os.abort()


@net_inference_handler
def net_inference(model, requests):
    for request in requests:
        params = request["params"]
        _crash(params.get("crash"))
        if params.get("leak_mb"):
            block = bytearray(int(params["leak_mb"]) * 2**20)
            block[::4096] = b"\x01" * len(block[::4096])  # touch every page: resident, not just reserved
            _LEAKED.append(block)
    return [{"code": 0, "message": "", "result": {"pid": os.getpid()}} for _ in requests], 0, ""
