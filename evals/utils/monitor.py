"""Response-time histograms for eval scripts: ``monitor_rt_load/forward/post/transform/inference``.

Each function returns a labelled child of ONE Prometheus histogram,
``ava_serving_eval_response_time{method, error, number}``, registered in ``prometheus_client``'s default
``REGISTRY`` (so it appears on the runtime's metrics endpoint)::

    monitor_rt_load().observe(seconds)
    with monitor_rt_forward(number=len(batch)).time():
        ...

The histogram is created on first use, once per process: a second import of this module (under another
name) reuses the collector already registered instead of failing with a duplicate registration.
"""

import threading

from prometheus_client import REGISTRY, Histogram, generate_latest

__all__ = [
    "monitor_rt_load",
    "monitor_rt_forward",
    "monitor_rt_post",
    "monitor_rt_transform",
    "monitor_rt_inference",
    "response_time_histogram",
    "metrics",
    "REGISTRY",
]

_NAMESPACE = "ava"
_SUBSYSTEM = "serving_eval"
_NAME = "response_time"
_FULL_NAME = f"{_NAMESPACE}_{_SUBSYSTEM}_{_NAME}"
_LABELS = ("method", "error", "number")
# The old host's buckets: fine below one second, coarse up to a minute.
_BUCKETS = (
    0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09,
    0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
    1, 2, 3, 4, 5, 6, 7, 8, 9,
    10, 20, 30, 40, 50, 60,
)

_lock = threading.Lock()
_histogram = None


def _registered():
    """The collector already registered under our name, if any (e.g. by a second copy of this module)."""
    collectors = getattr(REGISTRY, "_names_to_collectors", {})
    return collectors.get(_FULL_NAME) or collectors.get(_FULL_NAME + "_count")


def response_time_histogram():
    """The shared ``ava_serving_eval_response_time`` histogram, created and registered on first call."""
    global _histogram
    if _histogram is not None:
        return _histogram
    with _lock:
        if _histogram is None:
            existing = _registered()
            if isinstance(existing, Histogram):
                _histogram = existing
            else:
                _histogram = Histogram(
                    _NAME,
                    "Response time of eval handler stages, in seconds",
                    labelnames=_LABELS,
                    namespace=_NAMESPACE,
                    subsystem=_SUBSYSTEM,
                    buckets=_BUCKETS,
                    registry=REGISTRY,
                )
    return _histogram


def _child(method, number, error):
    return response_time_histogram().labels(method=method, error=str(error), number=str(number))


def monitor_rt_load(number=1, error="NIL"):
    """Histogram child for loading/decoding images (``method="py.load"``)."""
    return _child("py.load", number, error)


def monitor_rt_forward(number=1, error="NIL"):
    """Histogram child for the forward pass (``method="py.forward"``)."""
    return _child("py.forward", number, error)


def monitor_rt_post(number=1, error="NIL"):
    """Histogram child for post-processing (``method="py.post"``)."""
    return _child("py.post", number, error)


def monitor_rt_transform(number=1, error="NIL"):
    """Histogram child for transforming images into network input (``method="py.transform"``)."""
    return _child("py.transform", number, error)


def monitor_rt_inference(number=1, error="NIL"):
    """Histogram child for a whole inference call (``method="py.inference"``)."""
    return _child("py.inference", number, error)


def metrics():
    """The default registry in the Prometheus text format (bytes), as the old ``evals.utils.metrics``."""
    return generate_latest(REGISTRY)
