"""The eval API: what an ``eval.py`` imports.

::

    from evals.utils import create_net_handler, net_preprocess_handler, net_inference_handler, CTX, \\
        monitor_rt_load, monitor_rt_forward, monitor_rt_post
    from evals.utils import *
    from evals.utils.error import *
    from evals.utils.image import load_image
    from evals.utils.logger import logger

Modules: :mod:`~evals.utils.handlers` (the decorators), :mod:`~evals.utils.context` (``CTX``),
:mod:`~evals.utils.error` (error classes), :mod:`~evals.utils.image` (``load_image``; ``square_bgr``, an
image as the square BGR array a network's preprocessing starts from),
:mod:`~evals.utils.logger` (``logger``), :mod:`~evals.utils.monitor` (response-time histograms),
:mod:`~evals.utils.helpers` (config and file helpers), :mod:`~evals.utils.request` (``request_images``, and
``RequestData``: a request's ``data``, in which ``uri``, ``body`` and ``attribute`` read as None when not sent).

``from evals.utils import *`` gives the decorators, ``CTX``, every error class, the helpers, the monitor
functions, ``request_images``, ``load_image`` and ``logger``. It also gives the standard modules the old package
leaked through its star import (``csv``, ``functools``, ``json``, ``logging``, ``os``, ``threading``,
``traceback``) and its Prometheus names, because existing scripts call e.g. ``traceback.format_exc()`` without
importing it.

Importing this package is cheap: OpenCV is imported on the first ``load_image`` call and the histogram is
created on the first ``monitor_rt_*`` call.
"""

# Standard modules re-exported on purpose (see the docstring): old scripts use them without importing them.
import csv
import functools
import json
import logging
import os
import threading
import traceback

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from evals.utils.context import CTX
from evals.utils.error import (
    ErrorBase,
    ErrorConfig,
    ErrorCV2ImageRead,
    ErrorFileNotExist,
    ErrorForbiddenURI,
    ErrorForwardInference,
    ErrorImageNdim,
    ErrorImageTooLarge,
    ErrorImageTooSmall,
    ErrorInvalidPTS,
    ErrorNoPTS,
    ErrorOutOfBatchSize,
    ErrorRemoteURI,
    ErrorTransformImage,
)
from evals.utils.handlers import create_net_handler, net_inference_handler, net_preprocess_handler
from evals.utils.helpers import (
    _make_synset,
    _make_tag,
    file_check,
    infer_input_unmarshal,
    infer_output_marshal,
    make_synset,
    parse_crop_size,
    parse_params_file,
    value_check,
)
from evals.utils import error as _error
from evals.utils import helpers as _helpers
from evals.utils.image import load_image
from evals.utils.logger import logger
from evals.utils.request import request_images
from evals.utils.monitor import (
    REGISTRY,
    metrics,
    monitor_rt_forward,
    monitor_rt_inference,
    monitor_rt_load,
    monitor_rt_post,
    monitor_rt_transform,
    response_time_histogram,
)

__all__ = [
    # handlers and context
    "create_net_handler",
    "net_preprocess_handler",
    "net_inference_handler",
    "CTX",
    *_error.__all__,
    *_helpers.__all__,
    # requests, images, logging, monitoring
    "request_images",
    "load_image",
    "logger",
    "monitor_rt_load",
    "monitor_rt_forward",
    "monitor_rt_post",
    "monitor_rt_transform",
    "monitor_rt_inference",
    "metrics",
    "REGISTRY",
    "CollectorRegistry",
    "Histogram",
    "generate_latest",
    # standard modules the old star import leaked
    "csv",
    "functools",
    "json",
    "logging",
    "os",
    "threading",
    "traceback",
]


def __getattr__(name):
    """``MONITOR_RESPONSETIME``, the old module-level histogram, created on first access."""
    if name == "MONITOR_RESPONSETIME":
        return response_time_histogram()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
