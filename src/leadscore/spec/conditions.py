"""Conditions: their schema and their meaning (MODEL_SPEC.md, "Conditions").

A condition is ``{field: NAME, OP: VALUE}`` or a combinator ``{all: [...]}``, ``{any: [...]}``,
``{not: {...}}``. This module fixes the meaning once, in Python; the batch evaluator translates
the same definitions to SQL and property tests hold the two together.

The shared definitions, in the order they matter:

- a value is *text*: ``None`` or a string (numbers from typed inputs are formatted by
  :func:`to_text` before they get here);
- a value is *missing* when it is ``None`` or blank after trimming ASCII whitespace;
- string comparisons use the trimmed, lower-cased text;
- a value is a *number* when its trimmed text matches :data:`NUMBER_PATTERN` (so ``1e6`` and
  ``" 200 "`` are numbers, ``1,200`` and ``n/a`` are not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Annotated, Any, NamedTuple

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

__all__ = [
    "NUMBER_PATTERN",
    "NUMERIC_OPERATORS",
    "OPERATORS",
    "WHITESPACE",
    "AllCondition",
    "AnyCondition",
    "Condition",
    "FieldCondition",
    "NotCondition",
    "Number",
    "Predicate",
    "TextFilter",
    "compile_condition",
    "condition_fields",
    "fold",
    "not_true_or_false",
    "numeric_fields",
    "operand_texts",
    "parse_number",
    "text_filter",
    "text_problem",
    "to_text",
    "walk_fields",
]

WHITESPACE = " \t\n\r\x0b\x0c"
NUMBER_PATTERN = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"
_NUMBER_RE = re.compile(NUMBER_PATTERN)

NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte", "between")
OPERATORS = (
    "eq",
    "ne",
    "in",
    "not_in",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "matches",
    *NUMERIC_OPERATORS,
    "exists",
    "missing",
)

Scalar = str | int | float | bool
Record = Mapping[str, str | None]
Predicate = Callable[[Record], bool]


def text_problem(text: str) -> str | None:
    """What makes ``text`` impossible to store, or None: the NUL character (PostgreSQL text
    cannot hold it) or half of a UTF-16 surrogate pair alone (``\\ud800``: no UTF-8 text,
    which JSON and YAML escapes can write)."""
    if "\x00" in text:
        return "text may not contain the NUL character (\\u0000)"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "text may not contain half of a UTF-16 surrogate pair alone (such as \\ud800)"
    return None


def to_text(value: Any) -> str | None:
    """Format a value the way every evaluator sees it: text, or None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def parse_number(text: str | None) -> float | None:
    """The number a value stands for, or None when it is missing or not a number."""
    if text is None:
        return None
    stripped = text.strip(WHITESPACE)
    if not _NUMBER_RE.fullmatch(stripped):
        return None
    return float(stripped)


def fold(text: str) -> str:
    """Lower-case the way SQL engines do: one character for one character.

    Python's ``str.lower`` turns some characters into two (``İ``) or depends on context
    (a final ``Σ``); SQL ``LOWER`` maps each code point alone. ASCII text takes the fast path.
    """
    if text.isascii():
        return text.lower()
    return "".join(c.lower()[:1] for c in text)


def _norm(text: str) -> str:
    return fold(text.strip(WHITESPACE))


def operand_texts(value: Scalar | list[Scalar]) -> list[str]:
    """The operand list of ``in``/``contains``/...: a list, or a string split on ';'."""
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        text = to_text(item)
        assert text is not None
        out.append(_norm(text))
    return out


def not_true_or_false(value: Any) -> Any:
    """YAML reads yes, no, on, off... as true/false, which pydantic would take as 1 and 0
    where a number is asked for (``gte: yes``, ``bands: {hot: yes}``): refused."""
    if isinstance(value, bool):
        raise ValueError("a number is needed here, not true/false")
    return value


# A number of a condition, a list or a mapping (true/false refused, the error at its place).
Number = Annotated[float, BeforeValidator(not_true_or_false)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=False, allow_inf_nan=False
    )


class FieldCondition(_Strict):
    """``{field: NAME, OP: VALUE}``: exactly one operator."""

    field: str = Field(min_length=1)
    eq: Scalar | None = None
    ne: Scalar | None = None
    in_: Scalar | list[Scalar] | None = Field(default=None, alias="in")
    not_in: Scalar | list[Scalar] | None = None
    contains: Scalar | list[Scalar] | None = None
    not_contains: Scalar | list[Scalar] | None = None
    starts_with: Scalar | list[Scalar] | None = None
    ends_with: Scalar | list[Scalar] | None = None
    matches: str | None = None
    gt: Number | None = None
    gte: Number | None = None
    lt: Number | None = None
    lte: Number | None = None
    between: tuple[Number, Number] | None = None
    exists: bool | None = None
    missing: bool | None = None

    @field_validator("in_", "not_in", mode="after")
    @classmethod
    def _split_semicolons(cls, value: Scalar | list[Scalar] | None) -> Any:
        if isinstance(value, str):
            parts = [p.strip(WHITESPACE) for p in value.split(";")]
            return [p for p in parts if p]
        return value

    @field_validator(
        "in_", "not_in", "contains", "not_contains", "starts_with", "ends_with", mode="after"
    )
    @classmethod
    def _non_empty(cls, value: Scalar | list[Scalar] | None) -> Any:
        if value is None:
            return value
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("must list at least one value")
        for item in items:
            if isinstance(item, bool):
                raise ValueError(
                    f"YAML read a value here as {str(item).lower()} (it does so for NO, yes, "
                    "on, off, ...): quote it, e.g. 'NO', if you mean the text"
                )
            text = to_text(item)
            if text is None or not text.strip(WHITESPACE):
                raise ValueError("values must not be empty")
        return value

    @field_validator("matches", mode="after")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"regular expression does not compile: {exc}") from None
        return value

    @field_validator("between", mode="after")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"must be [low, high] with low <= high, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> FieldCondition:
        given = self.operators_given()
        if len(given) != 1:
            ops = ", ".join(OPERATORS)
            found = ", ".join(given) if given else "none"
            raise ValueError(f"needs exactly one operator ({ops}); found {found}")
        return self

    def operators_given(self) -> list[str]:
        return [op for op in OPERATORS if getattr(self, _attr(op)) is not None]

    @property
    def operator(self) -> str:
        return self.operators_given()[0]

    @property
    def operand(self) -> Any:
        return getattr(self, _attr(self.operator))


def _attr(op: str) -> str:
    return "in_" if op == "in" else op


class AllCondition(_Strict):
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Strict):
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Strict):
    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str:
    if isinstance(value, Mapping):
        for key in ("all", "any", "not"):
            if key in value:
                return f"<{key}>"
        return "<field>"
    if isinstance(value, BaseModel):
        return {
            AllCondition: "<all>",
            AnyCondition: "<any>",
            NotCondition: "<not>",
        }.get(type(value), "<field>")
    return "<field>"


Condition = Annotated[
    Annotated[FieldCondition, Tag("<field>")]
    | Annotated[AllCondition, Tag("<all>")]
    | Annotated[AnyCondition, Tag("<any>")]
    | Annotated[NotCondition, Tag("<not>")],
    Discriminator(_condition_kind),
]

AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()


# --- meaning ---------------------------------------------------------------------------------


def _field_predicate(cond: FieldCondition) -> Predicate:
    name = cond.field
    op = cond.operator
    operand = cond.operand

    if op == "exists" or op == "missing":
        want_present = (op == "exists") == bool(operand)

        def presence(rec: Record) -> bool:
            v = rec.get(name)
            present = v is not None and v.strip(WHITESPACE) != ""
            return present == want_present

        return presence

    if op in NUMERIC_OPERATORS:
        if op == "between":
            low, high = operand

            def test(x: float) -> bool:
                return bool(low <= x <= high)
        else:
            bound = float(operand)
            test = {
                "gt": lambda x: x > bound,
                "gte": lambda x: x >= bound,
                "lt": lambda x: x < bound,
                "lte": lambda x: x <= bound,
            }[op]

        def numeric(rec: Record) -> bool:
            x = parse_number(rec.get(name))
            return x is not None and test(x)

        return numeric

    if op == "matches":
        pattern = re.compile(operand, re.IGNORECASE)

        def regex(rec: Record) -> bool:
            v = rec.get(name)
            if v is None:
                return False
            s = v.strip(WHITESPACE)
            return s != "" and pattern.search(s) is not None

        return regex

    if op in ("eq", "ne", "in", "not_in"):
        options = [(t, parse_number(t)) for t in operand_texts(operand)]
        negate = op in ("ne", "not_in")
        if all(number is None for _, number in options):
            # No option is a number: only the text can match (a set lookup, no number parse).
            texts = frozenset(t for t, _ in options)

            def equal_text(rec: Record) -> bool:
                v = rec.get(name)
                if v is None:
                    return False
                s = _norm(v)
                return s != "" and (s in texts) != negate

            return equal_text

        def equal(rec: Record) -> bool:
            v = rec.get(name)
            if v is None:
                return False
            s = _norm(v)
            if s == "":
                return False
            x = parse_number(s)
            hit = False
            for text, number in options:
                if (x == number) if (x is not None and number is not None) else (s == text):
                    hit = True
                    break
            return hit != negate

        return equal

    needles = tuple(operand_texts(operand))
    ws = WHITESPACE
    # Needles are never empty, so a blank value can match none of them: the positive
    # operators need no separate "missing" test. These closures are the per-event hot path.
    if op == "contains" and len(needles) == 1:
        needle = needles[0]

        def contains_one(rec: Record) -> bool:
            v = rec.get(name)
            if v is None:
                return False
            s = v.strip(ws)
            return needle in (s.lower() if s.isascii() else fold(s))

        return contains_one
    if op == "contains":

        def contains_any(rec: Record) -> bool:
            v = rec.get(name)
            if v is None:
                return False
            s = v.strip(ws)
            s = s.lower() if s.isascii() else fold(s)
            for n in needles:  # noqa: SIM110 (a loop: see compile_condition)
                if n in s:
                    return True
            return False

        return contains_any
    if op in ("starts_with", "ends_with"):
        starts = op == "starts_with"

        def affix(rec: Record) -> bool:
            v = rec.get(name)
            if v is None:
                return False
            s = fold(v.strip(ws))
            return s.startswith(needles) if starts else s.endswith(needles)

        return affix

    def not_contains(rec: Record) -> bool:
        v = rec.get(name)
        if v is None:
            return False
        s = fold(v.strip(ws))
        return s != "" and not any(n in s for n in needles)

    return not_contains


def compile_condition(cond: Condition) -> Predicate:
    """A fast Python predicate over a record of text values."""
    if isinstance(cond, FieldCondition):
        return _field_predicate(cond)
    # Plain loops rather than all()/any() over a generator: these run once per lead or
    # event, and a generator costs more than the tests it runs.
    if isinstance(cond, AllCondition):
        parts = tuple(compile_condition(c) for c in cond.all)

        def all_of(rec: Record) -> bool:
            for p in parts:  # noqa: SIM110
                if not p(rec):
                    return False
            return True

        return all_of
    if isinstance(cond, AnyCondition):
        parts = tuple(compile_condition(c) for c in cond.any)

        def any_of(rec: Record) -> bool:
            for p in parts:  # noqa: SIM110
                if p(rec):
                    return True
            return False

        return any_of
    inner = compile_condition(cond.not_)
    return lambda rec: not inner(rec)


def walk_fields(cond: Condition) -> Sequence[FieldCondition]:
    """Every field condition inside a condition, in order."""
    if isinstance(cond, FieldCondition):
        return [cond]
    if isinstance(cond, AllCondition):
        return [f for c in cond.all for f in walk_fields(c)]
    if isinstance(cond, AnyCondition):
        return [f for c in cond.any for f in walk_fields(c)]
    return walk_fields(cond.not_)


def condition_fields(cond: Condition) -> list[str]:
    """Every field a condition reads, in order, without repeats."""
    return list(dict.fromkeys(f.field for f in walk_fields(cond)))


class TextFilter(NamedTuple):
    """One positive text test on one field (``contains``, ``starts_with``, ``ends_with``, or
    ``eq``/``in`` with no number among the options), in the form the per-lead evaluator applies
    to a whole column of normalised values at once (:func:`text_filter`)."""

    field: str
    op: str  # "contains", "starts_with", "ends_with" or "in"
    needles: tuple[str, ...]  # normalised and never empty
    options: frozenset[str]  # for "in": the normalised options


def text_filter(cond: Condition | None) -> TextFilter | None:
    """``cond`` as a :class:`TextFilter`, when it is one.

    A value ``s`` (trimmed and folded; ``""`` when missing) passes when ``needle in s`` for a
    needle (``contains``), ``s.startswith(needles)``, ``s.endswith(needles)``, or ``s in
    options`` (``in``). That is :func:`compile_condition`'s meaning exactly: needles are never
    empty, so a missing value passes none of them, and with no option a number, ``eq``/``in``
    compare text.
    """
    if not isinstance(cond, FieldCondition):
        return None
    op = cond.operator
    if op in ("contains", "starts_with", "ends_with"):
        return TextFilter(cond.field, op, tuple(operand_texts(cond.operand)), frozenset())
    if op in ("eq", "in"):
        texts = operand_texts(cond.operand)
        if any(parse_number(t) is not None for t in texts):
            return None
        options = frozenset(t for t in texts if t)
        return TextFilter(cond.field, "in", tuple(sorted(options)), options)
    return None


def numeric_fields(cond: Condition) -> list[str]:
    """Fields read by a numeric operator: a non-number there is counted as a warning."""
    return list(
        dict.fromkeys(f.field for f in walk_fields(cond) if f.operator in NUMERIC_OPERATORS)
    )
