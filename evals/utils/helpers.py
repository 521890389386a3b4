"""Config and file helpers that old eval scripts call (all exported by ``from evals.utils import *``)."""

import csv
import json
import os
import re

from evals.utils.error import ErrorBase, ErrorConfig, ErrorFileNotExist

__all__ = [
    "value_check",
    "file_check",
    "_make_synset",
    "make_synset",
    "_make_tag",
    "parse_crop_size",
    "infer_input_unmarshal",
    "infer_output_marshal",
    "parse_params_file",
]

_CROP_SIZE = re.compile(r"^\s*([0-9]+)\s*(?:[xX]\s*([0-9]+)\s*)?$")


def value_check(configs, key, must=True, default=None):
    """``configs[key]``; when it is missing or None: `default` if not `must`, else ``ErrorConfig(key)``."""
    if configs is None or key not in configs or configs[key] is None:
        if not must:
            return default
        raise ErrorConfig(key)
    return configs[key]


def file_check(configs, key, must=True):
    """The path ``configs[key]``, checked to be an existing regular file.

    Missing key (or None): ``ErrorConfig(key)`` when `must`, else None. Not a file: ``ErrorFileNotExist(path)``.
    """
    target = None if configs is None or key not in configs else configs[key]
    if target is None:
        if must:
            raise ErrorConfig(key)
        return None
    if not isinstance(target, (str, bytes, os.PathLike)) or not os.path.isfile(target):
        raise ErrorFileNotExist(target)
    return target


def _make_synset(path_csv):
    """The rows of a label CSV (``<index>,"<name>"`` per line) as lists of str: ``[["0", "cat"], ...]``."""
    with open(path_csv, newline="", encoding="utf-8") as file:
        return [row for row in csv.reader(file)]


#: The same function under the name some scripts use.
make_synset = _make_synset


def _make_tag(path_tag):
    """The JSON document in `path_tag` (a tag list or dict)."""
    with open(path_tag, encoding="utf-8") as file:
        return json.load(file)


def parse_crop_size(configs, model_params=None, custom_values=None, default_image_width=0,
                    default_image_height=0):
    """The network input size as ``(width, height)`` ints.

    ``model_params["cropSize"]`` (`model_params` defaults to ``configs["model_params"]``) is ``"N"`` ->
    ``(N, N)`` or ``"WxH"`` -> ``(W, H)``; anything else -> ``ErrorConfig("cropSize")``. Without a cropSize
    the size comes, as in the old host, from ``configs["image_width"/"image_height"]``, then from
    `custom_values` (default ``configs["custom_values"]``, then ``configs["custom_params"]``), then from
    `default_image_width` / `default_image_height`; a height still 0 takes the width.
    """
    if configs is None:
        configs = {}
    if model_params is None:
        model_params = value_check(configs, "model_params", False, {})
    if custom_values is None:
        custom_values = value_check(configs, "custom_values", False, None)
        if custom_values is None:
            custom_values = value_check(configs, "custom_params", False, {})

    crop_size = value_check(model_params, "cropSize", False, "")
    if isinstance(crop_size, bool):
        raise ErrorConfig("cropSize")
    if isinstance(crop_size, int):
        crop_size = str(crop_size)
    if not isinstance(crop_size, str):
        raise ErrorConfig("cropSize")
    if crop_size.strip():
        match = _CROP_SIZE.match(crop_size)
        if match is None:
            raise ErrorConfig("cropSize")
        width = int(match.group(1))
        height = int(match.group(2)) if match.group(2) is not None else width
        if width <= 0 or height <= 0:
            raise ErrorConfig("cropSize")
        return width, height

    width = _first_size(configs, custom_values, "image_width", default_image_width)
    height = _first_size(configs, custom_values, "image_height", default_image_height)
    if height == 0:
        height = width
    return width, height


def _first_size(configs, custom_values, key, default):
    for source in (configs, custom_values or {}):
        value = value_check(source, key, False, 0)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise ErrorConfig(key) from None
        if value != 0:
            return value
    return int(default)


def infer_input_unmarshal(model, args):
    """Old host helper: ``(model["net"], reqid, reqs)`` from a JSON string ``{"reqid", "reqs"}``."""
    decoded = json.loads(args)
    return model["net"], decoded["reqid"], decoded["reqs"]


def infer_output_marshal(ret, headers=None):
    """``json.dumps({"results": ret})``, with ``"headers"`` added when given (an object's ``marshal()``
    result, or the value itself)."""
    output = {"results": ret}
    if headers is not None:
        marshal = getattr(headers, "marshal", None)
        output["headers"] = marshal() if callable(marshal) else headers
    return json.dumps(output)


def parse_params_file(params_file_name):
    """Split an MXNet checkpoint file name ``<prefix>-<epoch>.params`` into ``(prefix, epoch)``.

    ``"/m/resnet-50-0012.params"`` -> ``("/m/resnet-50", 12)``, ready for
    ``mx.model.load_checkpoint(prefix, epoch)``; this is what the old helper did and what scripts call it for.
    Any other name -> ``ErrorBase(400, "invalid params file name ...")``.
    """
    name = os.fspath(params_file_name)
    prefix, dash, epoch = name[:-len(".params")].rpartition("-") if name.endswith(".params") else ("", "", "")
    if not dash or not prefix or not (epoch.isascii() and epoch.isdigit()):
        raise ErrorBase(400, f"invalid params file name {name}, expected <prefix>-<epoch>.params")
    return prefix, int(epoch)
