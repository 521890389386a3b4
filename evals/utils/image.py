"""``load_image(uri, body=None)``: decode one request image into a BGR uint8 H x W x 3 array.

Rules (the old host's, kept):

* With a `body` (bytes, bytearray, memoryview or any buffer; a ``str`` body, the Python 2 habit, is
  encoded latin-1 back to its bytes): over 10 MiB -> ``ErrorImageTooLarge``. An empty body with a `uri`
  falls back to the uri; an empty body without one is undecodable.
* Without a body, `uri` is a local path (``file://`` is stripped): missing or not a regular file ->
  ``ErrorFileNotExist``; over 10 MiB -> ``ErrorImageTooLarge``. A remote uri (``http://``, ``https://``,
  any ``scheme://`` but ``file``) -> ``ErrorRemoteURI`` (400, a subclass of ``ErrorFileNotExist``):
  this function never fetches URLs.
* Which local paths a `uri` may name is the uri policy's decision (``set_uri_policy``). Unconfigured (a
  script or a unit test calling this directly) any path is read. ``serving serve`` always configures it
  from ``--data-root``: a path is read only when its real path (symlinks resolved) lies under one of the
  roots' real paths, else ``ErrorForbiddenURI`` (403) before anything about the file is looked at; with
  no data roots every uri is refused.
* Undecodable (garbage, truncated, empty) -> ``ErrorCV2ImageRead``. A side over 4999 px ->
  ``ErrorImageTooLarge``; a side of 32 px or less -> ``ErrorImageTooSmall``.
* Grayscale, 16-bit and 4-channel images come back as 8-bit BGR with 3 channels (``cv2.IMREAD_COLOR``),
  JPEG EXIF orientation applied.

Pixel dimensions are checked BEFORE decoding for PNG, JPEG, GIF, BMP and WebP, by reading the few header
bytes that hold them, so a 5000 px side (or a decompression bomb) is refused without allocating the image.
Every other format OpenCV reads (TIFF, PNM, ...) is bounded by OpenCV's own pixel limit, which
``cap_decoder_pixels()`` lowers to 4999 x 4999 (`serving` calls it before anything imports OpenCV): such a file
decoding to more pixels is refused by the decoder before it allocates them (``ErrorImageTooLarge``).
Why headers rather than a first ``cv2.IMREAD_REDUCED_GRAYSCALE_8`` decode: reduced decoding is only cheap
for JPEG (libjpeg scales in the DCT); for PNG, WebP and the rest OpenCV decodes at full size and then
resizes, so it would allocate the whole image and double the decoding work. Those decoders allocate exactly
what the header declares, so the header is the authoritative size. Other formats (TIFF, ...) are decoded
and then checked; they are bounded by the 10 MiB body limit and OpenCV's own pixel limit.
"""

import os
import re
import stat

from evals.utils.error import (
    ErrorCV2ImageRead,
    ErrorFileNotExist,
    ErrorForbiddenURI,
    ErrorImageNdim,
    ErrorImageTooLarge,
    ErrorImageTooSmall,
    ErrorRemoteURI,
)

__all__ = ["load_image", "square_bgr", "image_header_size", "set_uri_policy", "uri_roots", "cap_decoder_pixels",
           "MAX_IMAGE_BYTES", "MAX_IMAGE_SIDE", "MIN_IMAGE_SIDE"]

#: Largest encoded image accepted, in bytes.
MAX_IMAGE_BYTES = 10 * 1024 * 1024
#: Largest image side accepted, in pixels.
MAX_IMAGE_SIDE = 4999
#: Sides of this many pixels or fewer are too small.
MIN_IMAGE_SIDE = 32

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic...); not DHT/JPG/DAC.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))

# OpenCV reads its pixel limit from the environment once, when the library loads (default 2**30 pixels: 3 GiB
# for a colour image).
_OPENCV_PIXEL_LIMIT_ENV = "OPENCV_IO_MAX_IMAGE_PIXELS"
_OPENCV_PIXEL_LIMIT_TEXT = "CV_IO_MAX_IMAGE_PIXELS"  # in the message of the decoder's refusal

# The uri policy: None reads any local path (never configured); a tuple of real directory paths reads only
# files under one of them, and the empty tuple refuses every uri. Replaced whole, never mutated, so a reader on
# another thread sees one policy or the other.
_uri_roots = None
# Where the kernel tells which file an open descriptor is (Linux); used to re-check a path after opening it.
_PROC_FD = "/proc/self/fd"


def set_uri_policy(roots):
    """Confine the local files ``load_image`` reads through a `uri` to the directories `roots` (an iterable of
    paths; empty: refuse every uri), or lift the confinement with None. Returns the previous policy.

    Each root must be an existing directory (ValueError otherwise); it is kept as its real path, so a root
    that is a symlink confines to its target.
    """
    global _uri_roots
    previous = _uri_roots
    if roots is None:
        _uri_roots = None
        return previous
    resolved = []
    for root in roots:
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise ValueError(f"data root is not a directory: {root}")
        resolved.append(real)
    _uri_roots = tuple(resolved)
    return previous


def cap_decoder_pixels(limit=MAX_IMAGE_SIDE * MAX_IMAGE_SIDE):
    """Lower OpenCV's decoder pixel limit to `limit` (default a 4999 x 4999 image) for this process and the
    processes it starts, unless the environment already sets one. Effective only before OpenCV is imported:
    returns False (and changes nothing) when it already is."""
    import sys

    if "cv2" in sys.modules:
        return False
    os.environ.setdefault(_OPENCV_PIXEL_LIMIT_ENV, str(int(limit)))
    return True


def over_decoder_pixel_limit(error):
    """True when `error` (a cv2.error) is OpenCV's decoder refusing an image over its pixel limit."""
    return _OPENCV_PIXEL_LIMIT_TEXT in str(error)


def uri_roots():
    """The current uri policy: None (unconfined) or the tuple of real root paths (empty: every uri refused)."""
    return _uri_roots


def load_image(uri, body=None):
    """Decode the image in `body` (or, without one, the local file `uri`) into a BGR uint8 H x W x 3 array.

    Raises the ``evals.utils.error`` errors listed in the module docstring (code 400, or 403 for a uri the
    uri policy refuses).
    """
    name = uri if uri else "body"
    if body is not None and (not _is_empty(body) or not uri):
        data = _body_bytes(body, name)
    else:
        data = _read_local(uri)
    return _decode(data, name)


def as_bgr(image):
    """`image` as an H x W x 3 BGR uint8 array: grey (H x W) and BGRA images are converted, a BGR one is returned
    as it is. Raises ValueError naming the shape or dtype of anything else: a network input must never be
    guessed from a malformed array."""
    import cv2  # imported on first use: `import evals.utils` stays cheap
    import numpy as np

    image = np.asarray(image)
    if image.dtype != np.uint8:  # first: OpenCV's own conversions would fail on it less clearly
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 BGR image, got shape {image.shape}")
    return image


def square_bgr(image, side):
    """`image` as a `side` x `side` BGR uint8 array, the first step of a network's preprocessing.

    Grey (H x W) and BGRA images become BGR (:func:`as_bgr`, which also refuses malformed arrays); the resize uses
    area interpolation when both sides shrink (thin edges are averaged rather than dropped) and linear otherwise.
    """
    import cv2

    image = as_bgr(image)
    height, width = image.shape[:2]
    if (height, width) != (side, side):
        shrinking = height > side and width > side
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return image


def image_header_size(data):
    """``(width, height)`` read from the header of a PNG, JPEG, GIF, BMP or WebP image, else None.

    Reads a few bytes only; None for other formats or a header too short or malformed to tell.
    """
    try:
        if data[:8] == _PNG_SIGNATURE:
            return _png_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _sized(_le(data, 6, 2), _le(data, 8, 2))
        if data[:2] == b"BM":
            return _bmp_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except (IndexError, ValueError):
        return None
    return None


def _is_empty(body):
    try:
        return len(body) == 0
    except TypeError:
        return False


def _body_bytes(body, name):
    if isinstance(body, (bytes, bytearray)):
        data = body
    elif isinstance(body, str):
        if len(body) > MAX_IMAGE_BYTES:
            raise ErrorImageTooLarge(name)
        try:
            data = body.encode("latin-1")
        except UnicodeEncodeError:
            raise ErrorCV2ImageRead(name) from None
    else:
        try:
            view = memoryview(body)
        except TypeError:
            raise ErrorCV2ImageRead(name) from None
        if view.nbytes > MAX_IMAGE_BYTES:
            raise ErrorImageTooLarge(name)
        data = view.tobytes()
    if len(data) > MAX_IMAGE_BYTES:
        raise ErrorImageTooLarge(name)
    return data


def _read_local(uri):
    if not uri or not isinstance(uri, (str, os.PathLike)):
        raise ErrorFileNotExist(uri)
    path = os.fspath(uri)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if "\0" in path:  # no file name holds one; os.path would raise ValueError (a 599, logged as a crash)
        raise ErrorFileNotExist(uri)
    match = _SCHEME.match(path)
    if match:
        if match.group(1).lower() != "file":
            raise ErrorRemoteURI(uri)
        path = path[match.end():]
    roots = _uri_roots
    if roots is not None:
        # Checked before the file is looked at: a refused path gets the same answer whether it exists or not.
        path = os.path.realpath(path)
        if not _is_under(path, roots):
            raise ErrorForbiddenURI(uri)
    if not os.path.isfile(path):
        raise ErrorFileNotExist(uri)
    try:
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise ErrorImageTooLarge(uri)
        with _open_local(path, uri, roots) as file:
            data = file.read(MAX_IMAGE_BYTES + 1)  # bounded even if the file grows meanwhile
    except OSError:
        raise ErrorFileNotExist(uri) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ErrorImageTooLarge(uri)
    return data


def _is_under(real_path, roots):
    return any(real_path == root or real_path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _open_local(path, uri, roots):
    """Open `path` for reading. Confined (`roots` not None), `path` is already resolved and checked; a symlink
    or a directory swapped in since then must not lead outside the roots: the last component is opened without
    following symlinks, and the file actually opened is checked again where the kernel can tell (Linux)."""
    if roots is None:
        return open(path, "rb")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ErrorFileNotExist(uri)
        if os.path.isdir(_PROC_FD) and not _is_under(os.readlink(f"{_PROC_FD}/{fd}"), roots):
            raise ErrorForbiddenURI(uri)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_sides(width, height, name):
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ErrorImageTooLarge(name)
    if width <= MIN_IMAGE_SIDE or height <= MIN_IMAGE_SIDE:
        raise ErrorImageTooSmall(name)


def _decode(data, name):
    if len(data) == 0:
        raise ErrorCV2ImageRead(name)
    size = image_header_size(data)
    if size is not None:
        _check_sides(size[0], size[1], name)

    import cv2  # imported on first use: `import evals.utils` stays cheap
    import numpy as np

    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        if over_decoder_pixel_limit(exc):
            raise ErrorImageTooLarge(name) from None
        image = None
    if image is None or image.size == 0:
        raise ErrorCV2ImageRead(name)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ErrorImageNdim(name)
    height, width = image.shape[:2]
    _check_sides(width, height, name)
    return image


# --- image headers ---------------------------------------------------------------------------------


def _be(data, offset, length):
    chunk = data[offset:offset + length]
    if len(chunk) != length:
        raise ValueError("short header")
    return int.from_bytes(chunk, "big")


def _le(data, offset, length, signed=False):
    chunk = data[offset:offset + length]
    if len(chunk) != length:
        raise ValueError("short header")
    return int.from_bytes(chunk, "little", signed=signed)


def _sized(width, height):
    return (width, height) if width > 0 and height > 0 else None


def _png_size(data):
    # Signature (8), then the IHDR chunk: length (4), b"IHDR" (4), width (4), height (4).
    if data[12:16] != b"IHDR":
        return None
    return _sized(_be(data, 16, 4), _be(data, 20, 4))


def _jpeg_size(data):
    # Walk the marker segments from SOI to the first start-of-frame, which holds the frame size:
    # FF Cn, length (2), precision (1), height (2), width (2). Stop at start-of-scan or end-of-image.
    end = len(data)
    i = 2
    while i < end:
        if data[i] != 0xFF:
            return None  # lost sync: let the decoder judge
        while i < end and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= end:
            return None
        marker = data[i]
        i += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS before any frame header
            return None
        length = _be(data, i, 2)
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            return _sized(_be(data, i + 5, 2), _be(data, i + 3, 2))
        i += length
    return None


def _bmp_size(data):
    dib_size = _le(data, 14, 4)
    if dib_size == 12:  # BITMAPCOREHEADER: 16-bit sizes
        return _sized(_le(data, 18, 2), _le(data, 20, 2))
    # BITMAPINFOHEADER and later: signed 32-bit; a negative height means top-down rows.
    return _sized(abs(_le(data, 18, 4, signed=True)), abs(_le(data, 22, 4, signed=True)))


def _webp_size(data):
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: frame tag (3), start code 9D 01 2A, 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        return _sized(_le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF)
    if chunk == b"VP8L":  # lossless: signature 0x2F, then 14-bit width-1 and height-1
        if data[20] != 0x2F:
            return None
        bits = _le(data, 21, 4)
        return _sized((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X":  # extended: flags (4), 24-bit canvas width-1 and height-1
        return _sized(_le(data, 24, 3) + 1, _le(data, 27, 3) + 1)
    return None
