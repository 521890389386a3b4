"""The Open Inference Protocol (KServe v2) over gRPC: `inference.GRPCInferenceService` for every app.

Model name = app name; every app has one version, reported as "1" (a request may name "" or "1").

Requests. A ModelInferRequest carries N instances, N being the first dimension of its inputs (all inputs must
agree). Instance i becomes the eval request `{"data": data_i, "params": params}`:
- inputs `body`, `uri`, `attribute` (BYTES, one element per row) become `data["body"]` (bytes), `data["uri"]`
  (str) and `data["attribute"]` (decoded JSON);
- any other input becomes `data[name]` = its row i: a read-only numpy array of the tensor's dtype with the
  first dimension removed (for BYTES, an object array of bytes).
Request parameters become `params`: a string parameter `params` holding a JSON object is decoded into the dict,
then every other parameter is added by name (so `timeout`, `priority` reach the eval too; `timeout`, in
microseconds as tritonclient sends it, also caps the call's deadline).

Responses. Each key of the instances' results becomes an output:
- a tensor [N, ...] when every successful instance returned a numpy array (or numpy scalar) of one dtype and
  shape for it; rows of failed instances are zeros;
- otherwise a BYTES [N] output holding each instance's value as JSON (`null` for failed instances and for
  instances without the key; numpy values become lists/numbers, bytes become latin-1 text);
plus `body` (BYTES [N], the eval's body bytes, empty for instances without one), `code` (INT32 [N], 0 for
success) and `message` (BYTES [N]). Result keys named `code` or `message` are shadowed by these. The request's
`outputs` list selects among them, in its order; a requested name that no instance produced is answered as a
BYTES output of `null`s rather than failing an inference that worked. All data goes in `raw_output_contents`.

Errors. With N = 1 and a failed instance, with every instance failed because its batch failed (net_inference
failed as a whole), or with a failure of the whole call, the call fails through `serving.errors.abort_with`:
the status of the serving code, details = the message, the code in trailing metadata. With N > 1 otherwise the
call succeeds and `code` says which instances failed, even when each of them failed on its own. Unknown model:
NOT_FOUND. Malformed request: INVALID_ARGUMENT naming what is wrong. Details longer than
`serving.errors.MAX_DETAILS_CHARS` are cut, and the request id in trailing metadata is escaped to printable ASCII.

Triton extensions not implemented (ServerMetadata lists the ones that are): shared memory (a
`shared_memory_region`/`_byte_size`/`_offset` parameter on an input or a requested output, and the
SystemSharedMemory*/CudaSharedMemory* RPCs) and `classification` on a requested output are UNIMPLEMENTED naming
what is not supported, never ignored (ignored, a client would read its own region, or a raw tensor, as the
answer); TraceSetting and LogSettings are UNIMPLEMENTED saying what to use instead. A `timeout` parameter that is
not an integer number of microseconds >= 0 is INVALID_ARGUMENT (as Triton answers): a deadline is never dropped
silently. `binary_data`, `binary_data_output` (HTTP-only in Triton), `priority` and the sequence parameters change
nothing here beyond reaching the eval in `params`: there is no priority queue and no sequence batcher; like
`timeout`, they must be of the kinds Triton takes (`priority` an int64 >= 0 or uint64, `sequence_id` an integer or
a string, `sequence_start` and `sequence_end` booleans), or the call is INVALID_ARGUMENT. Every
ModelStreamInfer answer is marked `triton_final_response: true`: each request has exactly one answer, as from a
Triton model that is not decoupled, so clients that read until that flag finish.

Metadata. Python evals declare no tensors, so ModelMetadata and ModelConfig report the inputs `body`, `uri`,
`attribute` (BYTES) and the outputs `code` (INT32) and `message` (BYTES), all of one element per instance
(metadata shape [-1]; config dims [] under max_batch_size = the app's batch_size), platform "serving-python";
an app accepts any other named input too and answers with whatever keys its results hold.

Readiness. ServerReady: the apps have been loaded, the server is not shutting down, and every app is READY
(Triton's rule: a FAILED or STUCK app makes the server not ready). ModelReady: the app's state is READY; an
unknown model is simply not ready (as Triton answers, so pollers do not see an error during an unload).
"""
import asyncio
import json
import logging
import math
import struct
import sys

import grpc
import numpy as np

import serving
from serving.apps import READY
from serving.batching import Outcome, call_failure
from serving.codec import MAX_INSTANCES_PER_CALL, parse_json
from serving.dataplane import new_request_id
from serving.auth import current_user
from serving.errors import (BAD_REQUEST, FORBIDDEN, INTERNAL, MAX_DETAILS_CHARS, MAX_REQUEST_ID_CHARS, NOT_FOUND,
                            NOT_IMPLEMENTED, PAYLOAD_TOO_LARGE, ServingError, abort_with, cut_details)
from serving.proto import kserve_pb2 as pb

log = logging.getLogger("serving.kserve")

KSERVE_SERVICE = "inference.GRPCInferenceService"
PLATFORM = "serving-python"
MODEL_VERSION = "1"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "parameters")

# KServe datatype names and their numpy dtypes, little-endian on the wire. BYTES has its own encoding.
DATATYPES = {name: np.dtype(code).newbyteorder("<") for name, code in (
    ("BOOL", "bool"), ("UINT8", "uint8"), ("UINT16", "uint16"), ("UINT32", "uint32"), ("UINT64", "uint64"),
    ("INT8", "int8"), ("INT16", "int16"), ("INT32", "int32"), ("INT64", "int64"),
    ("FP16", "float16"), ("FP32", "float32"), ("FP64", "float64"))}
BYTES = "BYTES"
_DATATYPE_OF = {dtype.name: name for name, dtype in DATATYPES.items()}
# The typed `contents` field each datatype travels in (8- and 16-bit integers widened); FP16 has none.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", BYTES: "bytes_contents"}
_CONFIG_TYPES = {**{name: pb.DataType.Value("TYPE_" + name) for name in DATATYPES}, BYTES: pb.TYPE_STRING}

# The eval contract's data keys, carried as BYTES inputs with one element per instance.
_DATA_KEYS = ("body", "uri", "attribute")
# Most BYTES elements one input may hold (each becomes a Python object), and most requests of one
# ModelStreamInfer stream in flight: past that the stream is not read until answers are taken (HTTP/2 flow
# control then holds the client back), so a client that sends without reading cannot grow memory.
MAX_BYTES_ELEMENTS = 65536
MAX_STREAM_IN_FLIGHT = 256
# The most request bytes one ModelStreamInfer stream holds in flight (past that it is not read until answers go
# out): with MAX_STREAM_IN_FLIGHT alone, 256 requests of the largest message size could be held by one call.
MAX_STREAM_BYTES = 64 * 2**20
# The most dimensions of an input's shape, and elements its non-zero dimensions may span.
MAX_DIMENSIONS = 32
MAX_ELEMENTS = 2**40
_FINAL_RESPONSE = "triton_final_response"
_LENGTH = struct.Struct("<I")
_NULL = b"null"


# ---- requests -> eval requests -------------------------------------------------------------------------------

def split_bytes_elements(raw, count, where):
    """The `count` elements of a BYTES tensor's raw contents (each a 4-byte little-endian length, then the
    bytes), as a list of bytes. ServingError 400 naming `where` when the lengths do not add up."""
    elements = []
    append = elements.append
    unpack = _LENGTH.unpack_from
    position, end = 0, len(raw)
    for _ in range(count):
        if position + 4 > end:
            raise ServingError(BAD_REQUEST, f"{where}: BYTES contents end after {len(elements)} of {count} "
                                            "elements")
        (length,) = unpack(raw, position)
        position += 4
        if position + length > end:
            raise ServingError(BAD_REQUEST, f"{where}: BYTES element {len(elements)} claims {length} bytes, "
                                            f"{end - position} left")
        append(raw[position:position + length])
        position += length
    if position != end:
        raise ServingError(BAD_REQUEST, f"{where}: {end - position} bytes left after {count} BYTES elements")
    return elements


def join_bytes_elements(elements):
    """The raw contents of a BYTES tensor holding `elements` (bytes)."""
    pack = _LENGTH.pack
    return b"".join(part for element in elements for part in (pack(len(element)), element))


def _tensor_shape(tensor, where):
    shape = tuple(tensor.shape)
    if not shape:
        raise ServingError(BAD_REQUEST, f"{where}: a scalar shape has no instances; the first dimension is the "
                                        "number of instances")
    if min(shape) < 0:
        raise ServingError(BAD_REQUEST, f"{where}: negative dimension in shape {list(shape)}")
    # A shape with a 0 in it holds no data whatever its other dimensions, so no byte count bounds them: numpy
    # cannot shape an array past these limits, and no model has such a shape.
    if len(shape) > MAX_DIMENSIONS or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise ServingError(BAD_REQUEST, f"{where}: shape {list(shape)} is too large (at most {MAX_DIMENSIONS} "
                                        f"dimensions of {MAX_ELEMENTS} elements together)")
    return shape


def decode_input(tensor, raw, where):
    """One input tensor as a numpy array of its shape (object array of bytes for BYTES), from its raw contents
    (None: from its typed `contents`). ServingError 400 when datatype, shape and data disagree."""
    shape = _tensor_shape(tensor, where)
    count = math.prod(shape)
    datatype = tensor.datatype
    if datatype == BYTES:
        if count > MAX_BYTES_ELEMENTS:
            raise ServingError(PAYLOAD_TOO_LARGE, f"{where}: {count} BYTES elements, over the limit of "
                                                  f"{MAX_BYTES_ELEMENTS}")
        if raw is not None:
            elements = split_bytes_elements(raw, count, where)
        else:
            elements = list(tensor.contents.bytes_contents)
            if len(elements) != count:
                raise ServingError(BAD_REQUEST, f"{where}: shape {list(shape)} needs {count} BYTES elements, got "
                                                f"{len(elements)}")
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ServingError(BAD_REQUEST, f"{where}: unknown datatype {datatype!r}; allowed: "
                                        f"{', '.join([*DATATYPES, BYTES])}")
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise ServingError(BAD_REQUEST, f"{where}: shape {list(shape)} of {datatype} needs "
                                            f"{count * dtype.itemsize} bytes, got {len(raw)}")
        array = np.frombuffer(raw, dtype=dtype)
    else:
        field = _CONTENTS_FIELD.get(datatype)
        if field is None:
            raise ServingError(BAD_REQUEST, f"{where}: {datatype} data must be sent in raw_input_contents")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise ServingError(BAD_REQUEST, f"{where}: shape {list(shape)} needs {count} values in "
                                            f"contents.{field}, got {len(values)}")
        try:
            array = np.array(values, dtype=dtype)
        except OverflowError:  # 8- and 16-bit types travel in 32-bit fields
            raise ServingError(BAD_REQUEST, f"{where}: a value in contents.{field} is out of the range of "
                                            f"{datatype}") from None
        array.flags.writeable = False  # like the raw path's view of the message: evals copy before writing
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array.reshape(shape)


def _data_key_value(name, element, where):
    """The Python value of one `body`/`uri`/`attribute` element."""
    if name == "body":
        return element
    try:
        text = element.decode("utf-8")
    except UnicodeDecodeError:
        raise ServingError(BAD_REQUEST, f"{where} is not UTF-8") from None
    if name == "uri":
        return text
    return parse_json(text, where, want_object=False)


def _parameter_value(parameter):
    kind = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, kind) if kind else None


# Triton's own request parameters and the kinds Triton takes for each (and whether an int64 must be >= 0): another
# kind is INVALID_ARGUMENT, as Triton answers it, rather than reaching the eval as something it did not ask for.
# `timeout` is checked where it is read (request_timeout_s).
_TRITON_PARAMETERS = {
    "priority": (("int64_param", "uint64_param"), True),
    "sequence_id": (("int64_param", "uint64_param", "string_param"), False),
    "sequence_start": (("bool_param",), False),
    "sequence_end": (("bool_param",), False),
}


def _triton_parameter(parameters, key, kinds, non_negative, expected=None):
    """The value of the request parameter `key` (None when absent); ServingError 400 saying what was `expected`
    (default: the kinds) when it is of another kind or, `non_negative`, an int64 below 0."""
    parameter = parameters.get(key)
    if parameter is None:
        return None
    kind = parameter.WhichOneof("parameter_choice")
    value = _parameter_value(parameter)
    if kind not in kinds or (non_negative and kind == "int64_param" and value < 0):
        expected = expected or " or ".join(kinds) + (" >= 0" if non_negative else "")
        raise ServingError(BAD_REQUEST, f"parameter {key!r} must be {expected}, got {kind or 'no value'} "
                                        f"{repr(value)[:40]}")
    return value


def _check_triton_parameters(parameters):
    for key, (kinds, non_negative) in _TRITON_PARAMETERS.items():
        _triton_parameter(parameters, key, kinds, non_negative)


def request_params(request):
    """The eval params of a request: the JSON object of a string parameter `params`, then every other
    parameter by name. ServingError (400) for a Triton parameter of a kind Triton refuses."""
    if not request.parameters:
        return {}
    _check_triton_parameters(request.parameters)
    params = {}
    packed = request.parameters.get("params")
    if packed is not None and packed.WhichOneof("parameter_choice") == "string_param":
        params.update(parse_json(packed.string_param, "parameter 'params'", want_object=True))
    for key, parameter in request.parameters.items():
        if key == "params" and parameter.WhichOneof("parameter_choice") == "string_param":
            continue
        params[key] = _parameter_value(parameter)
    return params


# Tensor parameters of Triton extensions this server does not implement: refused, since ignoring them answers
# wrongly (the client reads its shared-memory region, or expects classification strings, as the result).
_SHARED_MEMORY_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
_NO_SHARED_MEMORY = ("shared memory is not supported by this server (no system_shared_memory or "
                     "cuda_shared_memory extension in ServerMetadata)")


def refuse_unsupported_tensor_parameters(request):
    """ServingError 501 naming the tensor and parameter when an input or requested output asks for shared memory
    or (outputs) classification."""
    for tensor in request.inputs:
        if tensor.parameters:
            for key in _SHARED_MEMORY_PARAMETERS:
                if key in tensor.parameters:
                    raise ServingError(NOT_IMPLEMENTED, f"input {tensor.name!r}: parameter {key!r}: "
                                                        f"{_NO_SHARED_MEMORY}; send its data in raw_input_contents")
    for output in request.outputs:
        if output.parameters:
            for key in _SHARED_MEMORY_PARAMETERS:
                if key in output.parameters:
                    raise ServingError(NOT_IMPLEMENTED, f"output {output.name!r}: parameter {key!r}: "
                                                        f"{_NO_SHARED_MEMORY}; leave it out to receive the output in "
                                                        "raw_output_contents")
            if "classification" in output.parameters:
                raise ServingError(NOT_IMPLEMENTED, f"output {output.name!r}: parameter 'classification': the "
                                                    "classification extension is not supported by this server; "
                                                    "request the output without it and rank its values yourself")


def request_to_eval_requests(request):
    """The N eval requests `{"data": ..., "params": ...}` of a ModelInferRequest, one per instance."""
    inputs = request.inputs
    if not inputs:
        raise ServingError(BAD_REQUEST, "the request holds no inputs")
    refuse_unsupported_tensor_parameters(request)
    raw_contents = request.raw_input_contents
    if raw_contents and len(raw_contents) != len(inputs):
        raise ServingError(BAD_REQUEST, f"{len(inputs)} inputs but {len(raw_contents)} "
                                        "raw_input_contents: send one per input, or none")
    columns, n, seen = [], None, set()
    for index, tensor in enumerate(inputs):
        name = tensor.name
        if not name or name in seen:
            raise ServingError(BAD_REQUEST, f"input {index}: " + (f"{name!r} given twice" if name else "no name"))
        seen.add(name)
        where = f"input {name!r}"
        if tensor.shape and tensor.shape[0] > MAX_INSTANCES_PER_CALL:
            raise ServingError(PAYLOAD_TOO_LARGE, f"{where} has {tensor.shape[0]} instances (first dimension), "
                                                  f"over the limit of {MAX_INSTANCES_PER_CALL} per call; split it")
        array = decode_input(tensor, raw_contents[index] if raw_contents else None, where)
        if n is None:
            n = array.shape[0]
        elif array.shape[0] != n:
            raise ServingError(BAD_REQUEST, f"{where} has {array.shape[0]} instances (first dimension), input "
                                            f"{inputs[0].name!r} has {n}")
        if name in _DATA_KEYS:
            if tensor.datatype != BYTES or math.prod(array.shape[1:]) != 1:
                raise ServingError(BAD_REQUEST, f"{where} must be BYTES with one element per instance, got "
                                                f"{tensor.datatype} of shape {list(array.shape)}")
            values = [_data_key_value(name, element, f"{where}[{i}]") for i, element in enumerate(array.reshape(n))]
        else:
            values = array  # rows are taken per instance below: views, no copies
        columns.append((name, values))
    if not n:
        raise ServingError(BAD_REQUEST, "the request holds no instances (first dimension 0)")
    params = request_params(request)
    if n == 1:  # the params dict is this call's own: the one instance may have it
        return [{"data": {name: values[0] for name, values in columns}, "params": params}]
    return [{"data": {name: values[i] for name, values in columns}, "params": dict(params)} for i in range(n)]


def request_timeout_s(request, context):
    """The caller's remaining time: the gRPC deadline, capped by a `timeout` parameter in microseconds (0: none,
    as in Triton). ServingError 400 for a `timeout` of another type or below 0, which Triton refuses too."""
    remaining = context.time_remaining()
    micros = _triton_parameter(request.parameters, "timeout", ("int64_param", "uint64_param"), True,
                               "an int64_param of microseconds >= 0 (0: no timeout)")
    if micros:
        remaining = micros / 1e6 if remaining is None else min(remaining, micros / 1e6)
    return remaining


# ---- outcomes -> outputs -------------------------------------------------------------------------------------

class _Unset:
    """A result key absent from an instance's result."""


_UNSET = _Unset()
_NO_RESULT = {}  # the result of a failed instance (never modified)


def _result_dict(outcome):
    result = outcome.result
    if result is None:
        return {}
    return result if isinstance(result, dict) else {"result": result}


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _datatype_of(dtype):
    """The KServe datatype of a numpy dtype, or None when the protocol has no tensor of it. Looked up by the
    dtype object first: `dtype.name` costs microseconds, and this runs per result key of every call."""
    datatype = _DATATYPE_BY_DTYPE.get(dtype)
    if datatype is None:
        datatype = _DATATYPE_OF.get(dtype.name)
        if datatype is not None:
            _DATATYPE_BY_DTYPE[dtype] = datatype  # bounded: supported dtypes only
    return datatype


_DATATYPE_BY_DTYPE = {}
_NATIVE_LITTLE = sys.byteorder == "little"
_NUMPY_VALUE = (np.ndarray, np.generic)


def _tensor_like(values):
    """(dtype, shape) when every value is a numpy array/scalar of one supported dtype and one shape, else None."""
    first = values[0]
    if not isinstance(first, _NUMPY_VALUE) or _datatype_of(first.dtype) is None:
        return None
    dtype, shape = first.dtype, first.shape
    for index in range(1, len(values)):
        value = values[index]
        if (not isinstance(value, _NUMPY_VALUE) or value.shape != shape
                or (value.dtype is not dtype and value.dtype != dtype)):
            return None
    return dtype, shape


def _tensor_kind(name, results, ok, n_ok):
    """`_tensor_like` of key `name` when every successful instance has it, else None."""
    if not n_ok:
        return None
    values = []
    for result, good in zip(results, ok):
        if good:
            value = result.get(name, _UNSET)
            if value is _UNSET:
                return None
            values.append(value)
    return _tensor_like(values)


def _wire_bytes(value):
    """The C-order bytes of a numpy array or scalar, little-endian as KServe sends them (no copy of the dtype on
    the common path: building a byte-swapped dtype per call costs more than the bytes themselves)."""
    order = value.dtype.byteorder
    if order == ">" or (order == "=" and not _NATIVE_LITTLE):
        value = value.astype(value.dtype.newbyteorder("<"))
    return value.tobytes()


def _tensor_raw(name, dtype, shape, results, ok):
    """The wire bytes of key `name` stacked over the instances; rows of failed instances are zeros."""
    if len(results) == 1 and ok[0]:
        return _wire_bytes(results[0][name])
    if all(ok):
        return _wire_bytes(np.stack([result[name] for result in results]))
    stacked = np.zeros((len(results), *shape), dtype=dtype)
    for i, result in enumerate(results):
        if ok[i]:
            stacked[i] = result[name]
    return _wire_bytes(stacked)


def _json_column(name, results, ok, outcomes):
    """Each instance's value of key `name` as JSON bytes (`null` where failed or absent). An instance whose value
    cannot be encoded fails (500): its outcome and `ok` entry are replaced."""
    column = []
    for i, result in enumerate(results):
        value = result.get(name, _UNSET) if ok[i] else _UNSET
        if value is _UNSET:
            column.append(_NULL)
            continue
        try:
            column.append(json.dumps(value, default=_json_default).encode("utf-8"))
        except (TypeError, ValueError) as exc:
            outcomes[i] = Outcome(code=INTERNAL, message=f"result {name!r} cannot be sent: {exc}")
            ok[i] = False
            column.append(_NULL)
    return column


def _empty_elements_raw(count):
    """The raw contents of a BYTES tensor of `count` empty elements (or an INT32 tensor of zeros)."""
    return bytes(4 * count)


_STATUS_OUTPUTS = ("code", "message")


def build_response(request, outcomes, request_id):
    """The ModelInferResponse of N outcomes (see the module docstring for the mapping), and the outcomes as
    sent (an instance whose result cannot be encoded has failed with 500)."""
    if len(outcomes) == 1 and not request.outputs:
        response = _tensors_only_response(request, outcomes[0])
        if response is not None:
            return response, outcomes
    return _mapped_response(request, outcomes)


def _tensors_only_response(request, outcome):
    """What `_mapped_response` answers for the commonest call, built without its bookkeeping: one instance, no
    outputs named, a success without body or message whose result values are all tensors. None for any other
    call (which the general mapping then answers)."""
    result = outcome.result
    if outcome.code or outcome.message or outcome.body or type(result) is not dict:
        return None
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=MODEL_VERSION, id=request.id)
    add_output = response.outputs.add
    raws = []
    for name, value in result.items():
        if name in _STATUS_OUTPUTS:
            continue
        datatype = _datatype_of(value.dtype) if isinstance(value, _NUMPY_VALUE) else None
        if datatype is None:
            return None
        add_output(name=name, datatype=datatype, shape=(1, *value.shape))
        raws.append(_wire_bytes(value))
    add_output(name="code", datatype="INT32", shape=(1,))
    add_output(name="message", datatype=BYTES, shape=(1,))
    raws += (_empty_elements_raw(1), _empty_elements_raw(1))
    response.raw_output_contents.extend(raws)
    return response


def _mapped_response(request, outcomes):
    """build_response's general mapping, for any number of instances and outcomes."""
    outcomes = list(outcomes)
    n = len(outcomes)
    ok = [outcome.code == 0 for outcome in outcomes]
    results = [_result_dict(outcome) if good else _NO_RESULT for outcome, good in zip(outcomes, ok)]
    keys = {}  # result keys in first-seen order (a dict keeps insertion order)
    for result in results:
        keys.update(dict.fromkeys(result))
    for reserved in _STATUS_OUTPUTS:
        keys.pop(reserved, None)
    if request.outputs:
        names = [output.name for output in request.outputs]
    else:
        names = [*keys, *(["body"] if any(outcome.body for outcome in outcomes) else []), *_STATUS_OUTPUTS]

    # Tensors are decided first, by the instances that succeeded; JSON encoding may then fail an instance, whose
    # tensor rows become zeros and whose JSON values become null in every key.
    kinds = {}
    n_ok = ok.count(True)
    for name in names:
        if name in _STATUS_OUTPUTS or name in kinds or (name == "body" and name not in keys):
            continue
        kinds[name] = _tensor_kind(name, results, ok, n_ok)
    encoded = {name: _json_column(name, results, ok, outcomes) for name, kind in kinds.items() if kind is None}
    if encoded and not all(ok):
        for i in [i for i in range(n) if not ok[i]]:
            for column in encoded.values():
                column[i] = _NULL

    response = pb.ModelInferResponse(model_name=request.model_name, model_version=MODEL_VERSION, id=request.id)
    add_output = response.outputs.add
    raws = []
    for name in names:
        if name == "code":
            add_output(name=name, datatype="INT32", shape=(n,))
            raws.append(_empty_elements_raw(n) if all(ok) else
                        np.array([outcome.code for outcome in outcomes], dtype="<i4").tobytes())
        elif name == "message":
            add_output(name=name, datatype=BYTES, shape=(n,))
            raws.append(join_bytes_elements([outcome.message.encode("utf-8") for outcome in outcomes])
                        if any(outcome.message for outcome in outcomes) else _empty_elements_raw(n))
        elif name == "body" and name not in keys:
            add_output(name=name, datatype=BYTES, shape=(n,))
            raws.append(join_bytes_elements([outcome.body if ok[i] else b"" for i, outcome in enumerate(outcomes)]))
        elif kinds.get(name) is not None:
            dtype, shape = kinds[name]
            add_output(name=name, datatype=_datatype_of(dtype), shape=(n, *shape))
            raws.append(_tensor_raw(name, dtype, shape, results, ok))
        else:
            add_output(name=name, datatype=BYTES, shape=(n,))
            raws.append(join_bytes_elements(encoded[name]))
    response.raw_output_contents.extend(raws)
    return response, outcomes


# ---- the servicer --------------------------------------------------------------------------------------------

class KServeServicer:
    """`inference.GRPCInferenceService` over the apps of a DataPlane's registry.

    `started()` says whether the server has loaded its apps and is not shutting down (ServerReady needs it).
    """

    def __init__(self, dataplane, started):
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self._started = started

    def _app(self, name, version=""):
        if version not in ("", MODEL_VERSION):
            raise ServingError(NOT_FOUND, f"app {name!r} has no version {version!r}; its one version is "
                                          f"{MODEL_VERSION!r}")
        return self.registry.get(name)

    # ---- health and metadata ---------------------------------------------------------------------------------

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        ready = self._started() and all(app.effective_state == READY for app in self.registry.apps.values())
        return pb.ServerReadyResponse(ready=ready)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="serving", version=serving.__version__, extensions=EXTENSIONS)

    async def ModelReady(self, request, context):
        app = self.registry.apps.get(request.name)
        ready = app is not None and request.version in ("", MODEL_VERSION) and app.effective_state == READY
        return pb.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request, context):
        try:
            app = self._app(request.name, request.version)
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=app.name, versions=[MODEL_VERSION], platform=PLATFORM,
            inputs=[meta(name=name, datatype=BYTES, shape=[-1]) for name in _DATA_KEYS],
            outputs=[meta(name="code", datatype="INT32", shape=[-1]), meta(name="message", datatype=BYTES,
                                                                            shape=[-1])])

    async def ModelConfig(self, request, context):
        try:
            app = self._app(request.name, request.version)
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        config = pb.ModelConfig(
            name=app.name, platform=PLATFORM, backend="python",
            max_batch_size=app.config.batch_size if app.config is not None else 0,
            input=[pb.ModelInput(name=name, data_type=pb.TYPE_STRING) for name in _DATA_KEYS],
            output=[pb.ModelOutput(name="code", data_type=_CONFIG_TYPES["INT32"]),
                    pb.ModelOutput(name="message", data_type=pb.TYPE_STRING)])
        return pb.ModelConfigResponse(config=config)

    # ---- inference -------------------------------------------------------------------------------------------

    async def _infer(self, request, context):
        """The response to one ModelInferRequest; ServingError when the call fails as a whole."""
        request_id = request.id[:MAX_REQUEST_ID_CHARS] or new_request_id()
        self._app(request.model_name, request.model_version)  # NOT_FOUND before any decoding work
        requests = request_to_eval_requests(request)
        outcomes = await self.dataplane.infer(request.model_name, None, requests, request_id,
                                              request_timeout_s(request, context))
        if outcomes[0].code:  # (the cheap test first: call_failure needs a failed first instance)
            failure = call_failure(outcomes)
            if failure is not None:
                raise ServingError(*failure)
        response, outcomes = build_response(request, outcomes, request_id)
        if outcomes[0].code:  # an instance may have failed in encoding its result
            failure = call_failure(outcomes)
            if failure is not None:
                raise ServingError(*failure)
        return response

    async def ModelInfer(self, request, context):
        try:
            return await self._infer(request, context)
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message, request.id or None)
        except Exception:
            # A bug of ours: the traceback goes to the log, never onto the wire.
            log.exception("[%s] ModelInfer failed", request.id)
            return await abort_with(context, INTERNAL, f"internal error (request id {request.id!r})",
                                    request.id or None)

    async def _stream_answer(self, request, context):
        # Error answers echo what the caller sent cut as unary errors are: one must never pass the send limit,
        # which would end the whole stream.
        # Every answer is its request's last (`triton_final_response`, see the module docstring).
        request_id = request.id[:MAX_REQUEST_ID_CHARS]
        try:
            answer = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
        except ServingError as exc:
            answer = pb.ModelStreamInferResponse(
                error_message=cut_details(f"[{exc.code}] {exc.message}"),
                infer_response=pb.ModelInferResponse(model_name=request.model_name[:MAX_DETAILS_CHARS],
                                                     id=request_id))
        except Exception:
            log.exception("[%s] ModelStreamInfer request failed", request_id)
            answer = pb.ModelStreamInferResponse(error_message=f"[{INTERNAL}] internal error",
                                                 infer_response=pb.ModelInferResponse(id=request_id))
        answer.infer_response.parameters[_FINAL_RESPONSE].bool_param = True
        return answer

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request is answered by one response, in the order answers are ready (match them by `id`):
        requests of one stream run concurrently, so they batch with each other. Errors go in error_message
        (prefixed by the serving code) and the stream continues."""
        loop = asyncio.get_running_loop()
        answers = asyncio.Queue()
        end_of_input = object()
        tasks = set()
        asked = 0
        slots = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)  # released once an answer has been sent
        held = _ByteBudget(MAX_STREAM_BYTES)  # the requests' bytes, given back with their answers

        async def answer(request, size):
            answers.put_nowait((size, await self._stream_answer(request, context)))

        async def read():
            nonlocal asked
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    size = request.ByteSize()
                    await held.take(size)
                    asked += 1
                    task = loop.create_task(answer(request, size))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                answers.put_nowait(end_of_input)

        reader = loop.create_task(read())
        answered, reading = 0, True
        try:
            while reading or answered < asked:
                item = await answers.get()
                if item is end_of_input:
                    reading = False
                    continue
                answered += 1
                size, response = item
                yield response
                slots.release()
                held.give(size)
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # ---- statistics ------------------------------------------------------------------------------------------

    async def ModelStatistics(self, request, context):
        try:
            apps = [self._app(request.name, request.version)] if request.name else list(self.registry.apps.values())
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        return pb.ModelStatisticsResponse(model_stats=[_app_statistics(app) for app in apps])

    # ---- repository ------------------------------------------------------------------------------------------

    async def RepositoryIndex(self, request, context):
        try:
            on_disk = self.registry.folders()
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        index = pb.RepositoryIndexResponse.ModelIndex
        models = []
        for name in sorted(set(on_disk) | set(self.registry.apps)):
            app = self.registry.apps.get(name)
            if app is None:
                entry = index(name=name, state="UNAVAILABLE", reason="not loaded")
            else:
                info = app.info()
                entry = index(name=name, version=MODEL_VERSION, state=info["state"], reason=info["reason"])
            if not request.ready or entry.state == READY:
                models.append(entry)
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(self, request, context):
        try:
            _check_repository_control("RepositoryModelLoad")
            if request.parameters:
                raise ServingError(BAD_REQUEST, "RepositoryModelLoad takes no parameters here (got "
                                                f"{', '.join(sorted(request.parameters))}): edit the app folder "
                                                "and load it")
            await self.registry.load_app(request.model_name)
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            _check_repository_control("RepositoryModelUnload")
            # tritonclient always sends `unload_dependents`: apps have no dependents, so it changes nothing.
            await self.registry.unload_app(request.model_name)
        except ServingError as exc:
            return await abort_with(context, exc.code, exc.message)
        return pb.RepositoryModelUnloadResponse()


class _ByteBudget:
    """Bytes one stream's requests in flight may hold: `take` waits until a request fits, though one request
    always fits when none is held (a message the server accepted must not wait forever)."""

    def __init__(self, limit):
        self.limit = limit
        self.held = 0
        self._freed = asyncio.Event()

    async def take(self, size):
        while self.held and self.held + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.held += size

    def give(self, size):
        self.held -= size
        self._freed.set()


def _check_repository_control(method):
    """Loading and unloading apps changes what every caller is served: with tokens, an admin's call only (403
    otherwise). A server without tokens cannot tell callers apart, and leaves it to whoever reaches its port."""
    user = current_user()
    if user is not None and not user.admin:
        raise ServingError(FORBIDDEN, f"{method} needs an admin token: it changes what every caller is served")


def _duration(count, ns):
    return pb.StatisticDuration(count=count, ns=ns)


def _app_statistics(app):
    stats = app.batcher.stats if app.batcher is not None else None
    message = pb.ModelStatistics(name=app.name, version=MODEL_VERSION)
    if stats is None:
        return message
    message.last_inference = stats.last_inference_ms
    message.inference_count = stats.inference_count
    message.execution_count = stats.execution_count
    infer = message.inference_stats
    infer.success.CopyFrom(_duration(stats.success_count, stats.success_ns))
    infer.fail.CopyFrom(_duration(stats.fail_count, stats.fail_ns))
    infer.queue.CopyFrom(_duration(stats.queue_count, stats.queue_ns))
    infer.compute_infer.CopyFrom(_duration(stats.compute_count, stats.compute_ns))
    for size, (count, ns) in sorted(stats.batches.items()):
        message.batch_stats.add(batch_size=size, compute_infer=_duration(count, ns))
    return message


# ---- registration --------------------------------------------------------------------------------------------

_UNARY = {
    "ServerLive": pb.ServerLiveRequest, "ServerReady": pb.ServerReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest, "ModelReady": pb.ModelReadyRequest,
    "ModelMetadata": pb.ModelMetadataRequest, "ModelConfig": pb.ModelConfigRequest,
    "ModelInfer": pb.ModelInferRequest, "ModelStatistics": pb.ModelStatisticsRequest,
    "RepositoryIndex": pb.RepositoryIndexRequest, "RepositoryModelLoad": pb.RepositoryModelLoadRequest,
    "RepositoryModelUnload": pb.RepositoryModelUnloadRequest,
}


# Triton RPCs of extensions not implemented here, answered UNIMPLEMENTED with the reason rather than gRPC's bare
# "Method not found!" (tritonclient calls the shared-memory ones in its examples' set-up and clean-up).
_SHARED_MEMORY_REFUSAL = (f"{_NO_SHARED_MEMORY}: send tensors in raw_input_contents and read outputs from "
                          "raw_output_contents")
_UNSUPPORTED = {
    **{f"{kind}SharedMemory{call}": _SHARED_MEMORY_REFUSAL
       for kind in ("System", "Cuda") for call in ("Status", "Register", "Unregister")},
    "TraceSetting": "trace settings are not supported by this server: it keeps no traces; see its Prometheus "
                    "metrics and its log (a request's id is logged with its failures)",
    "LogSettings": "log settings are not supported by this server: its log level is set when it starts "
                   "(`serving --log-level`)",
}


def _unsupported_handler(message):
    async def refuse(request, context):
        await abort_with(context, NOT_IMPLEMENTED, message)
    # No deserializer: the request is not read (its message types are not in protos/kserve.proto).
    return grpc.unary_unary_rpc_method_handler(refuse)


def add_kserve_servicer_to_server(dataplane, server, started):
    """Serve `inference.GRPCInferenceService` on `server`. The handlers are registered under the published
    service name by hand because the messages live in their own proto package (see protos/kserve.proto)."""
    servicer = KServeServicer(dataplane, started)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name), request_deserializer=message.FromString,
                                                  response_serializer=_serialize)
        for name, message in _UNARY.items()
    }
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
        servicer.ModelStreamInfer, request_deserializer=pb.ModelInferRequest.FromString,
        response_serializer=_serialize)
    for name, message in _UNSUPPORTED.items():
        handlers[name] = _unsupported_handler(message)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(KSERVE_SERVICE, handlers),))
    return servicer


def _serialize(message):
    return message.SerializeToString()
