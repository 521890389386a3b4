"""Reading the request an eval handler receives.

``request_images(request, batch_size)`` is the first step of most ``net_preprocess`` and ``net_inference``
functions: the image dicts of a request, single or multi-image, checked::

    items, multi = request_images(request, model["batch_size"])
    for item in items:
        image = load_image(item.get("uri"), item.get("body"))
"""

from evals.utils.error import ErrorBase, ErrorOutOfBatchSize

__all__ = ["request_images", "RequestData", "with_data_keys"]

BAD_REQUEST = 400

#: The keys of an image's data that every request has, as the old host always filled them.
DATA_KEYS = ("uri", "body", "attribute")


class RequestData(dict):
    """One image's ``data`` of a request: a dict in which ``uri``, ``body`` and ``attribute`` read as None when the
    caller did not send them.

    Eval scripts written for the old host index them directly (``load_image(req["data"]["uri"],
    body=req["data"]["body"])``): the interface they were written against gives every request all three. They
    are not added as keys, so ``in``, iteration, ``len``, equality and JSON see only what was sent; any other
    missing key is still a KeyError.
    """

    __slots__ = ()

    def __missing__(self, key):
        if key in DATA_KEYS:
            return None
        raise KeyError(key)


def with_data_keys(request):
    """Make `request`'s ``data`` (a dict, or a list of dicts for a multi-image request) :class:`RequestData`, in
    place; returns `request`. Anything that is not such a request is left as it is."""
    if not isinstance(request, dict):
        return request
    data = request.get("data")
    if isinstance(data, dict):
        if not isinstance(data, RequestData):
            request["data"] = RequestData(data)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            if isinstance(item, dict) and not isinstance(item, RequestData):
                data[i] = RequestData(item)
    return request


def request_images(request, batch_size=None):
    """``(items, multi)``: the request's image dicts as a list, and whether it is a multi-image request
    (``data`` a list of dicts) rather than a single-image one (``data`` a dict).

    Raises a 400 ``ErrorBase`` for a request without data, an empty list or a list holding something other than
    dicts, and ``ErrorOutOfBatchSize`` when ``batch_size`` is given and the request holds more images: a
    multi-image request must fit in one ``net_inference`` call.
    """
    data = request.get("data") if isinstance(request, dict) else None
    if isinstance(data, list):
        if not data:
            raise ErrorBase(BAD_REQUEST, "multi-image request holds no images")
        if not all(isinstance(item, dict) for item in data):
            raise ErrorBase(BAD_REQUEST, "every image of a multi-image request must be a dict")
        items, multi = data, True
    elif isinstance(data, dict):
        items, multi = [data], False
    else:
        raise ErrorBase(BAD_REQUEST, "request has no data")
    if batch_size is not None and len(items) > batch_size:
        raise ErrorOutOfBatchSize(batch_size)
    return items, multi
