"""The per-app batch loop.

Requests wait in a bounded queue (counted in images). The loop blocks for the first waiting request, then takes
more until the batch holds `batch_size` images or the app's window, counted from that first request, has
passed. It does not wait when no other request is on its way (none waiting, none in preprocessing): batching
then costs no latency. Requests whose caller cancelled or whose deadline passed are dropped before
`net_inference`. One call of `run_batch` at a time, on the app's single inference thread.

While net_inference is busy, the batches that follow are chained on the inference thread: as one call returns,
the thread takes what waited meanwhile (up to `batch_size` images, skipping requests already answered) and runs
it at once, and the event loop answers the finished batch's callers beside it. Handing each batch back to the
event loop would leave net_inference idle until the loop's turn and the GIL came round (about 1 ms per batch
under load, measured: a third of the thread's time). The window applies when the thread is idle.
"""
import asyncio
import collections
import logging
import threading
import time
import weakref

from serving import batching, metrics
from serving.deadlines import Deadlines
from serving.errors import BAD_REQUEST, GATEWAY_TIMEOUT, TOO_MANY_REQUESTS, UNAVAILABLE, ServingError

log = logging.getLogger("serving.batcher")


class _Item:
    """One eval request on its way through the batcher."""

    __slots__ = ("request", "n_images", "future", "deadline", "reqid", "queued_at", "ran")

    def __init__(self, request, n_images, future, deadline, reqid):
        self.request = request
        self.n_images = n_images
        self.future = future
        self.deadline = deadline
        self.reqid = reqid
        self.queued_at = 0.0
        self.ran = None  # (started, finished) of the net_inference call that ran it (loop time)


# What an eval's code may raise that fails its requests (599) rather than the server: sys.exit() in an eval is
# the eval's bug, and left alone it would leave the event loop and end the process with every app in it.
_EVAL_FAILURES = (Exception, SystemExit)

_DEADLINE_PASSED = batching.Outcome(code=GATEWAY_TIMEOUT, message="deadline passed before inference")


class BatcherStats:
    """Running totals of one app's batcher, for KServe ModelStatistics, in Triton's meaning of each field.

    Per call (Triton's "inference request": one ModelInferRequest of N instances, one native Infer call): a
    success or a failure (`batching.call_failure`'s rule, or its deadline passing) with its time from admission
    to its answer; the time it waited in the queue before its first instance ran (`queue`) and the time of the
    net_inference calls that ran its instances (`compute`), once it reached net_inference. Per net_inference
    call that did not fail as a whole (Triton's "execution"): `execution_count`, `batches` by images in it,
    and its successful images in `inference_count`. Calls refused at admission (queue full, stuck app) and calls
    whose caller went away are not counted.
    """

    __slots__ = ("success_count", "success_ns", "fail_count", "fail_ns", "queue_count", "queue_ns",
                 "compute_count", "compute_ns", "inference_count", "execution_count", "last_inference_ms",
                 "batches")

    def __init__(self):
        self.success_count = self.success_ns = 0
        self.fail_count = self.fail_ns = 0
        self.queue_count = self.queue_ns = 0        # requests that reached net_inference, time they waited
        self.compute_count = self.compute_ns = 0    # the same requests, time net_inference ran for them
        self.inference_count = 0                    # images run through net_inference
        self.execution_count = 0                    # net_inference calls
        self.last_inference_ms = 0                  # wall-clock ms since the epoch of the last call's end
        self.batches = {}                           # images per call -> [calls, total ns]

    def record_batch(self, batch, outcomes, started, finished):
        """One net_inference call over `batch` with these outcomes, from `started` to `finished` (loop time)."""
        for item in batch:
            item.ran = (started, finished)
        self.last_inference_ms = int(time.time() * 1000)
        if all(outcome.whole_batch for outcome in outcomes):
            return  # the execution failed: Triton counts successful ones
        compute_ns = int((finished - started) * 1e9)
        self.execution_count += 1
        self.inference_count += sum(item.n_images for item, outcome in zip(batch, outcomes) if outcome.ok)
        per_size = self.batches.setdefault(sum(item.n_images for item in batch), [0, 0])
        per_size[0] += 1
        per_size[1] += compute_ns

    def record_call(self, items, failed, admitted, answered):
        """One call of `items`, admitted and answered at these loop times; `failed`: it failed as a whole."""
        duration_ns = int((answered - admitted) * 1e9)
        if failed:
            self.fail_count += 1
            self.fail_ns += duration_ns
        else:
            self.success_count += 1
            self.success_ns += duration_ns
        if len(items) == 1:  # most calls: no lists, no sets (this runs once per call on the event loop)
            ran = items[0].ran
            if ran is None:
                return
            queued, computed = ran[0] - items[0].queued_at, ran[1] - ran[0]
        else:
            ran = [item for item in items if item.ran is not None]
            if not ran:
                return
            queued = min(item.ran[0] - item.queued_at for item in ran)
            computed = sum(finished - started for started, finished in {item.ran for item in ran})
        self.queue_count += 1
        self.queue_ns += int(queued * 1e9)
        self.compute_count += 1
        self.compute_ns += int(computed * 1e9)


class Batcher:
    """Forms batches for one app and runs them.

    `run_batch(requests, reqids)` and `preprocess(request, reqid)` are blocking callables: the first runs on
    `inference_thread` (a serving.worker_thread.WorkerThread: calls never overlap and stay on the thread that
    ran create_net), the second per request on `preprocess_executor`, overlapping the inference of earlier
    batches.
    """

    def __init__(self, app, config, run_batch, inference_thread, preprocess=None, preprocess_executor=None):
        self.app = app
        self.batch_size = config.batch_size
        self.window = config.batch_window_ms / 1000.0
        self.capacity = config.queue_size
        self.inference_timeout = config.inference_timeout_s
        self._run_batch = run_batch
        self._inference_thread = inference_thread
        self._preprocess = preprocess
        self._preprocess_executor = preprocess_executor
        self._waiting = collections.deque()
        # The inference thread takes chained batches from _waiting itself (see _run_chain): every change of it
        # is made under this lock, and so is _stopping.
        self._waiting_lock = threading.Lock()
        self._stopping = False
        self._arrived = None
        self._admitted = 0          # images admitted and not yet answered
        self._preprocessing = 0     # requests still in net_preprocess
        self._running_since = None  # monotonic (loop) time at which the current net_inference call started
        self._dropping = False      # a pass of _drop_answered is scheduled
        self._task = None
        self._loop = None
        self._deadlines = None
        self._metric_labels = (app,)
        metrics.BATCH_SIZE.declare(self._metric_labels)
        metrics.INFERENCE_LATENCY.declare(self._metric_labels)
        self.stats = BatcherStats()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self):
        # The queue depth is read when metrics are scraped, not written twice per request. A weak reference: an
        # unloaded app's batcher must not be kept alive by the gauge (a reloaded one takes the gauge over).
        batcher = weakref.ref(self)

        def depth():
            live = batcher()
            return live.pending if live is not None else 0

        metrics.QUEUE_DEPTH.labels(self.app).set_function(depth)
        self._loop = asyncio.get_running_loop()
        self._deadlines = Deadlines(self._loop, self._expire)
        self._arrived = asyncio.Event()
        self._task = self._loop.create_task(self._run_forever(), name=f"batcher-{self.app}")

    async def stop(self):
        with self._waiting_lock:
            self._stopping = True  # a chain on the inference thread ends after the batch it is running
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        # Deadlines stay armed while a call is pending: callers whose requests were in the interrupted
        # net_inference call get their 504. Then the timer goes (Deadlines.close).
        with self._waiting_lock:
            left = list(self._waiting)
            self._waiting.clear()
        for item in left:
            self._answer(item, batching.Outcome(code=UNAVAILABLE, message=f"app {self.app} is shutting down",
                                                whole_batch=True))
        if self._deadlines is not None:
            self._deadlines.close()

    @property
    def pending(self):
        """Images admitted and not yet answered."""
        return self._admitted

    def stuck_for(self):
        """Seconds the current net_inference call has run past inference_timeout_s, or 0."""
        if self._running_since is None or self._loop is None:
            return 0.0
        over = self._loop.time() - self._running_since - self.inference_timeout
        return over if over > 0 else 0.0

    # ---- submission ------------------------------------------------------------------------------------------

    async def submit(self, requests, reqids, timeout):
        """Run eval requests through the batcher; returns one Outcome per request, in order.

        Raises ServingError: 429 when the queue cannot take them all (nothing is admitted then), 503 when the
        app is stuck, 504 when `timeout` seconds pass first.
        """
        loop = self._loop
        if self._task is None or self._task.done():
            raise ServingError(UNAVAILABLE, f"app {self.app} is not running")
        stuck = self.stuck_for()
        if stuck:
            raise ServingError(UNAVAILABLE, f"app {self.app} is stuck: net_inference has run "
                                            f"{stuck + self.inference_timeout:.1f}s "
                                            f"(inference_timeout_s={self.inference_timeout:g})")
        sizes = [batching.count_images(r) for r in requests]
        for size in sizes:
            if size > self.batch_size:
                raise ServingError(BAD_REQUEST, f"a request of {size} images is over the batch_size of app "
                                                f"{self.app} ({self.batch_size})")
        images = sum(sizes)
        if images > self.capacity:
            raise ServingError(BAD_REQUEST, f"a call of {images} images can never fit the queue of app "
                                            f"{self.app} (queue_size {self.capacity}); split it")
        if self._admitted + images > self.capacity:
            raise ServingError(TOO_MANY_REQUESTS, f"app {self.app} queue is full ({self._admitted} of "
                                                  f"{self.capacity} images waiting); retry later")
        now = loop.time()
        deadline = now + timeout
        items = [_Item(r, n, loop.create_future(), deadline, reqid) for r, n, reqid in zip(requests, sizes, reqids)]
        self._admitted += images
        for item in items:
            if self._preprocess is None:
                self._enqueue(item, now)
            elif self._preprocess_executor is None:
                self._preprocess_inline(item)
            else:
                self._preprocessing += 1
                loop.create_task(self._run_preprocess(item))
        # At the deadline what is still pending is answered with 504, and the loop drops it.
        expiry = self._deadlines.add(deadline, items)
        try:
            outcomes = [await item.future for item in items]
        finally:
            self._deadlines.cancel(expiry)
            abandoned = False
            for item in items:  # the caller is gone (cancelled): what is still pending leaves the queue
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    continue  # answered: counted out by _answer
                # Cancelled here, or by the caller's cancellation while it awaited this future: nobody answered.
                self._admitted -= item.n_images
                abandoned = True
            if abandoned:
                self._drop_answered_soon()
        # Decided by the outcomes, not by whether the timer ran: it may fire after the last answer arrived.
        timed_out = any(outcome is _DEADLINE_PASSED for outcome in outcomes)
        self.stats.record_call(items, timed_out or batching.call_failure(outcomes) is not None, now, loop.time())
        if timed_out:
            raise ServingError(GATEWAY_TIMEOUT, f"app {self.app}: no answer within {timeout:.3g}s")
        return outcomes

    def _answer(self, item, outcome):
        """Answer a request unless it was answered (or its caller gave up) already; an answered request leaves the
        queue count here, one whose caller gave up in `submit`."""
        if not item.future.done():
            item.future.set_result(outcome)
            self._admitted -= item.n_images

    def _expire(self, items):
        for item in items:
            self._answer(item, _DEADLINE_PASSED)
        self._drop_answered_soon()

    def _drop_answered_soon(self):
        """Take requests already answered (deadline passed, caller gone) out of the waiting queue with their
        payloads, once the current burst is over: the queue's bound counts only live requests, so while a long
        net_inference call runs, callers that keep timing out would otherwise pile up there without limit. One
        pass per loop iteration, not per call: thousands of deadlines firing together cost one pass."""
        if not self._dropping:
            self._dropping = True
            self._loop.call_soon(self._drop_answered)

    def _drop_answered(self):
        self._dropping = False
        with self._waiting_lock:
            waiting = self._waiting
            live = [item for item in waiting if not item.future.done()]
            if len(live) != len(waiting):
                waiting.clear()
                waiting.extend(live)

    def _enqueue(self, item, now=None):
        item.queued_at = self._loop.time() if now is None else now
        with self._waiting_lock:
            self._waiting.append(item)
        self._arrived.set()

    def _preprocess_inline(self, item):
        try:
            output = self._preprocess(item.request, item.reqid)
        except _EVAL_FAILURES as exc:  # the preprocess wrapper already turns eval exceptions into 599
            self._answer(item, batching.exception_outcome(exc))
            return
        self._after_preprocess(item, output)

    def _after_preprocess(self, item, output):
        if item.future.done():
            return  # answered meanwhile (deadline, caller gone): nothing to queue
        failure = batching.preprocess_failure(output)
        if failure is not None:
            self._answer(item, failure)
        else:
            item.request = output[0]
            self._enqueue(item)

    async def _run_preprocess(self, item):
        try:
            if item.future.done():
                return
            output = await self._loop.run_in_executor(self._preprocess_executor, self._preprocess,
                                                      item.request, item.reqid)
            self._after_preprocess(item, output)
        except _EVAL_FAILURES as exc:  # the preprocess wrapper already turns eval exceptions into 599
            self._answer(item, batching.exception_outcome(exc))
        finally:
            self._preprocessing -= 1
            self._arrived.set()  # the loop may be waiting for this request to arrive

    # ---- the loop --------------------------------------------------------------------------------------------

    async def _next_batch(self):
        """Block for the first request, then drain until full, or until the window from that first request
        has passed, or until no other request is on its way."""
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        # The window counts from the arrival of the batch's first request, so no request waits longer than it.
        window_ends = self._waiting[0].queued_at + self.window
        with self._waiting_lock:
            batch, images = batching.take_batch(self._waiting, self.batch_size)
        while images < self.batch_size:
            if self._waiting:
                break  # the next request does not fit: it starts the next batch
            if not self._preprocessing:
                break  # nothing else on its way: don't wait
            remaining = window_ends - self._loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
            with self._waiting_lock:
                more, more_images = batching.take_batch(self._waiting, self.batch_size - images)
            batch += more
            images += more_images
        return batch

    def _live(self, batch):
        now = self._loop.time()
        live = []
        for item in batch:
            if item.future.done():
                continue  # the caller cancelled or gave up
            if item.deadline <= now:
                self._answer(item, _DEADLINE_PASSED)  # its call counts the failure
                continue
            live.append(item)
        return live

    async def _run_forever(self):
        while True:
            batch = self._live(await self._next_batch())
            if batch:
                await self._inference_thread.run(self._run_chain, batch)

    def _run_chain(self, batch):
        """On the inference thread: run `batch`, then the batches that waited meanwhile, until none is waiting
        (see the module docstring). Each batch's result goes to the event loop (`_finish_batch`) as it is done."""
        loop = self._loop
        while batch:
            requests = [item.request for item in batch]
            reqids = [item.reqid for item in batch]
            started = self._running_since = time.monotonic()  # the loop's clock (asyncio's loop.time())
            output = error = None
            try:
                output = self._run_batch(requests, reqids)
            except _EVAL_FAILURES as exc:
                error = exc
            finished = time.monotonic()
            self._running_since = None
            try:
                loop.call_soon_threadsafe(self._finish_batch, batch, output, error, started, finished)
            except RuntimeError:
                return  # the event loop has closed: nobody is waiting any more
            batch = output = error = requests = None  # nothing of this batch lives on while the next one runs
            batch = self._take_chained()

    def _take_chained(self):
        """The next batch, taken on the inference thread from what waited meanwhile: up to batch_size images, no
        waiting for more. Requests already answered are dropped, and so are those whose deadline has passed: the
        deadline's timer answers them (504) on the event loop."""
        with self._waiting_lock:
            if self._stopping:
                return []
            waiting = self._waiting
            now = time.monotonic()
            batch, images = [], 0
            while waiting:
                item = waiting[0]
                if item.future.done() or item.deadline <= now:
                    waiting.popleft()
                    continue
                if images + item.n_images > self.batch_size:
                    break
                batch.append(waiting.popleft())
                images += item.n_images
            return batch

    def _finish_batch(self, batch, output, error, started, finished):
        """On the event loop: one net_inference call's result to its callers (one outcome per request)."""
        if error is None:
            try:  # reading the eval's rets runs its values' own code (truth tests, str(), bytes()): it can raise
                outcomes = batching.split_outcomes(output, len(batch))
            except _EVAL_FAILURES as exc:
                error = exc
        if error is not None:
            log.error("app %s: net_inference raised", self.app, exc_info=error)
            outcomes = batching.exception_outcomes(len(batch), error)
        metrics.BATCH_SIZE.observe(self._metric_labels, sum(item.n_images for item in batch))
        metrics.INFERENCE_LATENCY.observe(self._metric_labels, finished - started)
        self.stats.record_batch(batch, outcomes, started, finished)
        for item, outcome in zip(batch, outcomes):
            self._answer(item, outcome)

