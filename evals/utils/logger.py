"""The eval logger (``from evals.utils.logger import logger``).

``logger`` is ``logging.getLogger("evals")`` with one stderr handler whose format shows the request id
(``%(reqid)s``). Inside a handler, prefer ``CTX.logger``: a ``LoggerAdapter`` over this logger that fills
``reqid`` with the current request id(s). Records logged without ``reqid`` (plain ``logger.info(...)``,
or a child logger such as ``logging.getLogger("evals.myapp")``) show ``-`` instead of failing to format.
Old scripts pass ``extra={"reqid": ""}`` themselves; that works too.

The level is INFO; the runtime (or a script) may change it with ``logger.setLevel``. Records do not
propagate to the root logger, so they are written once.
"""

import logging

__all__ = ["logger", "LOG_FORMAT", "ReqidDefaultFilter"]

LOGGER_NAME = "evals"
LOG_FORMAT = "%(asctime)s %(levelname)s [%(reqid)s] %(filename)s:%(lineno)d: %(message)s"


class ReqidDefaultFilter(logging.Filter):
    """Give records that carry no ``reqid`` the placeholder ``-`` so the format never raises."""

    def filter(self, record):
        if not hasattr(record, "reqid"):
            record.reqid = "-"
        return True


def _install(target):
    """Add the eval handler to `target` once; importing this module twice must not duplicate output."""
    for handler in target.handlers:
        if getattr(handler, "_evals_handler", False):
            return handler
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ReqidDefaultFilter())
    handler._evals_handler = True
    target.addHandler(handler)
    if target.level == logging.NOTSET:
        target.setLevel(logging.INFO)
    target.propagate = False
    return handler


logger = logging.getLogger(LOGGER_NAME)
_install(logger)
