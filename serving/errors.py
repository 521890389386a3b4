"""The error vocabulary of the runtime, and its one mapping to gRPC status.

Codes are the eval contract's integers: 0 OK (200 accepted as OK from evals); 4xx the request or image is
wrong; 5xx inference failed; 57x retryable; 599 an exception escaped a handler. Every transport maps codes to
gRPC status through `grpc_status_for` and carries the numeric code in trailing metadata `CODE_METADATA_KEY`.
"""
import grpc

OK = 0

BAD_REQUEST = 400
UNAUTHENTICATED = 401
FORBIDDEN = 403
NOT_FOUND = 404
REQUEST_TIMEOUT = 408
PAYLOAD_TOO_LARGE = 413
TOO_MANY_REQUESTS = 429
INTERNAL = 500
NOT_IMPLEMENTED = 501
UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504
RETRYABLE = 570
CLIENT_CLOSED = 499
EXCEPTION = 599

CODE_METADATA_KEY = "serving-code"
REQUEST_ID_METADATA_KEY = "x-request-id"

#: Status details longer than this are cut: gRPC carries them in a header, and a client refuses a call whose
#: headers pass its limit (16 KiB by default) with RESOURCE_EXHAUSTED instead of the status sent. Messages
#: quote what the caller sent (a model name, a request id), so their length is the caller's to choose.
MAX_DETAILS_CHARS = 1000
#: Request ids echoed in trailing metadata are cut to this many characters (the length that is logged).
MAX_REQUEST_ID_CHARS = 128

_EXACT_STATUS = {
    BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    REQUEST_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    TOO_MANY_REQUESTS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NOT_IMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    GATEWAY_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def is_ok(code):
    """Evals report success as 0 or 200."""
    return code in (0, 200)


def is_retryable(code):
    """57x are retryable by the eval contract; 429 (queue full) and 503 (app unavailable) are too."""
    return 570 <= code <= 579 or code in (TOO_MANY_REQUESTS, UNAVAILABLE)


def grpc_status_for(code):
    """The gRPC status of a serving code: the one table every transport uses."""
    if is_ok(code):
        return grpc.StatusCode.OK
    if code in _EXACT_STATUS:
        return _EXACT_STATUS[code]
    if 570 <= code <= 579:
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= code <= 499:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


#: How gRPC words a call refused by the server's `maximum_concurrent_rpcs` (serve --max-concurrent-rpcs).
CONCURRENCY_LIMIT_DETAILS = "Concurrent RPC limit exceeded"


def code_for_grpc_status(status, details=""):
    """The serving code a client reports for a gRPC status that carried no serving code: an error of the
    transport, not of the runtime (which always sends its code). RESOURCE_EXHAUSTED without a code is gRPC's own
    message-size limit, hence 413, or its limit on concurrent calls (told by `details`), hence 429 like a full
    queue; the runtime's full queue arrives with 429 in metadata. CANCELLED is 503, retryable: serving's clients
    never cancel a call of their own accord (a cancelled asyncio caller gets CancelledError, not a status), so it
    means the server's side ended the call, as gRPC's shutdown does to a call that crosses its GOAWAY
    (grpc/grpc#24237) or an overwhelmed server to calls past what it can take."""
    if status == grpc.StatusCode.RESOURCE_EXHAUSTED and (details or "").startswith(CONCURRENCY_LIMIT_DETAILS):
        return TOO_MANY_REQUESTS
    return {
        grpc.StatusCode.INVALID_ARGUMENT: BAD_REQUEST,
        grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED: FORBIDDEN,
        grpc.StatusCode.NOT_FOUND: NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED: GATEWAY_TIMEOUT,
        grpc.StatusCode.RESOURCE_EXHAUSTED: PAYLOAD_TOO_LARGE,
        grpc.StatusCode.UNIMPLEMENTED: NOT_IMPLEMENTED,
        grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
        grpc.StatusCode.CANCELLED: UNAVAILABLE,
    }.get(status, INTERNAL)


class ServingError(Exception):
    """A failure with a serving code, raised anywhere in the runtime and turned into a status in one place."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = int(code)
        self.message = str(message)

    def __repr__(self):
        return f"ServingError({self.code}, {self.message!r})"


def metadata_text(text, limit):
    """`text` as a gRPC metadata value, which must be printable ASCII: other characters escaped (messages may
    quote Chinese names; ids come from callers), a newline as a space, at most `limit` characters."""
    escaped = text.replace("\n", " ").encode("ascii", "backslashreplace").decode("ascii")
    if not escaped.isprintable():  # ASCII control characters: escaped too
        escaped = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in escaped)
    return escaped[:limit]


def cut_details(message):
    """`message` cut to MAX_DETAILS_CHARS (with its full length said), as every error text sent is."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return f"{message[:MAX_DETAILS_CHARS]}... ({len(message)} characters)"


async def abort_with(context, code, message, request_id=None):
    """End a grpc.aio call with the status of `code`, `message` as details, the code (and the request id) in
    trailing metadata. This is the one place where serving codes become gRPC status."""
    trailing = [(CODE_METADATA_KEY, str(code))]
    if request_id:
        trailing.append((REQUEST_ID_METADATA_KEY, metadata_text(request_id, MAX_REQUEST_ID_CHARS)))
    context.set_trailing_metadata(tuple(trailing))
    await context.abort(grpc_status_for(code), cut_details(message))
