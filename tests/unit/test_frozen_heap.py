"""server/run.tune_garbage_collector: what start-up left alive is out of every later collection, and
young objects are collected every GC_THRESHOLDS[0] allocations."""

from __future__ import annotations

import gc

from llmproxy.server.run import GC_THRESHOLDS, tune_garbage_collector


class Holder:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector could free it, and only if it still looks at it


def test_objects_alive_at_start_up_are_frozen_garbage_is_collected_first_and_thresholds_raised() -> None:
    kept = Holder()
    dropped = Holder()
    del dropped
    before = gc.get_threshold()
    try:
        frozen = tune_garbage_collector()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.get_threshold() == GC_THRESHOLDS
        # the kept object is in the permanent generation: no generation lists it any more
        assert not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    # back in the generations: the kept one, not the dropped cycle (collected before the freeze)
    assert [obj for obj in gc.get_objects() if type(obj) is Holder] == [kept]
