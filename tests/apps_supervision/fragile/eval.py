"""A test app for the supervisor: a worker that exits, leaks, or will not give its metrics port up, on request.

Params: {"exit_status": n} ends the whole process at once with that status (os._exit: what native code calling
exit(3) does; nothing in Python can catch it, unlike sys.exit). {"leak_mb": n} keeps n MiB it never frees.
{"ignore_release": true} sets SIGUSR1 (the supervisor's "release your metrics port", serving.workers) to be
ignored by the process, through libc as native code would, so the worker never answers that request.
Every call that returns answers {"pid": <process id>}."""
import ctypes
import os
import signal

from evals.utils import create_net_handler, net_inference_handler

_LEAKED = []


@create_net_handler
def create_net(configs):
    return {}, 0, ""


@net_inference_handler
def net_inference(model, requests):
    for request in requests:
        params = request["params"]
        if params.get("ignore_release"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.signal.restype = ctypes.c_void_p
            libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
            libc.signal(int(signal.SIGUSR1), 1)  # 1 == SIG_IGN: the kernel drops the signal, Python never sees it
        if params.get("leak_mb"):
            block = bytearray(int(params["leak_mb"]) * 2**20)
            block[::4096] = b"\x01" * len(block[::4096])  # touch every page: resident, not just reserved
            _LEAKED.append(block)
        if "exit_status" in params:
            os._exit(int(params["exit_status"]))
    return [{"code": 0, "message": "", "result": {"pid": os.getpid()}} for _ in requests], 0, ""
