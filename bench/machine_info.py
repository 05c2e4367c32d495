"""What machine a benchmark ran on, for the record in docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["load_average", "machine"]


def machine() -> dict[str, str]:
    cpu = "unknown"
    mem = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"nproc": str(nproc), "cpu": cpu, "memory": mem, "os": platform.platform()}


def load_average() -> str:
    """The 1-minute load average when the run started (other work on the machine skews times)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"
