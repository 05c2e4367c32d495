"""Every exception leadscore raises on purpose.

    LeadscoreError                 base: catch this to catch everything below
     +-- ModelError                a model file is invalid; .issues lists every problem found
     +-- ConfigError               a triggers file is invalid; .issues lists every problem found
     +-- InputError                a leads/events/outcomes input is unusable; .problems lists them
     +-- UsageError                a call was made with arguments that cannot work
     +-- StoreError                the store cannot be opened or does not hold what was asked
          +-- NotFound             no such lead, model, key, ...
          +-- Conflict             the request contradicts what the store holds
          +-- StoreUnavailable     the store cannot be reached or written now (try again)

The command line turns these into ``Error: ...`` messages and an exit code; only code at that
edge catches them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "Conflict",
    "InputError",
    "InputProblem",
    "LeadscoreError",
    "ModelError",
    "ModelIssue",
    "NotFound",
    "StoreError",
    "StoreUnavailable",
    "UsageError",
    "reason_of",
]


class LeadscoreError(Exception):
    """Base class of every error leadscore raises on purpose."""


@dataclass(frozen=True)
class ModelIssue:
    """One problem in a model file: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ModelError(LeadscoreError):
    """A model file (or text) is invalid. ``issues`` holds every problem, in file order."""

    def __init__(self, issues: list[ModelIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))

    def __reduce__(self) -> tuple[type[ModelError], tuple[list[ModelIssue]]]:
        return type(self), (self.issues,)  # pickled whole (a rescoring process sends it back)


@dataclass(frozen=True)
class InputProblem:
    """One problem in an input table. ``row`` counts data rows from 1 (a CSV header is row 0)."""

    source: str
    message: str
    row: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.source
        if self.row is not None:
            where += f": row {self.row}"
        if self.column is not None:
            where += f": column {self.column!r}"
        return f"{where}: {self.message}"


class InputError(LeadscoreError):
    """Input data cannot be used as given. ``problems`` lists what was found (maybe truncated)."""

    def __init__(self, problems: list[InputProblem], hint: str | None = None) -> None:
        self.problems = problems
        self.hint = hint
        text = "\n".join(str(p) for p in problems)
        super().__init__(text + (f"\n{hint}" if hint else ""))

    def __reduce__(self) -> tuple[type[InputError], tuple[list[InputProblem], str | None]]:
        return type(self), (self.problems, self.hint)


class UsageError(LeadscoreError):
    """Arguments that cannot work together (an unknown sheet, a bad as-of time, ...)."""


class StoreError(LeadscoreError):
    """The store cannot be opened, or cannot do what was asked."""


class NotFound(StoreError):
    """No such lead, model version, API key, ..."""


class Conflict(StoreError):
    """The request contradicts what the store holds (e.g. publishing a retired version)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or written now (a database server down, a disk full): the
    request may be sent again later."""


class ConfigError(LeadscoreError):
    """A configuration file other than a model (the triggers file) is invalid. ``issues`` holds
    every problem, in file order, in the same ``file:line: path: message`` form as a model's."""

    def __init__(self, issues: list[ModelIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ModelIssue]]]:
        return type(self), (self.issues,)


def reason_of(e: BaseException) -> str:
    """What went wrong, in a line: a database error's own first line (not SQLAlchemy's
    wrapping, nor the statement), else the error's; its type when it says nothing."""
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]
