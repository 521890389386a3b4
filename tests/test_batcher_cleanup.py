"""The batcher's queue when thousands of callers give up together while the model is busy.

Driven in this process through the same loader, data plane and batcher as `serving serve` (AppRegistry,
DataPlane), on an app of its own (tests/apps_busy/gated) whose one net_inference call holds the model until the
test lets it go. Calls that share one absolute deadline (what callers with a common deadline, a fan-out of one
upstream request for instance, hand the server) all pass it while they wait in the queue: each is answered 504 at
its deadline and leaves the queue with its payload. Taking them out used to cost one pass over the whole queue per
expired call: 10,000 of them held the event loop for 2.7 s (O(n^2)), and the last caller heard its 504 that late;
one pass per loop iteration answers them all within about 0.2 s here."""
import asyncio
import gc
import weakref

from conftest import TESTS
from serving.apps import AppRegistry
from serving.dataplane import DataPlane
from serving.errors import GATEWAY_TIMEOUT, ServingError

APPS = TESTS / "apps_busy"
CALLERS = 10_000
AHEAD_S = 1.0  # the shared deadline, from the moment the callers start: they are all queued well before it
# How late after the deadline the last caller may hear its 504 (and the longest the event loop may be held):
# about 0.2 s measured with the one-pass cleanup, 2.7 s with a pass per expired call.
LATE_BOUND_S = 1.0


class Payload:
    """What a request carries; weakly referenced, to see when the runtime lets go of it."""

    __slots__ = ("blob", "__weakref__")

    def __init__(self):
        self.blob = bytes(1024)


async def _flood_while_busy():
    registry = AppRegistry(APPS)
    await registry.load_all()
    app = registry.get("gated")
    dataplane = DataPlane(registry)
    loop = asyncio.get_running_loop()
    try:
        busy = asyncio.ensure_future(
            dataplane.infer("gated", "inference", [{"data": {}, "params": {"hold": True}}], "busy", 30))
        await asyncio.sleep(0.2)  # net_inference is holding the model now

        deadline = loop.time() + AHEAD_S
        payloads, answered_at = [], []

        async def caller(i):
            payload = Payload()
            payloads.append(weakref.ref(payload))
            request = {"data": {"payload": payload}, "params": {}}
            del payload
            try:
                await dataplane.infer("gated", "inference", [request], f"caller-{i}", deadline - loop.time())
                code = 0
            except ServingError as exc:
                code = exc.code
            answered_at.append(loop.time())
            return code

        callers = [loop.create_task(caller(i)) for i in range(CALLERS)]
        while app.batcher.pending < CALLERS + 1 and loop.time() < deadline:
            await asyncio.sleep(0)
        queued, queued_by = app.batcher.pending, loop.time()

        # The longest the event loop goes without running this ticker, from before the deadline until every
        # caller has its answer.
        gaps, ticking = [], True

        async def ticker():
            last = loop.time()
            while ticking:
                await asyncio.sleep(0.005)
                now = loop.time()
                gaps.append(now - last)
                last = now

        tick = loop.create_task(ticker())
        codes = await asyncio.gather(*callers)
        ticking = False
        await tick
        busy_was_running = not busy.done()
        gc.collect()
        kept = sum(ref() is not None for ref in payloads)
        pending = app.batcher.pending
        app.module.GATE.set()
        busy_result = await busy
        return {"queued": queued, "queued_before_deadline": queued_by < deadline, "codes": set(codes),
                "late": max(answered_at) - deadline, "stall": max(gaps), "busy_was_running": busy_was_running,
                "kept": kept, "pending": pending, "busy_ok": busy_result[0].ok}
    finally:
        app.module.GATE.set()
        await registry.close()


def test_thousands_of_callers_passing_their_deadline_together_leave_the_queue_at_once():
    seen = asyncio.run(_flood_while_busy())
    # Preconditions: every caller was queued behind the busy model before the shared deadline passed.
    assert seen["queued"] == CALLERS + 1 and seen["queued_before_deadline"], seen
    assert seen["codes"] == {GATEWAY_TIMEOUT}, seen
    # All were answered promptly, in one burst the event loop gets through quickly.
    assert seen["late"] < LATE_BOUND_S, f"the last 504 came {seen['late']:.2f}s after the deadline: {seen}"
    assert seen["stall"] < LATE_BOUND_S, f"the event loop was held {seen['stall']:.2f}s: {seen}"
    # While the model still ran the one long call, the queue let go of every expired request and its payload.
    assert seen["busy_was_running"], f"the long call ended first: nothing was measured: {seen}"
    assert seen["kept"] == 0, f"{seen['kept']} payloads of expired calls are still held: {seen}"
    assert seen["pending"] == 1, seen  # only the busy call's image
    assert seen["busy_ok"], seen
