"""The server's processes keep their lasting objects out of the collector's full passes."""

from __future__ import annotations

import gc
import weakref

from leadscore.service.survivors import freeze_survivors


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_garbage_is_collected_before_the_rest_is_frozen() -> None:
    """What is garbage at the freeze is freed, not kept for good; what lives is frozen, and
    freed by its count of references later (a non-cyclic object) as before."""
    gc.disable()  # no pass of its own between the lines below
    try:
        garbage = Node()
        gone = weakref.ref(garbage)
        del garbage
        assert gone() is not None  # a cycle waits for a pass
        kept = [object()]
        freeze_survivors()
        assert gone() is None
        assert gc.get_freeze_count() > 0
        assert all(o is not kept for o in gc.get_objects())  # frozen: out of the passes
    finally:
        gc.unfreeze()
        gc.enable()
