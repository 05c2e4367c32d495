"""An explanation a person can check by hand: every rule, event, factor and cap, as text."""

from __future__ import annotations

from leadscore.engine.result import CountedEvent, RuleContribution, ScoreResult
from leadscore.spec.model import ActivityRule, InactivityRule, Model, ProfileRule

__all__ = ["MAX_EVENTS_SHOWN", "explanation_text"]

MAX_EVENTS_SHOWN = 10  # per rule; the oldest and newest, with the subtotal of those between


def _n(x: float) -> str:
    return f"{x:.2f}"


def _rule_detail(model: Model, c: RuleContribution) -> list[str]:
    rule = model.rule(c.rule_id)
    lines: list[str] = []
    if isinstance(rule, ProfileRule):
        state = "condition holds" if c.matched else "condition does not hold"
        lines.append(f"    {c.rule_id:<24}{_n(c.points):>9}   {state} ({_n(c.base_points)} pts)")
        return lines
    if isinstance(rule, InactivityRule):
        state = "inactive" if c.matched else "active"
        lines.append(
            f"    {c.rule_id:<24}{_n(c.points):>9}   {state}: {c.note} "
            f"(no activity for {rule.no_activity_days:g} days = {_n(c.base_points)} pts)"
        )
        return lines
    assert isinstance(rule, ActivityRule)
    if rule.count is not None or rule.trend is not None:
        state = "fires" if c.matched else "does not fire"
        lines.append(
            f"    {c.rule_id:<24}{_n(c.points):>9}   {state}: {c.note} "
            f"({_n(c.base_points)} pts once)"
        )
        return lines
    how = [f"{_n(rule.points)} pts per event"]
    if rule.frequency != "every":
        how.append(f"frequency {rule.frequency}")
    if rule.diminishing != 1.0:
        how.append(f"diminishing {rule.diminishing:g}")
    if rule.half_life_days is not None:
        how.append(f"half-life {rule.half_life_days:g} days")
    if rule.window_days is not None:
        how.append(f"window {rule.window_days:g} days")
    counted = len(c.events)
    lines.append(
        f"    {c.rule_id:<24}{_n(c.points):>9}   {counted} of {c.matching_events} matching "
        f"event(s) counted; {', '.join(how)}"
    )
    shown = list(c.events)
    hidden: list[CountedEvent] = []
    if len(shown) > MAX_EVENTS_SHOWN:
        half = MAX_EVENTS_SHOWN // 2
        hidden = shown[half:-half]
        shown = shown[:half] + shown[-half:]
    for n, e in enumerate(shown):
        if hidden and n == MAX_EVENTS_SHOWN // 2:
            subtotal = sum(h.points for h in hidden)
            lines.append(f"        ... {len(hidden)} more counted events worth {subtotal:.4f}")
        label = e.ts.strftime("%Y-%m-%d %H:%M")
        item = f" [{e.item}]" if e.item else ""
        lines.append(
            f"        #{e.k} {label} {e.type}{item}: {_n(e.base_points)} x {e.multiplier:.4f}"
            f" x decay {e.decay:.4f} (age {e.age_days:.1f} d) = {e.points:.4f}"
        )
    if c.clipped:
        cap = rule.max_points if c.clipped == "max_points" else rule.min_points
        lines.append(f"        sum {c.raw:.4f}, clipped by {c.clipped} {cap:g} -> {_n(c.points)}")
    return lines


def _chance(p: float) -> str:
    """As the explanation's line says it: "about 23%", "under 1%", "over 99%"."""
    if p < 0.01:
        return "under 1%" if p > 0 else "about 0%"
    if p > 0.99:
        return "over 99%" if p < 1 else "about 100%"
    return f"about {p:.0%}"


def explanation_text(model: Model, result: ScoreResult) -> str:
    """A plain-text breakdown whose numbers add up to the score."""
    as_of = result.as_of.isoformat().replace("+00:00", "Z")
    out = [
        f"Lead {result.lead_id or '(no id)'} - model {result.model}, as of {as_of}",
        f"Score {_n(result.score)} = fit {_n(result.fit)} + engagement {_n(result.engagement)}"
        + (
            f" (total {_n(result.raw_total)} clipped by the model's {result.total_clipped})"
            if result.total_clipped
            else ""
        ),
        f"Grade {result.grade or '-'}  band {result.band or '-'}  "
        f"MQL {'yes' if result.mql else 'no'}  priority {result.priority or '-'}",
    ]
    chance = model.probability(result.score)
    if chance is not None:
        out.append(f"Score {_n(result.score)}: {_chance(chance)} chance to convert")
    out.append("")
    by_group: dict[str, list[RuleContribution]] = {}
    for c in result.rules:
        by_group.setdefault(c.group, []).append(c)
    for g in result.groups:
        group = next(x for x in model.groups if x.id == g.group_id)
        extras = []
        if g.clipped:
            cap = group.max if g.clipped == "max" else group.min
            extras.append(f"rules sum {_n(g.raw)}, clipped to {g.clipped} {cap:g}")
        if g.weight != 1.0:
            extras.append(f"{_n(g.clipped_value)} x weight {g.weight:g}")
        extra = f"   ({'; '.join(extras)})" if extras else ""
        out.append(
            f"  {g.group_id} ({g.kind}){'':<{max(0, 19 - len(g.group_id) - len(g.kind))}}"
            f"{_n(g.points):>9}{extra}"
        )
        for c in by_group.get(g.group_id, []):
            out.extend(_rule_detail(model, c))
    if result.warnings:
        out.append("")
        out.extend(f"  warning: {w}" for w in result.warnings)
    return "\n".join(out)
