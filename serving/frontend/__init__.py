"""The native front end: gRPC on C++ threads in front of a worker's grpc.aio server (`serve --frontend`).

grpc.aio costs about 0.3 ms of the event loop's CPU per call before a servicer runs, more than the runtime's
whole request path; a worker behind it tops out near 3,000 calls/s on a small model. With the native front end
(`frontend.cc`, a CPython extension over gRPC's C++ library) the public port is served by C++ threads that
never hold the GIL:

- the fast methods (:data:`FAST_METHODS`: KServe ModelInfer and the native Infer, the calls that carry
  inferences) reach the event loop as (id, request bytes, metadata, deadline) tuples, many per wake-up, and run
  the very handlers the grpc.aio server registered, behind the same interceptors (token authentication), with a
  :class:`FastContext` standing in for grpc.aio's context;
- every other method (streams, health, reflection, the store, tasks, the repository API) is relayed message by
  message to the worker's grpc.aio server, which listens on a Unix socket in a private folder; its answers,
  statuses and metadata come back unchanged.

So the protocol logic exists once, in the servicers; the front end only moves bytes. TLS ends in the front end
(the grpc.aio server behind it is reachable only through that folder, mode 0700); the concurrency limit
(`--max-concurrent-rpcs`) is counted there, over every call; message-size limits are applied there first.

Modes (`serving serve --frontend`, environment SERVING_FRONTEND): ``native`` needs the extension and fails to
start without it; ``python`` serves the port from grpc.aio alone; ``auto`` (the default) is native when the
extension is built (`make install` builds it: Debian's libgrpc++-dev and g++) and python otherwise.
"""
import asyncio
import collections
import importlib
import logging
import os
import shutil
import socket
import tempfile
import time

import grpc

from serving.errors import BAD_REQUEST, ServingError

log = logging.getLogger("serving.frontend")

#: The unary methods whose calls the front end hands to the event loop directly.
FAST_METHODS = ("/inference.GRPCInferenceService/ModelInfer", "/serving.v1.Inference/Infer")

MODES = ("auto", "native", "python")

#: The most metadata a call may carry through the native front end (handed to frontend.cc): grpc.aio's hard limit,
#: below which grpc.aio itself refuses calls only now and then (over its "soft" limit of 8 KiB).
MAX_METADATA_BYTES = 16 * 1024

_REQUEST, _CANCEL = 0, 1
# The grpc.aio server's socket: SOCKET_NAME in a folder FOLDER_PREFIX* of its own (see socket_folder).
_FOLDER_PREFIX = "serving-grpc-"
_SOCKET_NAME = "grpc.sock"
# The longest path a Unix socket address holds (sockaddr_un.sun_path: 108 bytes with the terminating NUL).
_MAX_SOCKET_PATH = 107
# A folder of a dead worker is removed once it is this old (seconds).
_DEAD_FOLDER_AGE_S = 60
_OK = grpc.StatusCode.OK.value[0]
_UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
_UNKNOWN = grpc.StatusCode.UNKNOWN


def load_extension():
    """The `_frontend` extension module, or None when it is not built (or does not load: its reason is logged)."""
    try:
        return importlib.import_module("serving.frontend._frontend")
    except ImportError as exc:
        log.debug("native front end unavailable: %s", exc)
        return None


def resolve_mode(mode):
    """"native" or "python" for a requested mode; ServingError (400) for "native" without the extension, or an
    unknown mode."""
    if mode not in MODES:
        raise ServingError(BAD_REQUEST, f"unknown front end {mode!r}: use one of {', '.join(MODES)}")
    if mode == "python":
        return mode
    if load_extension() is None:
        if mode == "native":
            raise ServingError(BAD_REQUEST, "the native front end is not built (serving/frontend/_frontend*.so): "
                                            "run `make install`, or serve with --frontend python")
        return "python"
    return "native"


def socket_folder():
    """A new folder, mode 0700, for the grpc.aio server's Unix socket. The first of TMPDIR, /tmp, /var/tmp and
    /dev/shm (a tmpfs, writable where the root file system is read-only) that takes a folder and where the socket's
    path fits a socket address; never the working directory, where tempfile would fall back. Folders that workers
    which died without stopping left in that place (a socket that refuses connections: nothing listens) are
    removed first. ServingError (400) saying what was tried when no place will do."""
    tried = []
    for parent in dict.fromkeys(p for p in (os.environ.get("TMPDIR"), "/tmp", "/var/tmp", "/dev/shm") if p):
        _remove_dead_folders(parent)
        try:
            folder = tempfile.mkdtemp(prefix=_FOLDER_PREFIX, dir=parent)
        except OSError as exc:  # missing, read-only, not ours
            tried.append(f"{parent}: {exc.strerror or exc}")
            continue
        if len(os.fsencode(os.path.join(folder, _SOCKET_NAME))) <= _MAX_SOCKET_PATH:
            return folder
        os.rmdir(folder)
        tried.append(f"{parent}: the path is too long for a Unix socket")
    raise ServingError(BAD_REQUEST, "the native front end needs a writable folder for its private Unix socket ("
                                    + "; ".join(tried) + "): set TMPDIR to a short writable path, or serve with "
                                    "--frontend python")


def _remove_dead_folders(parent):
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    uid = os.getuid()
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        # A minute old at least: a server that has just made its folder may not listen yet.
        if (not entry.name.startswith(_FOLDER_PREFIX) or info.st_uid != uid
                or time.time() - info.st_mtime < _DEAD_FOLDER_AGE_S):
            continue
        path = os.path.join(entry.path, _SOCKET_NAME)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            # A socket file nobody listens on, or none a minute after the folder was made: its process is gone.
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass  # one that is busy (its backlog full): not ours to judge
        finally:
            probe.close()


class _HandlerCallDetails(collections.namedtuple("_HandlerCallDetails", ("method", "invocation_metadata")),
                          grpc.HandlerCallDetails):
    """What grpc.aio hands interceptors and generic handlers to find a method's handler."""


class FastContext:
    """The part of grpc.aio's ServicerContext that the fast methods' handlers use: metadata, the time left,
    trailing metadata and abort (which raises grpc.aio.AbortError, as grpc.aio's does)."""

    __slots__ = ("_metadata", "_deadline", "_loop", "trailing", "code", "details")

    def __init__(self, metadata, deadline, loop):
        self._metadata = metadata
        self._deadline = deadline
        self._loop = loop
        self.trailing = None
        self.code = None
        self.details = ""

    def invocation_metadata(self):
        return self._metadata

    def time_remaining(self):
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._loop.time())

    def set_trailing_metadata(self, trailing_metadata):
        self.trailing = tuple(trailing_metadata)

    async def abort(self, code, details="", trailing_metadata=()):
        if code == grpc.StatusCode.OK:  # grpc.aio refuses it too
            raise ValueError("abort with StatusCode.OK")
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        self.code = code
        self.details = details
        raise grpc.aio.AbortError()


class NativeFrontend:
    """The C++ front end of one worker: serves `address`, runs fast calls through `generic_handlers` (the
    grpc.GenericRpcHandlers registered on the worker's grpc.aio server) behind `interceptors` (its
    grpc.aio.ServerInterceptors), exactly as grpc.aio resolves a call, and relays every other call to
    `backend_address`, where the grpc.aio server must listen (a Unix socket in a folder of this object's, mode
    0700, removed by `stop`). `tls`: a serving.tls.ServerTls, or None for plaintext.
    """

    def __init__(self, address, generic_handlers, interceptors=(), *, max_message_bytes, max_concurrent_rpcs=None,
                 share_port=False, tls=None):
        self.address = address
        extension = load_extension()
        if extension is None:
            raise ServingError(BAD_REQUEST, "the native front end is not built")
        self._generic_handlers = generic_handlers
        self._interceptors = tuple(interceptors)
        self._handlers = {}  # method -> handler, when there are no interceptors (they may differ per call)
        self._folder = socket_folder()
        self.backend_address = "unix:" + os.path.join(self._folder, _SOCKET_NAME)
        tls_pems = None if tls is None else (tls.cert_pem, tls.key_pem, tls.client_ca_pem)
        self._frontend = extension.Frontend(address, self.backend_address, FAST_METHODS, int(max_message_bytes),
                                            int(max_concurrent_rpcs or 0), bool(share_port), tls_pems,
                                            MAX_METADATA_BYTES)
        self._calls = {}  # call id -> the task serving it
        self._loop = None
        self._stopped = False

    def start(self):
        """Bind and serve; returns the port. ServingError (400) when the address cannot be bound."""
        try:
            port = self._frontend.start()
        except RuntimeError:
            self._remove_folder()
            raise ServingError(BAD_REQUEST, f"cannot listen on {self.address}: port in use or address not "
                                            "available") from None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._frontend.fileno(), self._on_events)
        return port

    async def stop(self, grace):
        """Stop accepting calls, let those in flight finish within `grace` seconds, then cancel the rest. The
        event loop keeps answering fast calls meanwhile (the C++ shutdown waits in a thread)."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop is not None:
            await asyncio.to_thread(self._frontend.shutdown, max(0.0, float(grace)))
            self._loop.remove_reader(self._frontend.fileno())
            for task in list(self._calls.values()):
                task.cancel()
        self._remove_folder()

    def _remove_folder(self):
        shutil.rmtree(self._folder, ignore_errors=True)

    # ---- fast calls ----------------------------------------------------------------------------------------

    def _on_events(self):
        loop = self._loop
        calls = self._calls
        events = self._frontend.take()
        # Cancellations first: the places in the queue they give back are there for the calls that came with them.
        cancelled = set()
        for kind, call_id, *_ in events:
            if kind == _CANCEL:
                task = calls.pop(call_id, None)
                if task is not None:
                    task.cancel()
                else:
                    cancelled.add(call_id)  # a call of this same batch: it never starts
        for kind, call_id, method, payload, metadata, deadline in events:
            if kind == _CANCEL or call_id in cancelled:
                continue
            # The deadline is on the steady clock, the event loop's (time.monotonic()), as of the call's arrival.
            task = loop.create_task(self._serve(call_id, FAST_METHODS[method], payload, metadata, deadline))
            calls[call_id] = task

    async def _handler(self, method, metadata):
        if not self._interceptors:
            handler = self._handlers.get(method)
            if handler is None:
                handler = self._handlers[method] = self._lookup(_HandlerCallDetails(method, metadata))
            return handler
        return await self._intercepted(0, _HandlerCallDetails(method, metadata))

    async def _intercepted(self, index, details):
        if index == len(self._interceptors):
            return self._lookup(details)

        async def continuation(next_details):
            return await self._intercepted(index + 1, next_details)

        return await self._interceptors[index].intercept_service(continuation, details)

    def _lookup(self, details):
        for generic in self._generic_handlers:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None

    async def _serve(self, call_id, method, payload, metadata, deadline):
        context = FastContext(metadata, deadline, self._loop)
        try:
            answer = await self._answer(method, payload, metadata, context)
        except asyncio.CancelledError:
            return  # the caller cancelled (or its deadline passed): the front end has ended the call already
        finally:
            self._calls.pop(call_id, None)
        try:
            self._frontend.respond(call_id, *answer)
        except Exception:  # noqa: BLE001 -- an answer the extension refuses (a trailing value of another type)
            log.exception("cannot send the answer of %s", method)
            self._frontend.respond(call_id, _UNKNOWN.value[0], "Unexpected error: the answer could not be sent",
                                   None, b"")

    async def _answer(self, method, payload, metadata, context):
        """(status, details, trailing metadata, response bytes) of one fast call, as grpc.aio would answer it."""
        try:
            handler = await self._handler(method, metadata)
            if handler is None or handler.unary_unary is None:
                return _UNIMPLEMENTED.value[0], "Method not found!", None, b""
            request = payload if handler.request_deserializer is None else handler.request_deserializer(payload)
            response = await handler.unary_unary(request, context)
            serializer = handler.response_serializer
            return _OK, "", context.trailing, response if serializer is None else serializer(response)
        except grpc.aio.AbortError:
            code = context.code if context.code is not None else _UNKNOWN
            return code.value[0], context.details or "", context.trailing, b""
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: as grpc.aio answers it, never a traceback on the wire
            log.exception("unexpected error in %s", method)
            return _UNKNOWN.value[0], f"Unexpected {type(exc)}: {exc}"[:1000], context.trailing, b""
