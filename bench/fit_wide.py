"""Benchmark: `leadscore fit` on a wide generated leads file (many columns), where the search
for pairs of columns dominates.

    .venv/bin/python bench/fit_wide.py --columns 200 --rows 60000

Writes a seeded CSV (``--keep DIR`` keeps it) of ``--rows`` leads: a third of the columns
numbers (gamma-distributed amounts, some 40% zero), the rest text (3 to 12 values, a tenth of
them blank); ten columns carry the outcome (about 12% convert), one pair of them converts
together beyond what each says alone. Then runs ``fit_scorecard`` on it as ``leadscore fit``
does (read through ``prepare``) and prints when each stage the status line names began, the
total time and the peak memory of the process (its maximum resident set size), each time with
the CPU time beside it: other work on the machine stretches the first.
"""

from __future__ import annotations

import argparse
import csv
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(path: Path, columns: int, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    logit = np.full(rows, -2.6)
    data: dict[str, list[str]] = {"lead_id": [f"L{i:07d}" for i in range(rows)]}
    strong: list[np.ndarray] = []
    for k in range(columns):
        if k % 3 == 0:
            amount = np.where(rng.random(rows) < 0.4, 0.0, np.round(rng.gamma(2.0, 50.0, rows)))
            data[f"num{k}"] = [f"{v:g}" for v in amount]
            value = (amount > np.median(amount)).astype(float)
        else:
            levels = int(rng.integers(3, 13))
            codes = rng.integers(0, levels, rows)
            blank = rng.random(rows) < 0.1
            data[f"txt{k}"] = ["" if b else f"v{c}" for b, c in zip(blank, codes, strict=True)]
            value = (codes < levels // 2).astype(float) * ~blank
        if k < 10:  # the columns that matter
            logit += 0.5 * value
            strong.append(value)
    logit += 1.5 * strong[1] * strong[2]  # a pair that converts together
    converted = rng.random(rows) < 1 / (1 + np.exp(-logit))
    data["converted"] = ["yes" if c else "no" for c in converted]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(data))
        writer.writerows(zip(*data.values(), strict=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--columns", type=int, default=200)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--interactions", type=int, default=10)
    p.add_argument("--keep", type=Path, help="write the generated file into this directory")
    args = p.parse_args(argv)
    from leadscore.predictive.fit import fit_scorecard
    from leadscore.scoring import prepare

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        path = folder / f"wide-{args.columns}x{args.rows}.csv"
        generate(path, args.columns, args.rows)
        start, cpu_start = time.perf_counter(), time.process_time()

        def say(text: str) -> None:
            cpu = time.process_time() - cpu_start
            print(
                f"{time.perf_counter() - start:8.1f} s ({cpu:7.1f} s of CPU)  {text}",
                file=sys.stderr,
                flush=True,
            )

        prepared = prepare(path)
        say("read")
        result = fit_scorecard(
            prepared.leads,
            target_column="converted",
            interactions=args.interactions,
            progress=say,
        )
        total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024**2
    h = result.metrics["holdout"]
    pairs = sum(len(r.fields) == 2 for r in result.card.fitted_.rules)
    print(
        f"{args.columns} columns x {args.rows:,} rows: {total:.1f} s "
        f"({cpu:.1f} s of CPU), peak memory {peak:.2f} GB; "
        f"{result.metrics['rules']} rules ({pairs} on pairs), holdout ROC AUC "
        f"{h['roc_auc']:.3f}, calibration error {h['calibration_error']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
