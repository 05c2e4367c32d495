"""Model tests: run a model's ``examples:`` with the per-lead evaluator.

Each example gives a hypothetical lead, its events (``ts`` or ``days_ago``) and an as-of time,
and the results it expects; numbers match within the example's ``tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leadscore.engine.lead import Event, score_lead
from leadscore.engine.timeutil import MICROS_PER_DAY, from_micros, to_micros
from leadscore.spec.model import Model
from leadscore.spec.schema import ExampleSpec

__all__ = ["ExampleOutcome", "run_example", "run_examples"]


@dataclass(frozen=True)
class ExampleOutcome:
    name: str
    passed: bool
    problems: tuple[str, ...]


def _events(example: ExampleSpec) -> list[Event]:
    """An example's events, read like any other events (``days_ago`` counts from as_of)."""
    t_us = to_micros(example.as_of)
    out = []
    for e in example.events:
        ts = (
            e.ts
            if e.ts is not None
            else from_micros(t_us - round((e.days_ago or 0.0) * MICROS_PER_DAY))
        )
        out.append(Event.from_mapping({**e.fields(), "type": e.type, "item": e.item, "ts": ts}))
    return out


def run_example(model: Model, example: ExampleSpec) -> ExampleOutcome:
    result = score_lead(model, example.lead, _events(example), example.as_of)
    tol = example.tolerance
    exp = example.expect
    problems: list[str] = []

    def number(label: str, want: float | None, got: float) -> None:
        if want is not None and abs(want - got) > tol:
            problems.append(f"{label}: expected {want:g}, got {got:.6g}")

    def same(label: str, want: Any, got: Any) -> None:
        if want is not None and want != got:
            problems.append(f"{label}: expected {want!r}, got {got!r}")

    number("score", exp.score, result.score)
    number("fit", exp.fit, result.fit)
    number("engagement", exp.engagement, result.engagement)
    same("grade", exp.grade, result.grade)
    same("band", exp.band, result.band)
    same("mql", exp.mql, result.mql)
    same("priority", exp.priority, result.priority)
    for rule_id, want in (exp.rules or {}).items():
        number(f"rule {rule_id}", want, result.contributions[rule_id])
    for group_id, want in (exp.groups or {}).items():
        number(f"group {group_id}", want, result.group_points[group_id])
    return ExampleOutcome(example.name, not problems, tuple(problems))


def run_examples(model: Model) -> list[ExampleOutcome]:
    """Every example of the model, in file order."""
    return [run_example(model, ex) for ex in model.examples]
