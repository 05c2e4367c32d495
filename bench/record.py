"""What a benchmark records in docs/benchmarks.md: the machine, and its section of the file."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["load_average", "machine", "write_section"]


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


def write_section(
    path: Path,
    heading: str,
    intro: str,
    method: str,
    script: str,
    key: str,
    block: str,
    *,
    new_file: str,
) -> None:
    """Put ``block`` (the figures of one run size, ``key`` such as ``50000x1000000``) into the
    ``heading`` section of ``path``, keeping the blocks of other sizes (largest first) and the
    other sections. Blocks are delimited by ``<!-- {script} {key} begin/end -->``.
    """
    text = path.read_text() if path.exists() else new_file
    parts = re.split(r"(?m)^(?=## )", text)
    preamble, sections = parts[0], parts[1:]
    index = next((i for i, s in enumerate(sections) if s.startswith(heading + "\n")), None)
    old = sections[index] if index is not None else ""
    name = re.escape(script)
    block_re = re.compile(rf"<!-- {name} (\S+) begin -->.*?<!-- {name} \1 end -->", re.S)
    blocks = {m.group(1): m.group(0) for m in block_re.finditer(old)}
    blocks[key] = block

    def order(k: str) -> tuple[int, int]:
        leads, events = (int(x) for x in k.split("x"))
        return (-leads, -events)

    body = "\n\n".join(blocks[k] for k in sorted(blocks, key=order))
    section = f"{heading}\n\n{intro}\n{body}\n\n{method}"
    if index is None:
        sections.append(section)
    else:
        sections[index] = section
    sections = [s.rstrip("\n") + "\n\n" for s in sections]
    out = preamble.rstrip("\n") + "\n\n" + "".join(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out.rstrip("\n") + "\n")
