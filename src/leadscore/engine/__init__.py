"""Evaluators: per-lead (pure Python, explained) and batch (compiled to Ibis)."""

from leadscore.engine.lead import Event, score_lead
from leadscore.engine.result import CountedEvent, GroupContribution, RuleContribution, ScoreResult

__all__ = [
    "CountedEvent",
    "Event",
    "GroupContribution",
    "RuleContribution",
    "ScoreResult",
    "score_lead",
]
