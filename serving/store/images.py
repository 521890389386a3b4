"""Checking that bytes are an image before the store accepts them as one."""
from serving.errors import BAD_REQUEST
from serving.store.errors import StoreError

# (magic prefix, format name, content type). WEBP is checked apart: its magic is split around a length field.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpeg", "image/jpeg"),
    (b"BM", "bmp", "image/bmp"),
    (b"II*\x00", "tiff", "image/tiff"),
    (b"MM\x00*", "tiff", "image/tiff"),
)


def sniff_format(data):
    """(format, content type) from the first bytes of `data`, or (None, None) when no known header matches."""
    head = bytes(data[:16])
    for magic, name, content_type in _SIGNATURES:
        if head.startswith(magic):
            return name, content_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp", "image/webp"
    return None, None


def inspect_image(data, where="image"):
    """Decode `data` with OpenCV and describe it: {"format", "content_type", "width", "height", "channels"}.

    StoreError 400 when the bytes are empty or do not decode, or break a limit of the apps' image loader
    (evals.utils.image.load_image): over MAX_IMAGE_BYTES, a side over MAX_IMAGE_SIDE or of MIN_IMAGE_SIDE px
    or less. Sizes are read from the header before decoding where the format allows, as load_image does. The
    limits are load_image's own constants, so the store never holds an "image" that the apps could not read back.
    """
    import cv2  # imported here: the store's other users (listing, JSON documents) do not need OpenCV loaded
    import numpy as np

    from evals.utils.image import (MAX_IMAGE_BYTES, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, image_header_size,
                                   over_decoder_pixel_limit)

    if not data:
        raise StoreError(BAD_REQUEST, f"{where}: empty, not an image")
    if len(data) > MAX_IMAGE_BYTES:
        raise StoreError(BAD_REQUEST, f"{where}: {len(data)} bytes, over the {MAX_IMAGE_BYTES} bytes "
                                      f"({MAX_IMAGE_BYTES / 2**20:g} MiB) the apps read")
    too_large = StoreError(BAD_REQUEST, f"{where}: a side is over {MAX_IMAGE_SIDE} px")

    def check_sides(width, height):
        if max(width, height) > MAX_IMAGE_SIDE:
            raise too_large
        if min(width, height) <= MIN_IMAGE_SIDE:
            raise StoreError(BAD_REQUEST, f"{where}: {width}x{height} px, too small: the apps need both sides "
                                          f"over {MIN_IMAGE_SIDE} px")

    size = image_header_size(data)
    if size is not None:
        check_sides(*size)
    image_format, content_type = sniff_format(data)
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV's pixel limit (evals.utils.image.cap_decoder_pixels), or a decoder's refusal
        if over_decoder_pixel_limit(exc):
            raise too_large from None
        array = None
    if array is None or array.size == 0:
        hint = f" (its header says {image_format})" if image_format else ""
        raise StoreError(BAD_REQUEST, f"{where}: not a decodable image{hint}")
    height, width = array.shape[:2]
    check_sides(width, height)
    channels = 1 if array.ndim == 2 else int(array.shape[2])
    return {"format": image_format or "other", "content_type": content_type or "application/octet-stream",
            "width": int(width), "height": int(height), "channels": channels}
