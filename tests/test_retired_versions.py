"""What a reload leaves behind: the retired version of an app, its batcher and its model must be collectable
once it has answered its calls, not kept for request_timeout_s by the deadline timer of calls answered long
ago (a reload under load of an app with a large model would hold two models that long).

Driven in this process through the same loader, data plane and batcher as `serving serve`."""
import asyncio
import gc
import weakref

from conftest import TESTS
from serving.apps import AppRegistry
from serving.dataplane import DataPlane


async def _reload_after_a_call():
    registry = AppRegistry(TESTS / "apps")
    await registry.load_all()
    try:
        dataplane = DataPlane(registry)
        # A call answered at once, whose deadline (30 s away) is still armed on the batcher's timer.
        [outcome] = await dataplane.infer("probe", "inference", [{"data": {"i": 1}, "params": {}}], "r1", 30)
        retired = weakref.ref(registry.get("probe"))
        await registry.load_app("probe")
        gc.collect()
        return outcome.ok, retired() is None, registry.get("probe").state
    finally:
        await registry.close()


def test_a_retired_version_is_collectable_once_its_calls_are_answered():
    ok, freed, state = asyncio.run(_reload_after_a_call())
    assert ok and state == "READY"
    # The App holds its model, batcher and module: collected, they are all gone.
    assert freed, "the retired version is still held after the reload"
