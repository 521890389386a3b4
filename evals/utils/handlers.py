"""The three handler decorators: ``create_net_handler``, ``net_preprocess_handler``, ``net_inference_handler``.

An eval script decorates its functions with them::

    @create_net_handler
    def create_net(configs):
        ...
        return model, 0, ""

    @net_preprocess_handler            # optional
    def net_preprocess(model, request):
        ...
        return request, 0, ""

    @net_inference_handler
    def net_inference(model, requests):
        ...
        return rets, 0, ""             # one ret per request, in order

Every decorated function always returns a 3-tuple ``(value, code, message)``, whatever the script does:

* an :class:`~evals.utils.error.ErrorBase` escaping the function becomes ``(first, e.code, e.message)``;
* any other exception becomes ``(first, 599, str(e) or the exception's class name)``;
* a function that returns something other than a 3-item tuple/list becomes ``(first, 599, "...")``;

where ``first`` is ``None`` for ``create_net`` / ``net_inference`` and the incoming request for
``net_preprocess``. Exceptions are logged with their traceback through ``CTX.logger``. ``KeyboardInterrupt``
and ``SystemExit`` are not caught.

Context: see :mod:`evals.utils.context`. The runtime sets ``CTX.app`` and ``CTX.reqID`` before calling
``net_preprocess`` / ``net_inference``; ``create_net_handler`` sets ``CTX.app = configs["app"]`` and
``CTX.reqID = "net_init"`` itself; every decorator rebinds ``CTX.logger`` to the current ``CTX.reqID``.

``net_inference_handler`` adds the header ``"X-Origin-A": ["<APP>:1"]`` (APP = ``CTX.app`` upper-cased, as
the old host did) to every dict ret, merging into the ret's ``"header"`` dict and never replacing an
``X-Origin-A`` the script set itself. An iterator of rets (Python 3 ``map(...)`` where old code relied on
Python 2's list) is turned into a list.

``net_preprocess_handler`` and ``net_inference_handler`` make each request's ``data`` (each image's, for a
multi-image request) a :class:`~evals.utils.request.RequestData`: ``data["uri"]``, ``data["body"]`` and
``data["attribute"]`` read as None when the caller did not send them, as old scripts that index them expect.
"""

import functools
import logging

from evals.utils.context import CTX, bind_logger, current_app
from evals.utils.error import ErrorBase
from evals.utils.request import with_data_keys

__all__ = ["create_net_handler", "net_preprocess_handler", "net_inference_handler", "origin_header_value"]

EXCEPTION_CODE = 599
ORIGIN_HEADER = "X-Origin-A"


def origin_header_value(app):
    """The value of the ``X-Origin-A`` header for `app`: ``["<APP>:1"]``."""
    return [f"{str(app).upper()}:1"]


def _exception_message(error):
    return str(error) or type(error).__name__


def _call(func, name, first, args, kwargs):
    """Run `func`, returning its 3-tuple or the error triple described in the module docstring."""
    try:
        result = func(*args, **kwargs)
    except ErrorBase as error:
        level = logging.WARNING if 400 <= _as_int(error.code) < 500 else logging.ERROR
        CTX.logger.log(level, "%s raised %s (%s): %s", name, type(error).__name__, error.code, error.message,
                       exc_info=True)
        return first, error.code, error.message
    except Exception as error:  # noqa: BLE001 -- any escaping exception is reported as 599 by contract
        CTX.logger.error("%s raised %s: %s", name, type(error).__name__, error, exc_info=True)
        return first, EXCEPTION_CODE, _exception_message(error)
    if isinstance(result, (tuple, list)) and len(result) == 3:
        return tuple(result)
    message = f"{name} returned {type(result).__name__}, expected a 3-tuple (value, code, message)"
    CTX.logger.error("%s", message)
    return first, EXCEPTION_CODE, message


def _as_int(code):
    try:
        return int(code)
    except (TypeError, ValueError):
        return EXCEPTION_CODE


def create_net_handler(func):
    """Decorate ``create_net(configs) -> (model, code, message)``.

    Before calling `func` it sets, on the calling thread, ``CTX.app = configs.get("app", "")``,
    ``CTX.reqID = "net_init"`` and ``CTX.logger``. `configs` holds ``app``, ``workspace``, ``batch_size``,
    ``use_device`` ("CPU"/"GPU"), ``model_files``, ``model_params``, ``custom_files`` (absolute paths) and
    ``custom_params``. Code 0 (or 200) means success; anything else makes the app fail to start.
    Errors are returned as ``(None, code, message)``; see the module docstring.
    """

    @functools.wraps(func)
    def wrapper(configs, *args, **kwargs):
        get = getattr(configs, "get", None)
        app = get("app", "") if callable(get) else ""
        CTX.app = "" if app is None else str(app)
        CTX.reqID = "net_init"
        bind_logger()
        return _call(func, "create_net", None, (configs,) + args, kwargs)

    return wrapper


def net_preprocess_handler(func):
    """Decorate ``net_preprocess(model, request) -> (request, code, message)``.

    `request` is ``{"data": {"uri", "body", "attribute"}, "params": {...}}`` (or ``"data"`` a list for a
    multi-image request); return the request to hand to ``net_inference``. Errors are returned as
    ``(request, code, message)`` with the request as it came in. The runtime sets ``CTX.app`` and
    ``CTX.reqID`` (this request's id) before the call; the decorator rebinds ``CTX.logger``.
    """

    @functools.wraps(func)
    def wrapper(model, request, *args, **kwargs):
        bind_logger()
        with_data_keys(request)
        return _call(func, "net_preprocess", request, (model, request) + args, kwargs)

    return wrapper


def net_inference_handler(func):
    """Decorate ``net_inference(model, requests) -> (rets, code, message)``.

    `requests` is a list (never longer than the app's ``batch_size``); return one ret per request, in
    order, each ``{"code", "message", "result"}`` and optionally ``"body"`` (bytes), ``"header"`` and
    ``"result_file"``. A non-empty `message` with a code other than 0/200 fails the whole call; otherwise
    each ret's own code counts. The decorator adds ``"X-Origin-A": ["<APP>:1"]`` to each dict ret's
    ``"header"``. Errors are returned as ``(None, code, message)``. The runtime sets ``CTX.app`` and
    ``CTX.reqID`` (the batch's request ids joined by ",") before the call; the decorator rebinds
    ``CTX.logger``.
    """

    @functools.wraps(func)
    def wrapper(model, requests, *args, **kwargs):
        bind_logger()
        if isinstance(requests, list):
            for request in requests:
                with_data_keys(request)
        rets, code, message = _call(func, "net_inference", None, (model, requests) + args, kwargs)
        if rets is None or isinstance(rets, (dict, str, bytes, bytearray)):
            return rets, code, message
        if not isinstance(rets, list):
            if not hasattr(rets, "__iter__"):
                return rets, code, message  # not a sequence: the runtime reports it
            try:
                rets = list(rets)
            except Exception as error:  # noqa: BLE001 -- a lazy map() failing is the script's exception
                CTX.logger.error("net_inference rets raised %s: %s", type(error).__name__, error, exc_info=True)
                return None, EXCEPTION_CODE, _exception_message(error)
        header_value = origin_header_value(current_app())
        for ret in rets:
            if not isinstance(ret, dict):
                continue
            header = ret.get("header")
            if header is None:
                ret["header"] = {ORIGIN_HEADER: list(header_value)}
            elif isinstance(header, dict):
                header.setdefault(ORIGIN_HEADER, list(header_value))
        return rets, code, message

    return wrapper
