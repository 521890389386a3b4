"""Reading the request an eval handler receives.

``request_images(request, batch_size)`` is the first step of most ``net_preprocess`` and ``net_inference``
functions: the image dicts of a request, single or multi-image, checked::

    items, multi = request_images(request, model["batch_size"])
    for item in items:
        image = load_image(item.get("uri"), item.get("body"))
"""

from evals.utils.error import ErrorBase, ErrorOutOfBatchSize

__all__ = ["request_images"]

BAD_REQUEST = 400


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
