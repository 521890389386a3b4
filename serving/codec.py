"""Conversions between the native protocol's messages and Python values, shared by server, client and the
in-process runner, so that every path sees the same values.

Server side: `request_to_eval_requests` (InferRequest -> eval requests) and `outcome_to_result`.
Client side: `instances_to_request` and `result_to_dict`.
"""
import json
import math

import numpy as np

from serving.batching import Outcome
from serving.errors import BAD_REQUEST, INTERNAL, PAYLOAD_TOO_LARGE, ServingError
from serving.proto import inference_pb2 as pb

# Big enough for a 10 MiB image and its neighbours in one call; `--max-message-mb` changes it.
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
# Limits on the JSON a caller sends in params and attributes.
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
# Most images one call may carry (instances, counting each image of a multi-image instance), and most named
# inputs of one instance: checked before the values are converted, so that a message packed with tiny entries
# cannot make the server build millions of Python objects (413).
MAX_INSTANCES_PER_CALL = 1024
MAX_INPUTS_PER_INSTANCE = 256
TENSOR_MARKER = "$tensor"
BYTES_DTYPE = "bytes"

# dtypes a Tensor may carry: numpy's names, little-endian on the wire.
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64")}
# The data keys of the eval contract, carried in their own fields.
RESERVED_KEYS = ("uri", "body", "attribute")


# ---- tensors -----------------------------------------------------------------------------------------------------

def array_to_tensor(value):
    """A numpy array or numpy scalar as a Tensor (a scalar has an empty shape)."""
    array = np.asarray(value)
    name = array.dtype.name
    if name not in DTYPES:
        raise TypeError(f"numpy dtype {name} cannot be sent; use one of {', '.join(DTYPES)}")
    data = np.ascontiguousarray(array, dtype=DTYPES[name]).tobytes()
    return pb.Tensor(dtype=name, shape=array.shape, data=data)


def tensor_to_array(tensor, where="tensor"):
    """A Tensor as a numpy array, or a numpy scalar for an empty shape. The array is a read-only view of the
    message's bytes (no copy on the hot path): an eval that works in place copies it first (`array.copy()`).
    Raises ServingError 400 naming `where` when dtype, shape and byte count disagree."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ServingError(BAD_REQUEST, f"{where}: unknown dtype {tensor.dtype!r}; allowed: {', '.join(DTYPES)}")
    shape = tuple(tensor.shape)
    if any(dim < 0 for dim in shape):
        raise ServingError(BAD_REQUEST, f"{where}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if count * dtype.itemsize != len(tensor.data):
        raise ServingError(BAD_REQUEST, f"{where}: shape {list(shape)} of {tensor.dtype} needs "
                                        f"{count * dtype.itemsize} bytes, got {len(tensor.data)}")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array[()] if not shape else array


# ---- client side: Python values -> request -------------------------------------------------------------------------

def python_to_value(name, value):
    """One named instance value as a Value: numpy array/scalar, bool, int, float, str or bytes."""
    if isinstance(value, (np.ndarray, np.generic)):
        return pb.Value(tensor=array_to_tensor(value))
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(float_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return pb.Value(bytes_value=bytes(value))
    raise TypeError(f"instance value {name!r} has unsupported type {type(value).__name__}; "
                    "use a numpy array or scalar, bool, int, float, str or bytes")


def _dict_to_instance(data):
    if not isinstance(data, dict):
        raise TypeError(f"an instance must be a dict (or a list of dicts for a multi-image request), "
                        f"got {type(data).__name__}")
    instance = pb.Instance()
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"instance keys must be str, got {key!r}")
        if key == "uri":
            if not isinstance(value, str):
                raise TypeError(f"uri must be a str, got {type(value).__name__}")
            instance.uri = value
        elif key == "body":
            instance.body = _body_bytes(value)
        elif key == "attribute":
            if isinstance(value, (bytes, bytearray, memoryview, np.ndarray, np.generic)):
                raise TypeError(f"attribute must be a JSON value (a dict, list, str, number), got "
                                f"{type(value).__name__}")
            instance.attribute = json.dumps(value)
        else:
            instance.inputs[key].CopyFrom(python_to_value(key, value))
    return instance


def _body_bytes(value):
    """An instance's body as bytes: bytes-like, or a uint8 array (what cv2.imencode returns)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    raise TypeError(f"body must be the encoded image as bytes (or a uint8 array, as cv2.imencode gives), got "
                    f"{type(value).__name__}" + (f" of {value.dtype}" if isinstance(value, np.ndarray) else ""))


def instances_to_request(app, method, instances, params=None):
    """An InferRequest from the client's instances: a dict, or a list/tuple of them; an instance that is itself
    a list of dicts is a multi-image request."""
    if isinstance(instances, dict):
        instances = [instances]
    if not isinstance(instances, (list, tuple)):
        raise TypeError(f"instances must be a dict or a list of dicts, got {type(instances).__name__}")
    request = pb.InferRequest(app=app, method=method, params=json.dumps(params) if params else "")
    for item in instances:
        if isinstance(item, (list, tuple)):
            if not item:
                raise TypeError("a multi-image instance (a list of dicts) needs at least one image")
            multi = request.instances.add()
            for image in item:
                multi.images.append(_dict_to_instance(image))
        else:
            request.instances.append(_dict_to_instance(item))
    return request


# ---- server side: request -> eval requests -------------------------------------------------------------------------

def _value_to_python(value, where):
    kind = value.WhichOneof("kind")
    if kind == "tensor":
        return tensor_to_array(value.tensor, where)
    if kind is None:
        raise ServingError(BAD_REQUEST, f"{where}: empty value")
    return getattr(value, kind)


def _depth_over(value, limit):
    """True when `value` nests containers deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json(text, where, *, want_object):
    """Decode JSON from the wire; ServingError 400 naming `where` when it is not JSON (or not an object), or
    over MAX_JSON_BYTES or MAX_JSON_DEPTH (so params and attributes cannot exhaust memory or the stack)."""
    if len(text) > MAX_JSON_BYTES:
        raise ServingError(BAD_REQUEST, f"{where} is {len(text)} bytes of JSON, over the limit of {MAX_JSON_BYTES}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ServingError(BAD_REQUEST, f"{where} is not valid JSON: {exc}") from None
    if want_object and not isinstance(value, dict):
        raise ServingError(BAD_REQUEST, f"{where} must be a JSON object, got {type(value).__name__}")
    if _depth_over(value, MAX_JSON_DEPTH):
        raise ServingError(BAD_REQUEST, f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _instance_to_data(instance, where):
    if len(instance.inputs) > MAX_INPUTS_PER_INSTANCE:
        raise ServingError(PAYLOAD_TOO_LARGE, f"{where} has {len(instance.inputs)} inputs, over the limit of "
                                              f"{MAX_INPUTS_PER_INSTANCE}")
    data = {}
    if instance.uri:
        data["uri"] = instance.uri
    if instance.body:
        data["body"] = instance.body
    if instance.attribute:
        data["attribute"] = parse_json(instance.attribute, f"{where}.attribute", want_object=False)
    for name, value in instance.inputs.items():
        if name in RESERVED_KEYS:
            raise ServingError(BAD_REQUEST, f"{where}: input {name!r} must use its own field")
        data[name] = _value_to_python(value, f"{where}.inputs[{name!r}]")
    return data


def request_to_eval_requests(request):
    """The eval requests `{"data": ..., "params": ...}` of an InferRequest, one per instance."""
    if not request.instances:
        raise ServingError(BAD_REQUEST, "the request holds no instances")
    if len(request.instances) > MAX_INSTANCES_PER_CALL:
        raise _too_many_images(len(request.instances))
    params = parse_json(request.params, "params", want_object=True) if request.params else {}
    requests = []
    images = 0
    for i, instance in enumerate(request.instances):
        where = f"instances[{i}]"
        images += len(instance.images) or 1
        if images > MAX_INSTANCES_PER_CALL:
            raise _too_many_images(images, "at least ")
        if instance.images:
            if instance.uri or instance.body or instance.attribute or instance.inputs:
                raise ServingError(BAD_REQUEST, f"{where}: a multi-image instance carries its data in images only")
            data = [_instance_to_data(image, f"{where}.images[{j}]") for j, image in enumerate(instance.images)]
        else:
            data = _instance_to_data(instance, where)
        requests.append({"data": data, "params": dict(params)})
    return requests


def _too_many_images(count, qualifier=""):
    return ServingError(PAYLOAD_TOO_LARGE, f"the call carries {qualifier}{count} images, over the limit of "
                                           f"{MAX_INSTANCES_PER_CALL} per call; split it")


# ---- server side: outcome -> result ------------------------------------------------------------------------------

def outcome_to_result(outcome):
    """A Result message of one Outcome; numpy arrays, numpy scalars and bytes in the result become tensors."""
    if not outcome.ok:
        return pb.Result(code=outcome.code, message=outcome.message)
    tensors = {}

    def extract(value):
        if isinstance(value, (np.ndarray, np.generic)):
            key = f"t{len(tensors)}"
            tensors[key] = array_to_tensor(value)
            return {TENSOR_MARKER: key}
        if isinstance(value, (bytes, bytearray, memoryview)):
            key = f"t{len(tensors)}"
            tensors[key] = pb.Tensor(dtype=BYTES_DTYPE, data=bytes(value))
            return {TENSOR_MARKER: key}
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        text = json.dumps(outcome.result, default=extract) if outcome.result is not None else ""
        header = json.dumps(outcome.header, default=extract) if outcome.header else ""
    except (TypeError, ValueError) as exc:
        return pb.Result(code=INTERNAL, message=f"the eval's result cannot be sent: {exc}")
    return pb.Result(code=0, message=outcome.message, result=text, tensors=tensors, body=outcome.body,
                     header=header)


def outcome_from_error(error):
    return Outcome(code=error.code, message=error.message)


# ---- client side: result -> Python ---------------------------------------------------------------------------------

class Failure(dict):
    """A failed instance or call as the clients return it: {"error": message, "code": code}.

    A dict, to print and to serialise as JSON; tell it from a result by its type (`isinstance(r, Failure)`), not
    by an "error" key, which an eval's own result may hold.
    """

    def __init__(self, message, code):
        super().__init__(error=message, code=code)


def result_to_dict(result):
    """The client's view of one Result: the result's keys (numpy arrays and scalars for tensors, plus "body"
    when the eval returned one), or a Failure for a failed instance."""
    if result.code != 0:
        return Failure(result.message, result.code)
    tensors = result.tensors

    def restore(obj):
        if len(obj) == 1 and TENSOR_MARKER in obj:
            tensor = tensors[obj[TENSOR_MARKER]]
            return tensor.data if tensor.dtype == BYTES_DTYPE else tensor_to_array(tensor)
        return obj

    value = json.loads(result.result, object_hook=restore if tensors else None) if result.result else {}
    out = value if isinstance(value, dict) else {"result": value}
    if result.body:
        out["body"] = result.body
    return out
