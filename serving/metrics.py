"""Prometheus metrics of the runtime, in prometheus_client's default registry.

The default registry also holds the `ava_serving_eval_response_time` histogram that evals feed through
`evals.utils.monitor_rt_*`, so one endpoint (`serving serve --metrics-port`) exports both.

The metrics updated per request or per batch (`REQUESTS`, `REQUEST_LATENCY`, `BATCH_SIZE`, `INFERENCE_LATENCY`)
are `FastCounter` and `FastHistogram`: prometheus_client's own Counter and Histogram run several Python calls per
update (label lookup, observability checks, a lock per value, a Python loop over the buckets), about 8,000
instructions per request for the two per-call metrics, on the event loop that every request shares. These keep
plain numbers under one lock and are exported through prometheus_client's collector API, with the same names,
labels and buckets.
"""
import bisect
import threading

from prometheus_client import REGISTRY, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class FastCounter:
    """A counter by label values: `inc(labels, amount)` with `labels` a tuple of strings, in `labelnames` order."""

    def __init__(self, name, documentation, labelnames, registry=REGISTRY):
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._values = {}
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, labels, amount=1):
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def collect(self):
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            values = list(self._values.items())
        for labels, value in values:
            family.add_metric(labels, value)
        yield family


class FastHistogram:
    """A histogram by label values: `observe(labels, value)`; `buckets` are the finite upper bounds (inclusive, as
    Prometheus's `le`); +Inf is added."""

    def __init__(self, name, documentation, labelnames, buckets, registry=REGISTRY):
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._series = {}  # labels -> [count per bucket (the last one +Inf)..., sum]
        self._lock = threading.Lock()
        registry.register(self)

    def declare(self, labels):
        """Export the series of `labels` (zeros) before its first observation, as `labels()` does for a
        prometheus_client metric."""
        with self._lock:
            self._series_of(labels)

    def observe(self, labels, value):
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            series = self._series_of(labels)
            series[index] += 1
            series[-1] += value

    def _series_of(self, labels):
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = [0] * (len(self._bounds) + 1) + [0.0]
        return series

    def collect(self):
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            snapshot = [(labels, list(series)) for labels, series in self._series.items()]
        for labels, series in snapshot:
            cumulative, buckets = 0, []
            for bound, count in zip((*self._bounds, float("inf")), series):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(labels, buckets, sum_value=series[-1])
        yield family


REQUESTS = FastCounter("serving_requests", "Instances answered, by app and serving code", ["app", "code"])
REQUEST_LATENCY = FastHistogram("serving_request_latency_seconds", "Time from admission to answer of a call",
                                ["app"], _LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("serving_queue_depth", "Images admitted and not yet answered", ["app"])
BATCH_SIZE = FastHistogram("serving_batch_size", "Images per net_inference call", ["app"],
                           (1, 2, 4, 8, 16, 32, 64, 128, 256))
INFERENCE_LATENCY = FastHistogram("serving_inference_seconds", "Duration of net_inference calls", ["app"],
                                  _LATENCY_BUCKETS)
# Written by AppRegistry only, from the version it serves: an App being retired or failing to load during a reload
# shares the name with the version that serves, and must not mark it not ready.
APP_READY = Gauge("serving_app_ready", "1 when the app serves, 0 otherwise", ["app"])
