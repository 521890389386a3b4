"""Merge and split of batches: pure functions, testable without an event loop or a server.

A batch is a list of eval requests handed to `net_inference` in one call. `take_batch` forms it from the
waiting queue; `split_outcomes` turns what `net_inference` returned into one `Outcome` per request.
"""
import dataclasses

from serving.errors import EXCEPTION, INTERNAL, is_ok


@dataclasses.dataclass(slots=True)
class Outcome:
    """What one request of a batch ended with: code 0 and a result, or a failure code and message.

    `whole_batch` marks a failure that is not the request's own: net_inference failed for the whole batch (a batch
    code, an exception, rets that do not match the requests) or the app shut down before running it. A call of
    several instances fails as a whole only when each of its instances failed that way.
    """

    code: int = 0
    message: str = ""
    result: object = None
    body: bytes = b""
    header: object = None
    whole_batch: bool = False

    @property
    def ok(self):
        return self.code == 0


def count_images(request):
    """Images in an eval request: a multi-image request (data is a list) counts each of its images."""
    data = request.get("data")
    return len(data) if isinstance(data, list) else 1


def take_batch(waiting, batch_size):
    """Pop requests from the front of `waiting` (a deque of items with `.n_images`) while the batch holds at
    most `batch_size` images; keeps the queue's order. Returns (items, images)."""
    batch, images = [], 0
    while waiting and images + waiting[0].n_images <= batch_size:
        item = waiting.popleft()
        batch.append(item)
        images += item.n_images
    return batch, images


def fail_all(n, code, message):
    """`n` outcomes of a batch that failed as a whole."""
    return [Outcome(code=code, message=message, whole_batch=True) for _ in range(n)]


_INT32 = range(-2**31, 2**31)


def _bad_code(code):
    """Why a code an eval returned cannot be used (None when it can): the wire carries codes as int32."""
    if isinstance(code, bool) or not isinstance(code, int):
        return f"a non-integer code {code!r}"
    if code not in _INT32:
        return f"code {code}, outside the 32-bit range codes travel in"
    return None


def _text(message):
    """An eval's message as text every transport can carry: what UTF-8 cannot encode (a lone surrogate, as
    os.fsdecode makes of an undecodable file name) escaped."""
    text = str(message)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _ret_outcome(index, ret):
    if not isinstance(ret, dict):
        return Outcome(code=INTERNAL, message=f"net_inference ret {index} is a {type(ret).__name__}, not a dict")
    code = ret.get("code", 0)
    if code is None:
        code = 0
    problem = _bad_code(code)
    if problem:
        return Outcome(code=INTERNAL, message=f"net_inference ret {index} has {problem}")
    message = _text(ret.get("message") or "")
    if not is_ok(code):
        return Outcome(code=code, message=message or f"eval failed with code {code}")
    body = ret.get("body") or b""
    if isinstance(body, str):
        body = body.encode("utf-8", "backslashreplace")
    return Outcome(code=0, message=message, result=ret.get("result"), body=bytes(body), header=ret.get("header"))


def split_outcomes(output, n_requests):
    """One Outcome per request from net_inference's `(rets, code, message)`.

    A code other than 0/200 with a non-empty message fails every request of the batch with that code;
    otherwise each ret's own code counts. Rets that do not match the requests one to one fail the batch (500).
    """
    if not isinstance(output, (tuple, list)) or len(output) != 3:
        return fail_all(n_requests, INTERNAL,
                        f"net_inference must return (rets, code, message), got {type(output).__name__}")
    rets, code, message = output
    problem = _bad_code(code)
    if problem:
        return fail_all(n_requests, INTERNAL, f"net_inference returned {problem}")
    if not is_ok(code) and message:
        return fail_all(n_requests, code, _text(message))
    if not isinstance(rets, (list, tuple)) or len(rets) != n_requests:
        got = f"{len(rets)} rets" if isinstance(rets, (list, tuple)) else f"rets of type {type(rets).__name__}"
        return fail_all(n_requests, INTERNAL, f"net_inference returned {got} for {n_requests} requests")
    return [_ret_outcome(i, ret) for i, ret in enumerate(rets)]


def preprocess_failure(output):
    """None when net_preprocess's `(request, code, message)` succeeded, else the Outcome its request fails with."""
    if not isinstance(output, (tuple, list)) or len(output) != 3:
        return Outcome(code=INTERNAL,
                       message=f"net_preprocess must return (request, code, message), got {type(output).__name__}")
    request, code, message = output
    problem = _bad_code(code) if code is not None else None
    if problem:
        return Outcome(code=INTERNAL, message=f"net_preprocess returned {problem}")
    if code is not None and not is_ok(code):
        return Outcome(code=code, message=_text(message or "") or f"net_preprocess failed with code {code}")
    if not isinstance(request, dict):
        return Outcome(code=INTERNAL, message=f"net_preprocess returned a {type(request).__name__}, not a request dict")
    return None


def call_failure(outcomes):
    """The (code, message) a call fails with as a whole, or None. A call is one caller's requests (KServe: the N
    instances of one ModelInferRequest). It fails as a whole when it is one request that failed, or when every
    request failed because its batch failed (Outcome.whole_batch); requests that each failed on their own, even
    all alike, leave it successful, with each request's code telling."""
    first = outcomes[0]
    if first.ok:
        return None
    if len(outcomes) == 1 or all(o.whole_batch for o in outcomes):
        return first.code, first.message
    return None


def exception_outcomes(n_requests, exc):
    """Every request of a batch fails with 599 and the exception's text when net_inference raised."""
    return fail_all(n_requests, EXCEPTION, _exception_text(exc))


def exception_outcome(exc):
    """The 599 outcome of one request whose own handler (net_preprocess) raised."""
    return Outcome(code=EXCEPTION, message=_exception_text(exc))


def _exception_text(exc):
    return _text(str(exc) or type(exc).__name__)
