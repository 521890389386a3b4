"""Prometheus metrics of the runtime, in prometheus_client's default registry.

The default registry also holds the `ava_serving_eval_response_time` histogram that evals feed through
`evals.utils.monitor_rt_*`, so one endpoint (`serving serve --metrics-port`) exports both.
"""
import functools

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

REQUESTS = Counter("serving_requests", "Instances answered, by app and serving code", ["app", "code"])
REQUEST_LATENCY = Histogram("serving_request_latency_seconds", "Time from admission to answer of a call",
                            ["app"], buckets=_LATENCY_BUCKETS)
QUEUE_DEPTH = Gauge("serving_queue_depth", "Images admitted and not yet answered", ["app"])
BATCH_SIZE = Histogram("serving_batch_size", "Images per net_inference call", ["app"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INFERENCE_LATENCY = Histogram("serving_inference_seconds", "Duration of net_inference calls", ["app"],
                              buckets=_LATENCY_BUCKETS)
APP_READY = Gauge("serving_app_ready", "1 when the app serves, 0 otherwise", ["app"])


# The children the request path touches, looked up once: `labels()` validates, takes a lock and builds its key on
# every call, a few microseconds per request. Bounded caches; prometheus keeps every child it made anyway.
@functools.lru_cache(maxsize=4096)
def requests_counter(app, code):
    """The REQUESTS child of (app, serving code)."""
    return REQUESTS.labels(app, str(code))


@functools.lru_cache(maxsize=1024)
def request_latency(app):
    """The REQUEST_LATENCY child of `app`."""
    return REQUEST_LATENCY.labels(app)


def serve_metrics(port, host="0.0.0.0"):
    """Export the default registry as Prometheus text on http://host:port/metrics; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_address[1]
