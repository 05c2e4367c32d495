"""The batch evaluator: a model compiled once to an Ibis expression over two tables.

:func:`compile_model` builds an expression over two *unbound* tables (by default named
``leads`` and ``events``) and an ``as_of`` parameter, so one compiled plan runs for any data and
any instant on DuckDB (the default), and compiles to SQL for other Ibis backends.

The tables it expects (the :mod:`leadscore.scoring` layer prepares them from files):

- ``leads``: ``lead_id`` and every profile field the model reads, all text;
- ``events``: ``lead_id``, ``type``, ``ts_us`` (int64 microseconds since the epoch, UTC),
  ``item`` and every field a ``where`` reads, all text.

Fields are columns named by :func:`lead_column` and :func:`event_column`, and rules and groups
are named inside the plan the same way: DuckDB matches names ignoring case, even quoted ones, so
a model reading both ``Region`` and ``region`` (or with rules ``Web`` and ``web``) would read
one column for both.

Each rule is computed the way MODEL_SPEC.md says. Rules that count every event without
diminishing returns, ``once`` rules and inactivity rules share one aggregate pass over the
events. Rules whose counted events need a rank (``diminishing``, ``once_per_item``) are a pass
each over their own matches only: ``once_per_item`` keeps each item's latest match first, then
both number the counted events in time order. Events at the same instant have the same age, so
the order among them cannot change a sum.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import ibis
import ibis.expr.types as ir
import pyarrow as pa
from ibis.expr.operations import UnboundTable

from leadscore.engine.timeutil import now_micros
from leadscore.spec.conditions import (
    NUMBER_PATTERN,
    NUMERIC_OPERATORS,
    WHITESPACE,
    AllCondition,
    AnyCondition,
    Condition,
    FieldCondition,
    NotCondition,
    condition_fields,
    operand_texts,
    parse_number,
    walk_fields,
)
from leadscore.spec.model import (
    COUNT_TESTS,
    FALLBACK_GRADE,
    ActivityRule,
    InactivityRule,
    Model,
    ProfileRule,
    Rule,
)

__all__ = [
    "BatchPlan",
    "column_name",
    "compile_model",
    "event_column",
    "lead_column",
    "output_columns",
    "plan_for",
]

MICROS_PER_DAY_F = 86_400_000_000.0
RESERVED_EVENT_COLUMNS = ("lead_id", "type", "ts_us", "item")

Column = Callable[[str], ir.StringValue]


def column_name(name: str) -> str:
    """``name`` written so that names differing only in case stay apart in SQL: an upper-case
    ASCII letter as ``^`` and the letter in lower case, other letters with a case as
    ``^#<hex code point>;``, ``^`` as ``^^`` (``Region`` -> ``^region``; one name per name)."""
    out = []
    for c in name:
        if c == "^":
            out.append("^^")
        elif c.isascii():
            out.append("^" + c.lower() if c.isupper() else c)
        elif c.lower() != c.upper():
            out.append(f"^#{ord(c):x};")
        else:
            out.append(c)
    return "".join(out)


def lead_column(field: str) -> str:
    """The ``leads`` table's column holding a profile field (``lead_id`` is itself)."""
    return field if field == "lead_id" else "f:" + column_name(field)


def event_column(field: str) -> str:
    """The ``events`` table's column holding a field a ``where`` reads."""
    return field if field in RESERVED_EVENT_COLUMNS else "f:" + column_name(field)


def output_columns(model: Model) -> list[str]:
    """The columns of a plan's result, in order."""
    cols = ["lead_id", "score", "fit", "engagement", "grade", "band", "mql", "priority"]
    cols += [f"group:{_key(g.id)}" for g in model.groups]
    cols += [f"rule:{_key(r.id)}" for r in model.rules]
    return cols


@dataclass(frozen=True)
class BatchPlan:
    """A model compiled for the batch evaluator. Build with :func:`compile_model`."""

    model: Model
    lead_fields: tuple[str, ...]
    event_fields: tuple[str, ...]
    expr: ir.Table
    as_of: ir.Scalar
    leads_table: str
    events_table: str

    def execute(self, con: Any, as_of_us: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Run on an Ibis backend holding the two tables; one row per lead, as Arrow
        (only ``columns``, when given: a backtest needs ``lead_id`` and ``mql``).

        On DuckDB the SQL rendered once per plan runs directly (Ibis would compile the
        expression again on every call, which costs more than scoring a million events), after
        registering the plan's Python functions (``matches``) on the connection as Ibis does.
        """
        raw = getattr(con, "con", None)
        schema = self._arrow_schema
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        register = getattr(con, "_register_udfs", None)  # Ibis 12's (pinned), for `matches`
        on_duckdb = getattr(con, "name", "") == "duckdb"
        if raw is not None and on_duckdb and (not self.uses_udfs or register is not None):
            if self.uses_udfs:
                assert register is not None
                register(self.expr)  # the Python functions the rendered SQL calls by name
            sql = self._duckdb_sql.replace(str(_AS_OF_SENTINEL), str(int(as_of_us)))
            if columns is not None:
                picked = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
                sql = f"SELECT {picked} FROM ({sql}) AS scored"
            relation = raw.sql(sql)
            fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
            # Ibis writes float literals bare (15.0) and DuckDB reads them as DECIMAL; like
            # Ibis's own execute, give the columns the plan's types.
            table: pa.Table = fetch().cast(schema)
            return table
        expr = self.expr if columns is None else self.expr.select(*columns)
        result: pa.Table = con.to_pyarrow(expr, params={self.as_of: as_of_us})
        return result

    @property
    def uses_udfs(self) -> bool:
        """Whether the plan calls Python UDFs (``matches``), which Ibis registers on execute."""
        return any(f.operator == "matches" for r in self.model.rules for f in _field_conditions(r))

    @cached_property
    def _arrow_schema(self) -> pa.Schema:
        return self.expr.schema().to_pyarrow()

    @cached_property
    def _duckdb_sql(self) -> str:
        return self.sql("duckdb", _AS_OF_SENTINEL)

    def bind(self, leads: ir.Table, events: ir.Table) -> ir.Table:
        """The plan over a user's own Ibis tables, ready to execute on their backend.

        Only DuckDB is tested; ``matches`` compiles to a Python UDF that only DuckDB runs.

        ``leads`` needs ``lead_id``; ``events`` needs ``lead_id``, ``type`` and ``ts`` (a
        timestamp), optionally ``item``. Columns the model reads are cast to text by the
        backend; missing ones count as missing values. Run the result with
        ``expr.to_pyarrow(params={plan.as_of: as_of_us})``.
        """

        def text(table: ir.Table, name: str) -> ir.StringValue:
            if name in table.columns:
                return table[name].cast("string")
            return ibis.null("string")

        lead_view = leads.select(
            lead_id=leads.lead_id.cast("string").strip(),
            **{lead_column(f): text(leads, f) for f in self.lead_fields},
        )
        epoch = ibis.timestamp("1970-01-01 00:00:00+00:00")
        event_view = events.select(
            lead_id=events.lead_id.cast("string").strip(),
            type=events.type.cast("string").strip(),
            ts_us=events.ts.delta(epoch, unit="microsecond"),
            item=text(events, "item"),
            **{event_column(f): text(events, f) for f in self.event_fields},
        )
        root = self.expr.op()
        replacements = {
            node: (lead_view if node.name == self.leads_table else event_view).op()
            for node in root.find(UnboundTable)
        }
        bound: ir.Table = root.replace(replacements).to_expr()
        return bound

    def sql(self, dialect: str = "duckdb", as_of_us: int | None = None) -> str:
        """The plan as SQL text for an Ibis dialect, as of ``as_of_us`` (default: now)."""
        when = now_micros() if as_of_us is None else as_of_us
        root = self.expr.op()
        fixed = root.replace({self.as_of.op(): ibis.literal(when, "int64").op()}).to_expr()
        return str(ibis.to_sql(fixed, dialect=dialect))


# Compiling a model and rendering its SQL costs far more than scoring a store's leads (about
# 0.7 s for the default model): the service's reports, previews and rescoring, which score the
# same few models again and again, compile each once per process.
_PLANS: dict[str, BatchPlan] = {}
_PLANS_KEPT = 64


def plan_for(model: Model) -> BatchPlan:
    """:func:`compile_model` for the default table names, once per process for a model's
    content (the plan, and the SQL it renders, are kept: at most 64 models)."""
    # Not model_dump_json(): it writes inf, -inf and None alike (null), and `mql: -.inf` is
    # not `mql: .inf`.
    key = json.dumps(model.spec.model_dump(), sort_keys=True, allow_nan=True, default=repr)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= _PLANS_KEPT:
            _PLANS.clear()
        plan = _PLANS[key] = compile_model(model)
    return plan


def compile_model(
    model: Model, leads_table: str = "leads", events_table: str = "events"
) -> BatchPlan:
    """Compile ``model`` once; run the plan with :meth:`BatchPlan.execute`."""
    lead_fields: list[str] = []
    event_fields: list[str] = []
    for r in model.rules:
        if isinstance(r, ProfileRule):
            lead_fields += [f for f in condition_fields(r.condition) if f != "lead_id"]
        elif isinstance(r, ActivityRule) and r.where is not None:
            event_fields += [
                f for f in condition_fields(r.where) if f not in RESERVED_EVENT_COLUMNS
            ]
    lead_fields = list(dict.fromkeys(lead_fields))
    event_fields = list(dict.fromkeys(event_fields))

    leads = ibis.table(
        {"lead_id": "string", **{lead_column(f): "string" for f in lead_fields}}, name=leads_table
    )
    events = ibis.table(
        {
            "lead_id": "string",
            "type": "string",
            "ts_us": "int64",
            "item": "string",
            **{event_column(f): "string" for f in event_fields},
        },
        name=events_table,
    )
    as_of = ibis.param("int64")
    builder = _Builder(model, leads, events, as_of)
    return BatchPlan(
        model=model,
        lead_fields=tuple(lead_fields),
        event_fields=tuple(event_fields),
        expr=builder.build(),
        as_of=as_of,
        leads_table=leads_table,
        events_table=events_table,
    )


# --- conditions as SQL --------------------------------------------------------------------------

_NUMBER_FULL = f"^{NUMBER_PATTERN}$"


def _number(v: ir.StringValue) -> ir.FloatingValue:
    trimmed = v.strip()
    as_float: ir.FloatingValue = trimmed.try_cast("float64")
    return ibis.ifelse(trimmed.re_search(_NUMBER_FULL), as_float, ibis.null("float64"))


def _present(v: ir.StringValue) -> ir.BooleanValue:
    return v.notnull() & (v.strip() != "")


_REGEX_UDFS: dict[str, Any] = {}


def _regex_udf(pattern: str) -> Any:
    """Python's ``re`` inside DuckDB, so ``matches`` means exactly what it means in Python."""
    if pattern not in _REGEX_UDFS:
        compiled = re.compile(pattern, re.IGNORECASE)

        def search(value: str | None) -> bool:
            if value is None:
                return False
            s = value.strip(WHITESPACE)
            return s != "" and compiled.search(s) is not None

        # named by the pattern: plans render SQL that calls it by name, and two threads
        # compiling different patterns at once must not get the same name
        name = "leadscore_re_" + hashlib.sha256(pattern.encode()).hexdigest()[:16]
        _REGEX_UDFS[pattern] = ibis.udf.scalar.python(search, name=name, signature=((str,), bool))
    return _REGEX_UDFS[pattern]


def _field_expr(cond: FieldCondition, col: Column) -> ir.BooleanValue:
    v = col(cond.field)
    op, operand = cond.operator, cond.operand
    if op in ("exists", "missing"):
        want_present = (op == "exists") == bool(operand)
        return _present(v) if want_present else ~_present(v)
    if op == "matches":
        return _regex_udf(operand)(v).fill_null(False)
    # The positive operators below need no presence test: their operands are never empty
    # (the schema says so), so a missing or blank value matches none of them, and NULL
    # comparisons fill to false. Fewer trims per row is most of the batch's speed on leads.
    if op in NUMERIC_OPERATORS:
        x = _number(v)  # NULL when missing or not a number
        if op == "between":
            return x.between(float(operand[0]), float(operand[1])).fill_null(False)
        bound = float(operand)
        test = {"gt": x > bound, "gte": x >= bound, "lt": x < bound, "lte": x <= bound}[op]
        return test.fill_null(False)
    s = v.strip().lower()
    if op in ("eq", "ne", "in", "not_in"):
        texts = operand_texts(operand)
        numbers = [parse_number(t) for t in texts]
        if all(n is None for n in numbers):
            any_hit = s.isin(texts)
        else:
            x = _number(v)
            hits = [
                s == text if number is None else ibis.ifelse(x.notnull(), x == number, s == text)
                for text, number in zip(texts, numbers, strict=True)
            ]
            any_hit = _or(hits)
        if op in ("eq", "in"):
            # `eq: ""` is the one empty operand the schema allows: keep the presence test
            guarded = any_hit if all(texts) else _present(v) & any_hit
            return guarded.fill_null(False)
        return (_present(v) & ~any_hit).fill_null(False)
    needles = operand_texts(operand)
    if op == "contains":
        # a trimmed needle found in the value lies inside its trimmed text
        return _or([v.lower().contains(n) for n in needles]).fill_null(False)
    if op == "starts_with":
        # a trimmed needle that starts the value starts it with or without trailing space
        head = v.lstrip().lower()
        return _or([head.startswith(n) for n in needles]).fill_null(False)
    if op == "ends_with":
        tail = v.rstrip().lower()
        return _or([tail.endswith(n) for n in needles]).fill_null(False)
    found = _or([s.contains(n) for n in needles])  # not_contains
    return (_present(v) & ~found).fill_null(False)


def _or(parts: list[ir.BooleanValue]) -> ir.BooleanValue:
    out = parts[0]
    for p in parts[1:]:
        out = out | p
    return out


def condition_expr(cond: Condition, col: Column) -> ir.BooleanValue:
    """A condition as a never-null boolean column expression."""
    if isinstance(cond, FieldCondition):
        return _field_expr(cond, col)
    if isinstance(cond, AllCondition):
        out = condition_expr(cond.all[0], col)
        for c in cond.all[1:]:
            out = out & condition_expr(c, col)
        return out
    if isinstance(cond, AnyCondition):
        return _or([condition_expr(c, col) for c in cond.any])
    assert isinstance(cond, NotCondition)
    return ~condition_expr(cond.not_, col)


# Stands for the as-of instant in SQL rendered once per plan; no real instant is this value.
_AS_OF_SENTINEL = 7_311_249_508_231_947_263


def _field_conditions(rule: Rule) -> list[FieldCondition]:
    cond = (
        rule.condition
        if isinstance(rule, ProfileRule)
        else (rule.where if isinstance(rule, ActivityRule) else None)
    )
    return [] if cond is None else list(walk_fields(cond))


def _ranked(rule: ActivityRule) -> bool:
    """Rules that need each counted event's rank (a pass of their own)."""
    if rule.count is not None or rule.trend is not None:
        return False  # counted in the shared aggregate pass
    return rule.frequency == "once_per_item" or (
        rule.frequency == "every" and rule.diminishing != 1.0
    )


def _num(value: float) -> ir.FloatingValue:
    """A DOUBLE literal. Ibis writes floats bare (15.0) and DuckDB reads those as DECIMAL,
    whose arithmetic differs from the per-lead evaluator's and can overflow; a cast from the
    value's exact text is the same double in every engine and is never folded away."""
    return ibis.literal(repr(float(value))).cast("float64")


def _age_days(as_of: ir.IntegerValue, ts_us: ir.IntegerValue) -> ir.FloatingValue:
    """(T - ts) in days from integer microseconds: the per-lead evaluator's exact division."""
    return (as_of - ts_us).cast("float64") / _num(MICROS_PER_DAY_F)


SUM_CHAIN = 100  # terms added one after another in one expression (see _sum)


def _sum(terms: Sequence[ir.FloatingValue]) -> ir.FloatingValue:
    """0.0 + each term in turn, as the per-lead evaluator adds a group's rules. A group of
    more than :data:`SUM_CHAIN` rules is added in runs of that many, whose sums are then added
    in turn: one chain of a thousand additions is an expression nested a thousand deep, which
    Ibis and SQLGlot walk recursively (Python's recursion limit: a RecursionError at about
    1,000 rules). The order differs from the per-lead evaluator's only in such groups, by
    rounding (well inside the 1e-9 the evaluators agree to)."""
    if len(terms) > SUM_CHAIN:
        runs = [terms[i : i + SUM_CHAIN] for i in range(0, len(terms), SUM_CHAIN)]
        return _sum([_sum(run) for run in runs])
    total: ir.FloatingValue = _num(0.0)
    for term in terms:
        total = total + term
    return total


def _clip(value: ir.FloatingValue, low: float | None, high: float | None) -> ir.FloatingValue:
    if low is not None:
        value = ibis.ifelse(value < low, _num(low), value)
    if high is not None:
        value = ibis.ifelse(value > high, _num(high), value)
    return value


# --- the plan -----------------------------------------------------------------------------------


class _Builder:
    def __init__(self, model: Model, leads: ir.Table, events: ir.Table, as_of: ir.Scalar):
        self.model = model
        self.leads = leads
        self.events = events
        self.as_of = as_of
        self.activity = [r for r in model.rules if isinstance(r, ActivityRule)]
        self.inactivity = [r for r in model.rules if isinstance(r, InactivityRule)]

    def visible_events(self) -> ir.Table:
        e = self.events
        visible = e.filter(e.ts_us <= self.as_of)
        if all(r.events is not None for r in self.inactivity):
            visible = visible.filter(visible.type.isin(sorted(self.model.event_types)))
        age = _age_days(self.as_of, visible.ts_us)
        return visible.mutate(_age=age)

    def matches(self, rule: ActivityRule, ev: ir.Table) -> ir.BooleanValue:
        m = ev.type.isin(list(rule.events))
        if rule.window_days is not None:
            m = m & (ev._age < rule.window_days)
        if rule.where is not None:
            m = m & condition_expr(rule.where, lambda f: ev[event_column(f)])
        return m

    @staticmethod
    def decay(rule: ActivityRule, age: ir.FloatingValue) -> ir.FloatingValue | None:
        if rule.half_life_days is None:
            return None
        return _num(0.5).pow(age / _num(rule.half_life_days))

    def event_aggregates(self) -> ir.Table | None:
        ev = self.visible_events()
        flags: dict[str, ir.BooleanValue] = {}
        simple = [r for r in self.activity if not _ranked(r)]
        for r in simple:
            flags[f"_m:{_key(r.id)}"] = self.matches(r, ev)
        ev = ev.mutate(**flags) if flags else ev

        metrics: dict[str, ir.Value] = {}
        for r in simple:
            m = ev[f"_m:{_key(r.id)}"]
            if r.trend is not None:
                recent = ev._age < _num(r.trend.recent_days)
                earlier = (ev._age >= _num(r.trend.recent_days)) & (
                    ev._age < _num(r.trend.until_days)
                )
                metrics[f"_rc:{_key(r.id)}"] = ev.ts_us.count(where=m & recent)
                metrics[f"_bc:{_key(r.id)}"] = ev.ts_us.count(where=m & earlier)
                continue
            if r.count is not None:
                if r.frequency == "once_per_item":
                    key = ev.item.strip().fill_null("")
                    metrics[f"_n:{_key(r.id)}"] = key.nunique(where=m)
                else:
                    metrics[f"_n:{_key(r.id)}"] = ev.ts_us.count(where=m)
                continue
            decay = self.decay(r, ev._age)
            if r.frequency == "once":
                metrics[f"_last:{_key(r.id)}"] = ev.ts_us.max(where=m)
                continue
            # ifelse makes the constant a column, so it can be summed
            value: ir.FloatingValue = ibis.ifelse(m, _num(r.points), _num(0.0))
            if decay is not None:
                value = value * decay
            metrics[f"_raw:{_key(r.id)}"] = value.sum(where=m)
        for q in self.inactivity:
            if q.events is None:
                metrics[f"_last:{_key(q.id)}"] = ev.ts_us.max()
            else:
                metrics[f"_last:{_key(q.id)}"] = ev.ts_us.max(where=ev.type.isin(list(q.events)))
        if not metrics:
            return None
        return ev.group_by("lead_id").aggregate(**metrics)

    def ranked(self, rule: ActivityRule) -> ir.Table:
        """A rule whose counted events need their rank: only its matches are sorted."""
        ev = self.visible_events()
        ev = ev.filter(self.matches(rule, ev))
        if rule.frequency == "once_per_item":
            key = ev.item.strip().fill_null("")
            latest = ev.group_by([ev.lead_id, key.name("_item")]).aggregate(_ts=ev.ts_us.max())
        else:  # every, with diminishing returns
            latest = ev.select("lead_id", _ts=ev.ts_us)
        # 0 for the oldest counted event, 1 for the next, ... (ties share an age, so any
        # order among them gives the same sum)
        k = ibis.row_number().over(group_by=latest.lead_id, order_by=latest._ts)
        age = _age_days(self.as_of, latest._ts)
        value: ir.FloatingValue = ibis.ifelse(latest._ts.notnull(), _num(rule.points), _num(0.0))
        if rule.diminishing != 1.0:
            value = value * _num(rule.diminishing).pow(k)
        decay = self.decay(rule, age)
        if decay is not None:
            value = value * decay
        ranked = latest.mutate(_v=value)
        return ranked.group_by("lead_id").aggregate(**{f"_raw:{_key(rule.id)}": ranked._v.sum()})

    def build(self) -> ir.Table:
        model = self.model
        leads = self.leads
        table = leads
        agg = self.event_aggregates()
        if agg is not None:
            table = table.left_join(agg, "lead_id").select(
                leads, *[c for c in agg.columns if c != "lead_id"]
            )
        for a in self.activity:
            if _ranked(a):
                sub = self.ranked(a)
                table = table.left_join(sub, "lead_id").select(table, sub[f"_raw:{_key(a.id)}"])

        cols: dict[str, ir.Value] = {}
        for r in model.rules:
            if isinstance(r, ProfileRule):
                hit = condition_expr(r.condition, lambda f: _lead_col(table, lead_column(f)))
                cols[f"rule:{_key(r.id)}"] = ibis.ifelse(hit, _num(r.points), _num(0.0))
            elif isinstance(r, ActivityRule) and r.trend is not None:
                rc = table[f"_rc:{_key(r.id)}"].fill_null(0)
                bc = table[f"_bc:{_key(r.id)}"].fill_null(0)
                # the per-lead evaluator's comparison, operation for operation
                rises = rc.cast("float64") * _num(r.trend.baseline_days) >= (
                    _num(r.trend.ratio) * bc.cast("float64")
                ) * _num(r.trend.recent_days)
                fires = (rc >= r.trend.min_recent) & rises
                raw = ibis.ifelse(fires, _num(r.points), _num(0.0))
                cols[f"rule:{_key(r.id)}"] = _clip(raw, r.min_points, r.max_points)
            elif isinstance(r, ActivityRule) and r.count is not None:
                n = table[f"_n:{_key(r.id)}"].fill_null(0)
                if r.frequency == "once":
                    n = ibis.ifelse(n > 0, 1, 0)
                holds: ir.BooleanValue = ibis.literal(True)
                for op, value in r.count:
                    holds = holds & COUNT_TESTS[op](n, value)
                raw = ibis.ifelse(holds, _num(r.points), _num(0.0))
                cols[f"rule:{_key(r.id)}"] = _clip(raw, r.min_points, r.max_points)
            elif isinstance(r, ActivityRule):
                if r.frequency == "once":
                    last = table[f"_last:{_key(r.id)}"]
                    age = _age_days(self.as_of, last)
                    decay = self.decay(r, age)
                    once_value: ir.FloatingValue = _num(r.points)
                    if decay is not None:
                        once_value = once_value * decay
                    raw = ibis.ifelse(last.notnull(), once_value, _num(0.0))
                else:
                    raw = table[f"_raw:{_key(r.id)}"].fill_null(_num(0.0))
                cols[f"rule:{_key(r.id)}"] = _clip(raw, r.min_points, r.max_points)
            else:
                last = table[f"_last:{_key(r.id)}"]
                age = _age_days(self.as_of, last)
                inactive = last.isnull() | (age >= r.no_activity_days)
                cols[f"rule:{_key(r.id)}"] = ibis.ifelse(inactive, _num(r.points), _num(0.0))
        scored = table.select("lead_id", **cols)

        groups: dict[str, ir.Value] = {}
        for g in model.groups:
            raw_g = _sum([scored[f"rule:{_key(r.id)}"] for r in g.rules])
            groups[f"group:{_key(g.id)}"] = _clip(raw_g, g.min, g.max) * _num(g.weight)
        scored = scored.mutate(**groups)
        group = {g.id: scored[f"group:{_key(g.id)}"] for g in model.groups}
        total = _sum([group[g.id] for g in model.groups])
        fit = _sum([group[g.id] for g in model.groups if g.kind == "profile"])
        engagement = _sum([group[g.id] for g in model.groups if g.kind != "profile"])
        scored = scored.mutate(
            score=_clip(total, model.min, model.max), fit=fit, engagement=engagement
        )
        scored = scored.mutate(grade=self.grade(scored.fit), band=self.band(scored.score))
        mql = (
            scored.score >= model.mql_threshold
            if model.mql_threshold is not None
            else ibis.literal(False)
        )
        scored = scored.mutate(mql=mql, priority=self.priority(scored.grade, scored.band))
        named = [scored[c] for c in output_columns(model)[:8]]
        named += [scored[f"group:{_key(g.id)}"].name(f"group:{g.id}") for g in model.groups]
        named += [scored[f"rule:{_key(r.id)}"].name(f"rule:{r.id}") for r in model.rules]
        return scored.select(*named)

    def grade(self, fit: ir.FloatingValue) -> ir.StringValue:
        if not self.model.grades:
            return ibis.null("string")
        cases = [(fit >= threshold, name) for name, threshold in self.model.grades]
        return ibis.cases(*cases, else_=FALLBACK_GRADE)

    def band(self, total: ir.FloatingValue) -> ir.StringValue:
        if not self.model.bands:
            return ibis.null("string")
        cases = [(total >= lower, name) for name, lower in reversed(self.model.bands)]
        return ibis.cases(*cases, else_=ibis.null("string"))

    def priority(self, grade: ir.StringValue, band: ir.StringValue) -> ir.StringValue:
        cells = [
            ((grade == g) & (band == b), cell)
            for g, row in self.model.priority.items()
            for b, cell in row.items()
        ]
        if not cells:
            return ibis.null("string")
        return ibis.cases(*cells, else_=ibis.null("string"))


def _key(rule_or_group_id: str) -> str:
    return column_name(rule_or_group_id)


def _lead_col(table: ir.Table, name: str) -> ir.StringValue:
    return table[name] if name in table.columns else ibis.null("string")
