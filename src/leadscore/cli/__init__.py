"""The ``leadscore`` command line. Errors become ``Error: ...`` and an exit code:

- 0: done (for ``validate``/``test``: everything valid / every example passed);
- 1: a model or input is invalid, or a model example failed;
- 2: the command was called wrongly (unknown option, bad ``--as-of``, unknown lead).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import wraps
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.table import Table

import leadscore
from leadscore.engine.explain import explanation_text
from leadscore.errors import InputError, LeadscoreError, ModelError, UsageError
from leadscore.examples import run_examples
from leadscore.inputs import csv_text
from leadscore.scoring import explain_lead, prepare, score_run
from leadscore.spec import Model, load_model, load_models, model_json_schema

app = typer.Typer(
    name="leadscore",
    help="Transparent lead scoring: models as YAML, every point explained.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False, soft_wrap=True)
WIDE = 220  # columns a table may use when the output is not a terminal (a file, a pipe)
if not out.is_terminal and "COLUMNS" not in os.environ:  # rich would wrap tables at 80
    out.width = WIDE
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"leadscore {leadscore.__version__}", markup=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Transparent lead scoring: models as YAML, every point explained."""


F = TypeVar("F", bound=Callable[..., Any])


def _edge(func: F) -> F:
    """Turn leadscore's own errors into a message and an exit code, never a traceback. Notes
    an error carries (what a publish that stopped part way left: Store.publish) follow its
    message."""

    def fail(code: int, exc: BaseException) -> NoReturn:
        for note in getattr(exc, "__notes__", ()):
            err.print(f"  {note}", markup=False)
        raise typer.Exit(code) from None

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ModelError as exc:
            err.print(
                f"Error: the model is invalid ({_count(len(exc.issues), 'problem')}):", markup=False
            )
            for issue in exc.issues:
                err.print(f"  {issue}", markup=False)
            fail(1, exc)
        except InputError as exc:
            err.print("Error: the input cannot be used:", markup=False)
            for problem in exc.problems:
                err.print(f"  {problem}", markup=False)
            if exc.hint:
                err.print(f"  {exc.hint}", markup=False)
            fail(1, exc)
        except UsageError as exc:
            err.print(f"Error: {exc}", markup=False)
            fail(2, exc)
        except LeadscoreError as exc:
            err.print(f"Error: {exc}", markup=False)
            fail(1, exc)
        except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
            _quiet_stdout()
            raise typer.Exit(141) from None
        except OSError as exc:  # a file or directory that cannot be written, a full disk...
            where = f"{exc.filename}: " if exc.filename else ""
            err.print(f"Error: {where}{exc.strerror or exc}", markup=False)
            fail(1, exc)
        except KeyboardInterrupt as exc:
            err.print("interrupted", markup=False)
            fail(130, exc)
        except Exception as exc:
            if _interrupted(exc):  # what Ctrl-C broke on its way out (a closed connection,
                err.print("interrupted", markup=False)  # DuckDB's interrupted query)
                fail(130, exc)
            refused = database_refusal(exc)
            if refused is None:
                raise
            err.print(f"Error: {refused}", markup=False)
            fail(1, exc)

    return wrapper  # type: ignore[return-value]


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` came of Ctrl-C: a KeyboardInterrupt in its chain, or the error DuckDB
    raises for a query it was told to stop."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt) or "Query interrupted" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def database_refusal(exc: BaseException) -> str | None:
    """What a database said when it refused (a file that is no database, one that is read
    only, a value it cannot keep), for a message; None for an error of another kind."""
    orig = getattr(exc, "orig", None)
    if orig is None or not type(exc).__module__.startswith("sqlalchemy"):
        return None
    said = str(orig).strip().splitlines()
    return f"the database refused: {said[0] if said else type(orig).__name__}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second error."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


ModelsArg = Annotated[
    list[Path], typer.Argument(help="Model files, or directories of them (one sheet each).")
]
LeadsOpt = Annotated[Path, typer.Option("--leads", help="Leads file: CSV, Parquet or JSON lines.")]
EventsOpt = Annotated[
    Path | None, typer.Option("--events", help="Events file: CSV, Parquet or JSON lines.")
]
AsOfOpt = Annotated[
    str | None,
    typer.Option(
        "--as-of", help="Score as of this instant (ISO 8601; no zone = UTC). Default: now."
    ),
]
IdOpt = Annotated[
    str, typer.Option("--lead-id-column", help="The column holding the lead id (in both files).")
]
SkipOpt = Annotated[
    bool,
    typer.Option("--skip-bad-rows", help="Leave out unusable rows (reported) instead of stopping."),
]


@app.command()
@_edge
def validate(models: ModelsArg) -> None:
    """Check model files; every problem is listed as file:line: path: message."""
    failed = 0
    for path in models:
        try:
            loaded = load_models([path])
        except ModelError as exc:
            failed += 1
            err.print(f"invalid: {path} ({_count(len(exc.issues), 'problem')})", markup=False)
            for issue in exc.issues:
                err.print(f"  {issue}", markup=False)
            continue
        for m in loaded:
            out.print(
                f"ok: {m.source} (sheet {m.name}: {_count(len(m.rules), 'rule')} in "
                f"{_count(len(m.groups), 'group')}, {_count(len(m.examples), 'example')})",
                markup=False,
            )
    if failed:
        raise typer.Exit(1)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _infer_format(output: Path | None, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("csv", "parquet", "json", "jsonl"):
            raise UsageError(f"--format must be csv, parquet, json or jsonl, not {fmt!r}")
        if fmt == "parquet" and output is None:
            raise UsageError("--format parquet needs --output FILE")
        return fmt
    if output is None:
        return "table"
    suffix = output.suffix.lower().lstrip(".")
    known = {"": "csv", "csv": "csv", "parquet": "parquet", "pq": "parquet"}
    known |= {"json": "json", "jsonl": "jsonl"}
    if suffix not in known:  # .xlsx would get CSV, .gz plain text
        raise UsageError(
            f"--output {output.name}: the format cannot be told from .{suffix}; name the file "
            ".csv, .parquet, .json or .jsonl, or give --format"
        )
    return known[suffix]


def _write(table: pa.Table, output: Path | None, fmt: str) -> None:
    if fmt == "parquet":
        if output is None:
            raise UsageError("--format parquet needs --output FILE")
        pq.write_table(table, output)
        return
    if fmt == "csv":
        text = csv_text(table)
    elif fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in table.to_pylist())
    else:
        text = json.dumps(table.to_pylist(), indent=1) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


def _band_counts(table: pa.Table, column: str, model: Model) -> list[tuple[str, int]]:
    """Leads per band, the model's highest band first (every band, none left out for want
    of leads); leads in no band (a model without bands, or below its lowest) last, as -."""
    found = {
        c["values"]: int(c["counts"]) for c in pc.value_counts(table.column(column)).to_pylist()
    }
    counts = [(name, found.pop(name, 0)) for name, _ in reversed(model.bands)]
    return counts + [(str(b) if b is not None else "-", n) for b, n in found.items()]


def _print_top(table: pa.Table, model: Model, sheet_prefix: str, top: int, title: str) -> None:
    col = f"{sheet_prefix}score"
    order = pc.sort_indices(table, sort_keys=[(col, "descending"), ("lead_id", "ascending")])
    best = table.take(order[:top]).to_pylist()
    view = Table(title=title, title_justify="left")
    for name in ("lead", "score", "fit", "engagement", "grade", "band", "MQL", "priority"):
        view.add_column(name, justify="right" if name in ("score", "fit", "engagement") else "left")
    for r in best:
        p = sheet_prefix
        view.add_row(
            str(r["lead_id"]),
            f"{r[p + 'score']:.1f}",
            f"{r[p + 'fit']:.1f}",
            f"{r[p + 'engagement']:.1f}",
            str(r[p + "grade"] or "-"),
            str(r[p + "band"] or "-"),
            "yes" if r[p + "mql"] else "",
            str(r[p + "priority"] or ""),
        )
    out.print(view)
    bands = _band_counts(table, f"{sheet_prefix}band", model)
    counts = ", ".join(f"{b}: {n:,}" for b, n in bands)
    mqls = pc.sum(table.column(f"{sheet_prefix}mql").cast(pa.int64())).as_py() or 0
    out.print(f"{_count(table.num_rows, 'lead')}; bands: {counts}; MQLs: {mqls:,}", markup=False)


@app.command()
@_edge
def score(
    models: ModelsArg,
    leads: LeadsOpt,
    events: EventsOpt = None,
    as_of: AsOfOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write every lead's scores here.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="csv, parquet, json or jsonl (default: from --output)."),
    ] = None,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
    top: Annotated[int, typer.Option(min=1, help="Leads shown without --output.")] = 20,
) -> None:
    """Score every lead. Without --output, show the top leads and the band counts."""
    loaded = load_models(models)
    kind = _infer_format(output, fmt)
    with err.status("reading inputs...") if err.is_terminal else _Quiet():
        prepared = prepare(
            leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows
        )
    n_events = prepared.events.num_rows
    label = f"scoring {prepared.leads.num_rows} leads, {n_events} events..."
    with err.status(label) if err.is_terminal else _Quiet():
        run = score_run(loaded, prepared, as_of)
    for w in run.warnings:
        err.print(f"warning: {w}", markup=False)
    if kind == "table":
        stamp = run.as_of.isoformat().replace("+00:00", "Z")
        for m in loaded:
            prefix = f"{m.name}." if len(loaded) > 1 else ""
            _print_top(run.table, m, prefix, top, f"Top leads - sheet {m.name}, as of {stamp}")
        return
    _write(run.table, output, kind)
    if output is not None:
        err.print(f"wrote {run.table.num_rows} leads to {output}", markup=False)


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@app.command()
@_edge
def explain(
    model: Annotated[Path, typer.Argument(help="The model file.")],
    lead_id: Annotated[str, typer.Argument(help="The lead to explain.")],
    leads: LeadsOpt,
    events: EventsOpt = None,
    as_of: AsOfOpt = None,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON.")] = False,
) -> None:
    """Show where every point of one lead's score came from."""
    m = load_model(model)
    prepared = prepare(leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows)
    result = explain_lead(m, prepared, lead_id, as_of)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=1) + "\n")
    else:
        out.print(explanation_text(m, result), markup=False)


@app.command("test")
@_edge
def test_models(models: ModelsArg) -> None:
    """Run the models' `examples:` (given a lead and events, expect these results)."""
    loaded = load_models(models)
    failures = total = 0
    for m in loaded:
        for outcome in run_examples(m):
            total += 1
            if outcome.passed:
                out.print(f"PASS {m.name}: {outcome.name}", markup=False)
            else:
                failures += 1
                out.print(f"FAIL {m.name}: {outcome.name}", markup=False)
                for line in outcome.problems:
                    out.print(f"    {line}", markup=False)
    if total == 0:
        out.print("no examples to run (add `examples:` to the model)", markup=False)
    out.print(f"{total - failures} passed, {failures} failed", markup=False)
    if failures:
        raise typer.Exit(1)


@app.command()
@_edge
def schema() -> None:
    """Print the model file's JSON Schema (for editors and YAML language servers)."""
    sys.stdout.write(json.dumps(model_json_schema(), indent=2) + "\n")


def _shipped(name: str) -> str:
    return resources.files("leadscore").joinpath("models", name).read_text(encoding="utf-8")


@app.command()
@_edge
def init(
    directory: Annotated[Path, typer.Argument(help="Where to write the starter project.")],
    leads_count: Annotated[
        int, typer.Option("--leads", min=1, help="Sample leads to generate.")
    ] = 500,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write the default B2B model, the BANT template and sample data to DIRECTORY."""
    from leadscore.sample import DEFAULT_AS_OF, generate_events, generate_leads, generate_outcomes

    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    names = ("model.yaml", "bant.yaml", "leads.csv", "events.csv", "outcomes.csv")
    targets = [directory / n for n in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise UsageError(f"would overwrite {', '.join(existing)} (use --force)")
    (directory / "model.yaml").write_text(_shipped("b2b-default.yaml"), encoding="utf-8")
    (directory / "bant.yaml").write_text(_shipped("bant.yaml"), encoding="utf-8")
    lead_table = generate_leads(leads_count, seed=1)
    event_table = generate_events(lead_table, leads_count * 20, DEFAULT_AS_OF, seed=1)
    (directory / "leads.csv").write_text(csv_text(lead_table), encoding="utf-8")
    (directory / "events.csv").write_text(csv_text(event_table), encoding="utf-8")
    outcome_table = generate_outcomes(lead_table, event_table, DEFAULT_AS_OF, seed=1)
    (directory / "outcomes.csv").write_text(csv_text(outcome_table), encoding="utf-8")
    stamp = DEFAULT_AS_OF.isoformat().replace("+00:00", "Z")
    out.print(f"wrote {', '.join(str(t) for t in targets)}", markup=False)
    out.print("next:", markup=False)
    d = directory
    out.print(f"  leadscore validate {d / 'model.yaml'}", markup=False)
    out.print(f"  leadscore test {d / 'model.yaml'}", markup=False)
    out.print(
        f"  leadscore score {d / 'model.yaml'} --leads {d / 'leads.csv'} "
        f"--events {d / 'events.csv'} --as-of {stamp}",
        markup=False,
    )
    out.print(
        f"  leadscore report {d / 'model.yaml'} --leads {d / 'leads.csv'} "
        f"--events {d / 'events.csv'} --outcomes {d / 'outcomes.csv'} --as-of {stamp}",
        markup=False,
    )


@app.command()
@_edge
def demo(
    leads_count: Annotated[int, typer.Option("--leads", min=1, help="Leads to generate.")] = 20_000,
    events_count: Annotated[
        int, typer.Option("--events", min=0, help="Events to generate.")
    ] = 400_000,
    seed: Annotated[int, typer.Option(help="Generator seed.", min=0)] = 7,
    keep: Annotated[
        Path | None, typer.Option(help="Keep the generated data in this directory.")
    ] = None,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve",
            help="Instead: load the data into a store, start the service and stream events.",
        ),
    ] = False,
    port: Annotated[int, typer.Option(help="With --serve: the port.", min=1, max=65535)] = 8000,
    db: Annotated[
        Path, typer.Option(help="With --serve: the demo store (a SQLite file, recreated).")
    ] = Path("leadscore-demo.db"),
    rate: Annotated[float, typer.Option(help="With --serve: streamed events per second.")] = 5.0,
) -> None:
    """Generate realistic sample data, score it with the default model, show the top leads.

    With --serve: load it into a store, start the service and stream live events.
    """
    if serve:
        from leadscore.cli.demo_server import run_demo_server

        run_demo_server(
            db, port, leads_count, events_count, seed, rate, lambda s: out.print(s, markup=False)
        )
        return
    from leadscore.sample import DEFAULT_AS_OF, write_sample

    workdir = keep or Path(tempfile.mkdtemp(prefix="leadscore-demo-"))
    try:
        err.print(f"generating {leads_count} leads and {events_count} events...", markup=False)
        files = write_sample(
            workdir, leads_count, events_count, DEFAULT_AS_OF, seed=seed, progress=err.is_terminal
        )
        with resources.as_file(resources.files("leadscore").joinpath("models")) as models_dir:
            model = load_model(models_dir / "b2b-default.yaml")
        prepared = prepare(files.leads, files.events)
        run = score_run(model, prepared, DEFAULT_AS_OF)
        stamp = DEFAULT_AS_OF.isoformat().replace("+00:00", "Z")
        _print_top(run.table, model, "", 10, f"Top leads - default B2B model, as of {stamp}")
        best = run.table.take(pc.sort_indices(run.table, [("score", "descending")])[:1])
        lead_id = best.column("lead_id")[0].as_py()
        out.print("", markup=False)
        out.print("How the top lead earned its score:", markup=False)
        out.print(
            explanation_text(model, explain_lead(model, prepared, lead_id, DEFAULT_AS_OF)),
            markup=False,
        )
        if keep:
            out.print(f"\ndata kept in {workdir}", markup=False)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


# The service and store commands register themselves on `app` (they need its error edge).
from leadscore.cli import predictive as _predictive_commands  # noqa: E402
from leadscore.cli import service as _service_commands  # noqa: E402
from leadscore.cli import validation as _validation_commands  # noqa: E402

__all__ = ["app", "main"]
_ = _service_commands, _validation_commands, _predictive_commands


def main() -> None:
    """Entry point of the ``leadscore`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
