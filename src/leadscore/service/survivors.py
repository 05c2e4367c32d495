"""Keep a long-running process's lasting objects out of the garbage collector's full passes.

A full pass of Python's cyclic garbage collector walks every object it tracks, and the process
does nothing else meanwhile: in the server's processes (its modules, the app, the store's
caches: 170,000-370,000 objects) a pass took 100-290 ms on the benchmark machine, eight or
nine times a minute under load (bench/ingest.py, quick size, docs/benchmarks.md). Objects made
at start, and the events read ahead into the cache, live as long as the process: once they are
frozen (``gc.freeze``), passes walk only what came after.

What comes after still costs: under batch load the scoring process keeps making objects
(decoded events, results), and with Python's default thresholds its collector ran about 37
young passes a second, 3 middle ones and a full one every 5 s: some 7% of the process's time
(500-event batches, measured with ``gc.callbacks``). :func:`collect_rarely` makes the passes
rarer (1-2 young passes a second there, hardly any other); each takes longer (a young pass
of 5,000 objects, a few milliseconds).
"""

from __future__ import annotations

import gc

__all__ = ["GC_THRESHOLDS", "collect_rarely", "freeze_survivors"]

# A young pass after this many new objects (Python: 700), a middle pass every 20 young ones
# (10), a full pass every 100 middle ones (10; and only when the objects that survived to
# the oldest generation since the last full pass are a quarter of those it holds).
# 500-event batches, back to back: 7,633 / 7,800 events/s against 7,100 / 7,033 with the
# defaults (10,000-100,000 young objects measured alike; docs/benchmarks.md).
GC_THRESHOLDS = (5_000, 20, 100)


def freeze_survivors() -> None:
    """Collect what is garbage now, then move every object left to the collector's permanent
    generation (never walked again; still freed when no longer referenced). For processes
    that run for long and end with their work (the server's), not for a library's caller."""
    gc.collect()
    gc.freeze()


def collect_rarely() -> None:
    """Run the garbage collector's passes less often (:data:`GC_THRESHOLDS`): for the server's
    processes, not for a library's caller."""
    gc.set_threshold(*GC_THRESHOLDS)
