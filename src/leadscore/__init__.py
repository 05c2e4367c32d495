"""leadscore: transparent, fast, testable lead scoring.

A scoring model is a YAML file (see docs/model.md). Load it, then score one lead with the
per-lead evaluator (explained point by point) or many with the batch evaluator (compiled to
SQL); both give the same numbers.

>>> import leadscore
>>> model = leadscore.parse_model('''
... version: 1
... name: tiny
... profile: [{id: vp, if: {field: title, contains: vp}, points: 10}]
... ''')
>>> leadscore.score_lead(model, {"title": "VP Sales"}, [], as_of="2026-06-30T00:00:00Z").score
10.0
"""

from leadscore.engine.batch import BatchPlan, compile_model
from leadscore.engine.explain import explanation_text
from leadscore.engine.lead import Event, score_lead
from leadscore.engine.result import CountedEvent, GroupContribution, RuleContribution, ScoreResult
from leadscore.errors import (
    InputError,
    InputProblem,
    LeadscoreError,
    ModelError,
    ModelIssue,
    UsageError,
)
from leadscore.examples import ExampleOutcome, run_examples
from leadscore.scoring import (
    PreparedInputs,
    ScoreRun,
    explain_lead,
    prepare,
    score_leads,
    score_run,
)
from leadscore.spec import Model, load_model, load_models, model_json_schema, parse_model

__version__ = "0.1.0"

__all__ = [
    "BatchPlan",
    "CountedEvent",
    "Event",
    "ExampleOutcome",
    "GroupContribution",
    "InputError",
    "InputProblem",
    "LeadscoreError",
    "Model",
    "ModelError",
    "ModelIssue",
    "PreparedInputs",
    "RuleContribution",
    "ScoreResult",
    "ScoreRun",
    "UsageError",
    "__version__",
    "compile_model",
    "explain_lead",
    "explanation_text",
    "load_model",
    "load_models",
    "model_json_schema",
    "parse_model",
    "prepare",
    "run_examples",
    "score_lead",
    "score_leads",
    "score_run",
]
