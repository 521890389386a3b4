"""Error classes that eval scripts raise (``from evals.utils.error import *``).

Each error carries ``.code`` (an int) and ``.message`` (a str), and ``str(error) == error.message``. The
decorators in :mod:`evals.utils.handlers` turn an ``ErrorBase`` escaping a handler into ``(..., code,
message)``. Codes: 4xx the request or the image is wrong; 5xx inference failed; 57x retryable; 599 an
unexpected exception. The messages are part of the compatibility surface: clients of the old host match on
them, so keep them as they are.
"""

__all__ = [
    "ErrorBase",
    "ErrorConfig",
    "ErrorFileNotExist",
    "ErrorRemoteURI",
    "ErrorForbiddenURI",
    "ErrorCV2ImageRead",
    "ErrorImageTooSmall",
    "ErrorImageNdim",
    "ErrorImageTooLarge",
    "ErrorInvalidPTS",
    "ErrorOutOfBatchSize",
    "ErrorTransformImage",
    "ErrorNoPTS",
    "ErrorForwardInference",
]


def _rebuild(cls, code, message, state):
    """Unpickle an error without calling a subclass ``__init__`` whose arguments differ from the base's."""
    error = cls.__new__(cls)
    ErrorBase.__init__(error, code, message)
    error.__dict__.update(state)
    return error


class ErrorBase(Exception):
    """Base eval error: ``code`` (599 unless given) and ``message``."""

    def __init__(self, code=599, msg="Unknown Error"):
        super().__init__(msg)
        self.code = code
        self.message = msg

    def __str__(self):
        return str(self.message)

    def __repr__(self):
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self):
        # Subclasses take different constructor arguments; rebuild from code/message/attributes instead
        # (so errors survive pickling, e.g. across a process pool).
        return _rebuild, (type(self), self.code, self.message, dict(self.__dict__))


class ErrorConfig(ErrorBase):
    """A required config value is missing."""

    def __init__(self, value):
        self.value = value
        super().__init__(400, f"no {value} config set")


class ErrorFileNotExist(ErrorBase):
    """A file named by the config or the request does not exist."""

    def __init__(self, name):
        self.name = name
        super().__init__(400, f"file not exist: {name}")


class ErrorRemoteURI(ErrorFileNotExist):
    """An image uri names a remote resource (``http://...``): ``load_image`` never fetches URLs.

    A subclass of ``ErrorFileNotExist`` so that scripts catching that still catch this; its message says
    what to do instead.
    """

    def __init__(self, uri):
        super().__init__(uri)
        self.message = f"remote uri not fetched, send the image bytes as body: {uri}"
        self.args = (self.message,)


class ErrorForbiddenURI(ErrorBase):
    """An image uri names a local path outside the server's data roots (``serving serve --data-root``), or the
    server has none: the file is not read (403).

    Deliberately not an ``ErrorFileNotExist``: a script catching that must not turn this refusal into a 400.
    The message is the same whether or not the path exists, so a caller cannot probe the file system.
    """

    def __init__(self, uri):
        self.uri = uri
        super().__init__(403, f"uri not allowed: {uri}")


class ErrorCV2ImageRead(ErrorBase):
    """OpenCV could not decode the image (empty, truncated, not an image)."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"cv2 load {image} failed")


class ErrorImageTooSmall(ErrorBase):
    """An image side is 32 px or less."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"image {image} is too small, should be more than 32x32")


class ErrorImageNdim(ErrorBase):
    """The image array does not have 3 dimensions."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"image {image} with invalid ndim, should be 3")


class ErrorImageTooLarge(ErrorBase):
    """An image side is over 4999 px, or the encoded image is over 10 MiB."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"image {image} is too large, should be in 4999x4999, less than 10MB")


class ErrorInvalidPTS(ErrorBase):
    """Invalid points: expected ``[[xl, yt], [xr, yt], [xr, yb], [xl, yb], ...]``."""

    def __init__(self, pts):
        self.pts = pts
        super().__init__(400, f"invalid pts {pts}")


class ErrorOutOfBatchSize(ErrorBase):
    """``net_inference`` was given more requests than the network's batch size."""

    def __init__(self, batch_size):
        self.batch_size = batch_size
        super().__init__(400, f"eval request out of batch_size {batch_size}")


class ErrorTransformImage(ErrorBase):
    """Turning the image into the network's input failed."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"fail to transform image {image}")


class ErrorNoPTS(ErrorBase):
    """The request carries no points where the eval needs them."""

    def __init__(self, image):
        self.image = image
        super().__init__(400, f"no pts provided for image {image}")


class ErrorForwardInference(ErrorBase):
    """The forward pass failed (500, not retryable)."""

    def __init__(self):
        super().__init__(500, "forward inference failed")
