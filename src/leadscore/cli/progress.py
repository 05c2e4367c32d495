"""Progress of long commands (import, rescore, publish, report from a store, demo): a bar on a
terminal, lines in a log.

The store and the validation report tell their progress as ``(what, done, total)`` calls,
``total`` -1 when it is not known (an import from standard input). On a terminal they feed a
rich progress bar per step. Where standard error is no terminal (cron, CI, a log file), a bar
would be drawn once, at the end; a line is printed instead every :data:`EVERY` seconds and
when a step ends::

    storing events: 1,234,000/3,300,000 (37%), 20,512/s, about 0:01:40 left
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["EVERY", "Bar"]

EVERY = 10.0  # seconds between progress lines when standard error is no terminal


class _Count(ProgressColumn):
    """``done/total``, or ``done/?`` while the total is not known."""

    def render(self, task: Task) -> Text:
        total = "?" if task.total is None else f"{int(task.total):,}"
        return Text(f"{int(task.completed):>10,}/{total:<10}")


class Bar:
    """Progress fed by ``(what, done, total)`` callbacks: a rich progress bar on a terminal,
    lines otherwise (see the module's docstring)."""

    def __init__(
        self, console: Console | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if console is None:  # the command line's standard error
            from leadscore.cli import err

            console = err
        self.console: Console = console
        self.lines = not console.is_terminal
        self.clock = clock
        self.progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            _Count(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}
        self.last: tuple[str, int, int] | None = None  # the latest (what, done, total)
        self.started: dict[str, float] = {}  # when each step was first told of
        self.ended: set[str] = set()  # steps whose last line is printed
        self.said = clock()  # when the last line was printed

    def __enter__(self) -> Bar:
        if not self.lines:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.lines:
            self.progress.stop()

    def __call__(self, what: str, done: int, total: int) -> None:
        self.last = (what, done, total)
        if self.lines:
            self._line(what, done, total)
            return
        # nothing to do (an empty store) shows as 0/0, the bar full: done, not waiting
        known = max(total, done, 0) if total >= 0 else None
        task = self.tasks.get(what)
        if task is None:
            task = self.tasks[what] = self.progress.add_task(what, total=known)
        self.progress.update(task, completed=done, total=known)

    def _line(self, what: str, done: int, total: int) -> None:
        now = self.clock()
        start = self.started.setdefault(what, now)
        ended = 0 <= total <= done
        if what in self.ended or (not ended and now - self.said < EVERY):
            return
        self.said = now
        if ended:
            self.ended.add(what)
        text = f"{what}: {done:,}"
        if total > 0:
            text += f"/{total:,} ({min(done / total, 1):.0%})"
        elif total == 0:
            text += "/0"
        elapsed = now - start
        if elapsed >= 1 and done:
            rate = done / elapsed
            text += f", {rate:,.0f}/s"
            if total > done:
                left = round((total - done) / rate)
                text += f", about {left // 3600}:{left // 60 % 60:02}:{left % 60:02} left"
        self.console.print(text, markup=False)
