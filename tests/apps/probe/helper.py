"""A sibling module, imported as evals.probe.helper: app code imports its own modules inside `evals`."""
import numpy as np


def describe(data):
    """A JSON-able description of a request's data: the type of each value (and dtype/shape of arrays)."""
    if isinstance(data, list):
        return [describe(item) for item in data]
    out = {}
    for key, value in data.items():
        if isinstance(value, np.ndarray):
            out[key] = {"type": "ndarray", "dtype": value.dtype.name, "shape": list(value.shape),
                        "writeable": bool(value.flags.writeable)}
        elif isinstance(value, np.generic):
            out[key] = {"type": "numpy_scalar", "dtype": value.dtype.name}
        elif isinstance(value, bytes):
            out[key] = {"type": "bytes", "len": len(value)}
        else:
            out[key] = {"type": type(value).__name__, "value": value}
    return out
