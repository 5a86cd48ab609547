"""server/run.freeze_start_up_heap: what start-up left alive is out of every later collection."""

from __future__ import annotations

import gc

from llmproxy.server.run import freeze_start_up_heap


class Holder:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector could free it, and only if it still looks at it


def test_objects_alive_at_start_up_are_frozen_and_garbage_is_collected_first() -> None:
    kept = Holder()
    dropped = Holder()
    del dropped
    try:
        frozen = freeze_start_up_heap()
        assert frozen == gc.get_freeze_count() > 0
        # the kept object is in the permanent generation: no generation lists it any more
        assert not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    # back in the generations: the kept one, not the dropped cycle (collected before the freeze)
    assert [obj for obj in gc.get_objects() if type(obj) is Holder] == [kept]
