"""Keep a long-running process's lasting objects out of the garbage collector's full passes.

A full pass of Python's cyclic garbage collector walks every object it tracks, and the process
does nothing else meanwhile: in the server's processes (its modules, the app, the store's
caches: 170,000-370,000 objects) a pass took 100-290 ms on the benchmark machine, eight or
nine times a minute under load (bench/ingest.py, quick size, docs/benchmarks.md). Objects made
at start, and the events read ahead into the cache, live as long as the process: once they are
frozen (``gc.freeze``), passes walk only what came after.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_survivors"]


def freeze_survivors() -> None:
    """Collect what is garbage now, then move every object left to the collector's permanent
    generation (never walked again; still freed when no longer referenced). For processes
    that run for long and end with their work (the server's), not for a library's caller."""
    gc.collect()
    gc.freeze()
