from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from leadscore.sample import (
    DEFAULT_AS_OF,
    SampleFiles,
    generate_events,
    generate_leads,
    generate_outcomes,
    write_sample,
)

AS_OF = DEFAULT_AS_OF
N_LEADS = 4_000
N_EVENTS = 100_000
SEED = 7
US_PER_DAY = 86_400_000_000


@pytest.fixture(scope="module")
def data() -> tuple[pa.Table, pa.Table, pa.Table]:
    leads = generate_leads(N_LEADS, SEED)
    events = generate_events(leads, N_EVENTS, AS_OF, SEED)
    return leads, events, generate_outcomes(leads, events, AS_OF, SEED)


def _us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _ts(table: pa.Table) -> np.ndarray:
    return np.asarray(pc.cast(table.column("ts"), pa.int64()).to_numpy(), dtype=np.int64)


def _lead_index(leads: pa.Table, table: pa.Table) -> np.ndarray:
    idx = pc.index_in(table.column("lead_id"), value_set=leads.column("lead_id"))
    return np.asarray(idx.to_numpy(zero_copy_only=False))


def _strings(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False))


def test_deterministic_and_seed_dependent() -> None:
    leads = generate_leads(500, 3)
    events = generate_events(leads, 5_000, AS_OF, 3)
    assert leads.equals(generate_leads(500, 3))
    assert events.equals(generate_events(generate_leads(500, 3), 5_000, AS_OF, 3))
    outcomes = generate_outcomes(leads, events, AS_OF, 3)
    assert outcomes.equals(generate_outcomes(leads, events, AS_OF, 3))
    assert not leads.equals(generate_leads(500, 4))
    assert not events.equals(generate_events(leads, 5_000, AS_OF, 4))


def test_schemas_and_counts(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads, events, outcomes = data
    assert leads.num_rows == N_LEADS
    assert events.num_rows == N_EVENTS
    string_cols = ["lead_id", "email", "first_name", "last_name", "company", "job_title"]
    string_cols += ["industry", "country", "phone", "budget", "authority", "need", "timeframe"]
    expected = {c: pa.string() for c in string_cols} | {
        "employees": pa.int64(),
        "annual_revenue": pa.int64(),
    }
    assert dict(zip(leads.schema.names, leads.schema.types, strict=True)) == expected
    assert leads.schema.names[:2] == ["lead_id", "email"]
    ts_type = pa.timestamp("us", tz="UTC")
    assert events.schema == pa.schema(
        [
            ("lead_id", pa.string()),
            ("type", pa.string()),
            ("ts", ts_type),
            ("item", pa.string()),
            ("url", pa.string()),
            ("event_id", pa.string()),
        ]
    )
    assert outcomes.schema == pa.schema(
        [
            ("lead_id", pa.string()),
            ("outcome", pa.string()),
            ("ts", ts_type),
            ("amount", pa.float64()),
        ]
    )


def test_leads_look_realistic(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads = data[0]
    ids = leads.column("lead_id").to_pylist()
    assert ids[0] == "L0000001" and ids[-1] == f"L{N_LEADS:07d}" and len(set(ids)) == N_LEADS
    emails = _strings(leads, "email")
    assert all(re.fullmatch(r"[a-z_.0-9]+@[a-z0-9.]+\.[a-z]+", e) for e in emails)
    domains = np.array([e.split("@")[1] for e in emails])
    titles = _strings(leads, "job_title")
    free = np.isin(domains, ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com"])
    assert 0.05 < free.mean() < 0.4
    edu = np.char.endswith(domains.astype(str), ".edu")
    assert edu.any() and set(titles[edu]) <= {"Student", "Intern", "PhD Candidate"}
    competitor = domains == "competitor.com"
    assert 0 < competitor.sum() < 0.02 * N_LEADS
    assert set(_strings(leads, "company")[competitor]) == {"Competitor Inc"}
    assert {"VP Sales", "Chief Revenue Officer", "Student", "Software Engineer"} <= set(titles)
    employees = leads.column("employees").to_numpy()
    assert employees.min() >= 1 and np.median(employees) < 100 and employees.max() > 5_000
    assert (leads.column("annual_revenue").to_numpy() > 0).all()
    allowed = {
        "country": {"US", "GB", "DE", "FR", "CA", "NL", "IN", "BR", "AU"},
        "budget": {"approved", "planned", "none", None},
        "authority": {"decision maker", "influencer", "user", None},
        "need": {"active project", "researching", "job seeker", "student", "selling to us", None},
        "timeframe": {"this quarter", "next quarter", "this year", "no timeline", None},
    }
    for column, values in allowed.items():
        assert set(leads.column(column).to_pylist()) == values, column
    phones = leads.column("phone")
    assert 0.1 < phones.null_count / N_LEADS < 0.6
    assert pc.sum(pc.equal(phones, "")).as_py() > 0


def test_events_within_window_and_consistent(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads, events, _ = data
    ts = _ts(events)
    assert ts.max() <= _us(AS_OF)
    assert ts.min() >= _us(AS_OF) - 365 * US_PER_DAY
    assert events.column("lead_id").null_count == 0
    assert pc.all(pc.is_in(events.column("lead_id"), value_set=leads.column("lead_id"))).as_py()
    ids = events.column("event_id")
    assert pc.count_distinct(ids).as_py() == N_EVENTS
    assert ids[0].as_py() == "E000000001"
    types = _strings(events, "type")
    items, urls = _strings(events, "item"), _strings(events, "url")
    pv = types == "page_view"
    assert all(u is not None for u in urls[pv]) and all(i is None for i in items[pv])
    valid_url = re.compile(
        r"/|/product(/features)?|/pricing(/enterprise)?|/(blog|docs)/[a-z0-9/-]+"
        r"|/contact|/careers(/jobs/\d+)?|/about"
    )
    assert all(valid_url.fullmatch(u) for u in set(urls[pv]))
    email = np.isin(types, ["email_send", "email_open", "email_click", "email_bounce"])
    assert all(re.fullmatch(r"cmp-\d{4}-\d{2}-[a-z-]+", i) for i in set(items[email]))
    assert all(u is not None for u in urls[types == "email_click"])
    forms = {"contact-us", "newsletter", "ebook-gated", "event-signup"}
    assert set(items[types == "form_submit"]) == forms
    assert all(re.fullmatch(r"wb-\d{4}-\d{2}", i) for i in items[types == "webinar_attended"])
    assert set(urls[types == "demo_request"]) == {"/demo"}
    assert set(types) >= {"unsubscribe", "content_download", "trial_signup", "webinar_registered"}


def test_engagement_distribution(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads, events, _ = data
    counts = np.bincount(_lead_index(leads, events), minlength=N_LEADS)
    assert 0.05 < (counts == 0).mean() < 0.3
    assert counts.max() >= 15 * np.median(counts)
    # Page views come in sessions: many consecutive views of a lead minutes apart.
    pv = events.filter(pc.equal(events.column("type"), "page_view")).sort_by(
        [("lead_id", "ascending"), ("ts", "ascending")]
    )
    same_lead = _strings(pv, "lead_id")[1:] == _strings(pv, "lead_id")[:-1]
    gaps = np.diff(_ts(pv))[same_lead]
    assert (gaps < 10 * 60_000_000).mean() > 0.3


def test_hot_leads_and_job_seekers(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads, events, _ = data
    lead, types, urls = (
        _lead_index(leads, events),
        _strings(events, "type"),
        _strings(events, "url"),
    )
    recent = _ts(events) >= _us(AS_OF) - 30 * US_PER_DAY
    pricing = np.array([u is not None and u.startswith("/pricing") for u in urls])
    priced = set(lead[recent & pricing])
    demoed = set(lead[recent & (types == "demo_request")])
    hot = priced & demoed
    assert 0.01 * N_LEADS < len(hot) < 0.15 * N_LEADS
    # Demo requests are one-off milestones and concentrated in recent weeks for hot leads.
    assert len(demoed) == int(recent[types == "demo_request"].sum())
    careers = np.array([u is not None and u.startswith("/careers") for u in urls])
    seeker = _strings(leads, "need")[lead] == "job seeker"
    pv = types == "page_view"
    assert careers[pv & seeker].mean() > 5 * careers[pv & ~seeker].mean()


def test_outcomes_follow_engagement(data: tuple[pa.Table, pa.Table, pa.Table]) -> None:
    leads, events, outcomes = data
    counts = np.bincount(_lead_index(leads, events), minlength=N_LEADS)
    out_lead = _lead_index(leads, outcomes)
    assert outcomes.column("lead_id").null_count == 0 and len(set(out_lead)) == len(out_lead)
    converted = np.zeros(N_LEADS, dtype=bool)
    converted[out_lead] = True
    assert 0.01 < converted.mean() < 0.3
    order = np.argsort(-counts, kind="stable")
    top, bottom = converted[order[: N_LEADS // 10]].mean(), converted[order[N_LEADS // 2 :]].mean()
    assert top > 3 * bottom and top > 0.15 and bottom < 0.05
    kinds = _strings(outcomes, "outcome")
    assert set(kinds) == {"sql", "opportunity", "won", "lost"}
    has_amount = outcomes.column("amount").is_valid().to_numpy(zero_copy_only=False)
    assert (has_amount == np.isin(kinds, ["won", "opportunity"])).all()
    ts = _ts(outcomes)
    assert ts.max() <= _us(AS_OF) + 120 * US_PER_DAY
    last = np.full(N_LEADS, np.iinfo(np.int64).min)
    np.maximum.at(last, _lead_index(leads, events), _ts(events))
    assert (ts > last[out_lead]).all()
    competitors = pc.ends_with(leads.column("email"), "@competitor.com").to_numpy()
    assert not converted[competitors].any()


def test_generate_events_edge_cases() -> None:
    leads = generate_leads(50, 1)
    empty = generate_events(leads, 0, AS_OF, 1)
    assert empty.num_rows == 0 and empty.schema.names[-1] == "event_id"
    short = generate_events(leads, 1_000, AS_OF, 1, days=30)
    assert _ts(short).min() >= _us(AS_OF) - 30 * US_PER_DAY
    with pytest.raises(ValueError):
        generate_events(generate_leads(0, 1), 10, AS_OF, 1)
    with pytest.raises(ValueError):
        generate_leads(-1)


def test_write_sample_in_chunks(tmp_path: Path) -> None:
    n_leads, n_events = 1_500, 30_000
    files = write_sample(tmp_path / "a", n_leads, n_events, AS_OF, 2, 4_000, progress=False)
    assert isinstance(files, SampleFiles) and files.events.name == "events.parquet"
    meta = pq.ParquetFile(files.events).metadata
    assert meta.num_rows == n_events
    leads, events = pq.read_table(files.leads), pq.read_table(files.events)
    outcomes = pq.read_table(files.outcomes)
    assert leads.equals(generate_leads(n_leads, 2))
    assert pc.count_distinct(events.column("event_id")).as_py() == n_events
    assert pc.all(pc.is_in(events.column("lead_id"), value_set=leads.column("lead_id"))).as_py()
    assert _ts(events).max() <= _us(AS_OF)
    assert outcomes.equals(generate_outcomes(leads, events, AS_OF, seed=2))
    again = write_sample(tmp_path / "b", n_leads, n_events, AS_OF, 2, 4_000, progress=False)
    assert again.events.read_bytes() == files.events.read_bytes()
    # One chunk reproduces generate_events exactly.
    whole = write_sample(tmp_path / "c", n_leads, n_events, AS_OF, 2, 10**6, progress=False)
    assert pq.read_table(whole.events).equals(generate_events(leads, n_events, AS_OF, 2))
