"""``CTX``: the per-thread call context that eval handlers read.

``CTX`` is a ``threading.local``. On the thread that calls a handler it holds:

``CTX.app``
    the app name (str).
``CTX.reqID``
    the request id (str); for a batch, the ids of its requests joined by ``","``; ``"net_init"`` while
    ``create_net`` runs.
``CTX.logger``
    a ``logging.LoggerAdapter`` over :data:`evals.utils.logger.logger` whose records carry
    ``reqid = CTX.reqID``.

Who sets what: the runtime sets ``CTX.app`` and ``CTX.reqID`` on the calling thread before it calls
``net_preprocess`` / ``net_inference`` (``set_request_context`` does both and the logger); the decorators then
(re)build ``CTX.logger`` from ``CTX.reqID``; ``create_net_handler`` sets all three itself. On a thread where
nothing was set (a thread the script started, a direct call from a unit test) the attributes still exist,
with ``app = ""``, ``reqID = ""`` and a logger that prints ``-`` as the request id.

Scripts may store their own per-thread values on ``CTX`` (``CTX.foo = ...``); they are visible only to the
thread that set them.
"""

import logging
import threading

from evals.utils.logger import logger

__all__ = ["CTX", "set_request_context", "current_app", "current_reqid"]


class _Context(threading.local):
    """A ``threading.local`` whose attributes have defaults on every thread."""

    def __init__(self):
        super().__init__()
        self.app = ""
        self.reqID = ""
        self.logger = logging.LoggerAdapter(logger, {"reqid": "-"})


CTX = _Context()


def current_app():
    """``CTX.app`` as a str ("" when unset)."""
    app = getattr(CTX, "app", "")
    return "" if app is None else str(app)


def current_reqid():
    """``CTX.reqID`` as a str ("" when unset)."""
    reqid = getattr(CTX, "reqID", "")
    return "" if reqid is None else str(reqid)


def bind_logger():
    """Point ``CTX.logger`` at the current ``CTX.reqID`` and return it."""
    CTX.logger = logging.LoggerAdapter(logger, {"reqid": current_reqid()})
    return CTX.logger


def set_request_context(app, reqid):
    """Set ``CTX.app``, ``CTX.reqID`` and ``CTX.logger`` on the calling thread (for the runtime).

    `reqid` is a str, or a sequence of request ids (a batch), which is joined with ``","``.
    """
    if reqid is None:
        reqid = ""
    elif not isinstance(reqid, str):
        reqid = ",".join(str(r) for r in reqid)
    CTX.app = "" if app is None else str(app)
    CTX.reqID = reqid
    return bind_logger()
