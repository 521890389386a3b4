"""One thread that runs blocking callables in order and answers asyncio futures: an app's inference thread.

`loop.run_in_executor` on a one-worker ThreadPoolExecutor does the same job, but each call builds a
concurrent.futures.Future (with its Condition), wraps it in an asyncio future and chains callbacks between the
two: about 10 microseconds of the event loop's time and 20 of latency per hop, paid by every batch (by every
request at one in flight). Here a call is one queue put, and its answer one `call_soon_threadsafe`.
"""
import asyncio
import queue
import threading

_STOP = object()


def _settle(future, result, error):
    if future.done():
        return  # the awaiting caller was cancelled meanwhile
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class WorkerThread:
    """Runs `fn(*args)` calls one at a time, in submission order, on one thread of its own.

    The thread is a daemon: a call that never returns (a stuck net_inference) must not keep the process from
    exiting once the server has shut down.
    """

    def __init__(self, name):
        self.name = name
        self._jobs = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn, *args):
        """An asyncio future of `fn(*args)` run on this thread; it raises what `fn` raised. Call it from the event
        loop's thread."""
        if self._closed:
            raise RuntimeError(f"worker thread {self.name} is shut down")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def shutdown(self):
        """Run nothing more: calls not started yet are cancelled, the thread ends after the call it is running."""
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                try:
                    job[0].call_soon_threadsafe(job[1].cancel)
                except RuntimeError:
                    pass  # its loop has closed
        self._jobs.put(_STOP)

    async def wait_ended(self, timeout):
        """Wait (without blocking the event loop) until the thread has ended after `shutdown`, for at most
        `timeout` seconds; True when it has. A call still running (a stuck net_inference) keeps it alive."""
        await asyncio.to_thread(self._thread.join, timeout)
        return not self._thread.is_alive()

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            loop, future, fn, args = job
            result = error = None
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 -- handed to the awaiting caller, as an executor would
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:
                pass  # the loop has closed: nobody is waiting any more
            # Drop this call's references before waiting for the next one: a batch's requests and results (and
            # an unloaded app, through its bound method) must not live on until the next call arrives.
            job = loop = future = fn = args = result = error = None
