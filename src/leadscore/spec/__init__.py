"""The model file: schema, conditions, loading (no I/O beyond reading the model file)."""

from leadscore.spec.conditions import compile_condition, parse_number, to_text
from leadscore.spec.loading import load_model, load_models, model_json_schema, parse_model
from leadscore.spec.model import (
    ActivityRule,
    Group,
    InactivityRule,
    Model,
    ProfileRule,
    Rule,
)

__all__ = [
    "ActivityRule",
    "Group",
    "InactivityRule",
    "Model",
    "ProfileRule",
    "Rule",
    "compile_condition",
    "load_model",
    "load_models",
    "model_json_schema",
    "parse_model",
    "parse_number",
    "to_text",
]
