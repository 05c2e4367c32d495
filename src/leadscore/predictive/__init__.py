"""Predictive scoring: the points of an ordinary, editable model, fitted to a team's conversions.

Needs the ``predict`` extra (scikit-learn): ``pip install 'leadscore[predict]'``. This package
uses the spec, the engine and the batch run over Arrow tables, never the store or the service.
"""

from leadscore.predictive.scorecard import MIN_CONVERSIONS, Rule, ScorecardClassifier

__all__ = ["MIN_CONVERSIONS", "Rule", "ScorecardClassifier"]
