"""Closing the loop: how scores compare with what leads went on to do.

- :func:`build_report`: for leads scored at a reference time, conversion per band, grade and
  cell, lift and gains by decile, ROC AUC, precision and recall at the MQL threshold,
  calibration, per-rule insight and a suggested threshold;
- :func:`run_backtest`: replays history at cut-offs (one or two models side by side);
- :func:`drift`: the population stability index of scores between two dates.

This package uses the spec, the engine and the batch run over files or Arrow tables; it never
touches the store or the service (they call it).
"""

from leadscore.validation.outcomes import DEFAULT_CONVERSION, Conversion, conversion_times
from leadscore.validation.report import build_report, roc_auc

__all__ = ["DEFAULT_CONVERSION", "Conversion", "build_report", "conversion_times", "roc_auc"]
