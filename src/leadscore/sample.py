"""Seeded, deterministic synthetic B2B lead, event and outcome data for the lead-scoring engine.

Three Arrow tables are produced (pure numpy + pyarrow, fully vectorised):

* **leads** - one row per lead: contact details, firmographics (company, industry, employees,
  revenue, country) and optional BANT answers. Personas (executives, managers, practitioners,
  students, job seekers, vendors and a rare competitor) drive titles, e-mail domains (corporate,
  free mail, ``.edu``) and BANT answers.
* **events** - a marketing/web activity log (page views in sessions, campaign e-mails, forms,
  downloads, demo/trial requests, webinars), all in the ``days`` before ``as_of``. Event counts
  per lead are heavy tailed; ~15% of leads have none. Most leads are cold, a minority warm and a
  few percent hot (pricing pages, demo/trial requests, webinars, recent bursts of activity); job
  seekers browse careers pages and competitors snoop on pricing.
* **outcomes** - at most one CRM outcome per lead (``sql``, ``opportunity``, ``won``, ``lost``),
  after the lead's last event and up to 120 days after ``as_of``.

Every lead has a hidden propensity (observable fit + a latent intent that is never written out)
that drives both engagement and outcomes. It is recomputed from the leads table and the seed, so
``generate_events`` / ``generate_outcomes`` must get the same ``seed`` as ``generate_leads`` for the
correlation to hold. The same seed and sizes always give byte-identical tables.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

__all__ = [
    "DEFAULT_AS_OF",
    "SampleFiles",
    "generate_events",
    "generate_leads",
    "generate_outcomes",
    "write_sample",
]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

DEFAULT_AS_OF: Final = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)
_DAY: Final = 86_400_000_000  # microseconds
_HOUR: Final = 3_600_000_000
_MIN: Final = 60_000_000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TS: Final = pa.timestamp("us", tz="UTC")

# fmt: off
LEADS_SCHEMA: Final = pa.schema(
    [(c, pa.string()) for c in ("lead_id", "email", "first_name", "last_name", "company")]
    + [("job_title", pa.string()), ("industry", pa.string())]
    + [("employees", pa.int64()), ("annual_revenue", pa.int64())]
    + [(c, pa.string()) for c in ("country", "phone", "budget", "authority", "need", "timeframe")]
)
EVENTS_SCHEMA: Final = pa.schema([
    ("lead_id", pa.string()), ("type", pa.string()), ("ts", _TS), ("item", pa.string()),
    ("url", pa.string()), ("event_id", pa.string()),
])
OUTCOMES_SCHEMA: Final = pa.schema(
    [("lead_id", pa.string()), ("outcome", pa.string()), ("ts", _TS), ("amount", pa.float64())]
)

# --- personas and lead attributes -------------------------------------------------------------
EXEC, DIRECTOR, MANAGER, PRACT, CONSULT, STUDENT, SEEKER, VENDOR, COMPETITOR = range(9)
_PERSONA_P = ((0.10, 0.14, 0.24, 0.285, 0.06, 0.07, 0.07, 0.03, 0.005),)
_TITLES: Final = (
    ("CEO", "Founder", "Chief Revenue Officer", "CTO", "CFO", "COO", "VP Sales", "VP Marketing"),
    ("Head of Marketing", "Director of IT", "Head of Sales", "Director of Operations"),
    ("Marketing Manager", "Sales Manager", "IT Manager", "Product Manager", "Operations Manager"),
    ("Software Engineer", "Analyst", "Data Analyst", "Marketing Specialist", "Developer"),
    ("Consultant", "Freelance Consultant", "Advisor"),
    ("Student", "Intern", "PhD Candidate"),
    ("Software Engineer", "Analyst", "Marketing Manager", "Sales Representative", "Intern"),
    ("Account Executive", "Sales Development Representative", "Business Development Manager"),
    ("Product Manager", "Product Marketing Manager", "Sales Engineer"),
)
_TITLE_GROUP_SCORE: Final = (1.0, 0.8, 0.4, -0.1, -0.2, -1.5, -0.1, -0.8, 0.0)
_FIRST: Final = (
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Barbara", "Priya", "Rahul", "Ana", "Lucas", "Sophie", "Lukas",
    "Emma", "Noah", "Chloe", "Liam", "Mia", "Hugo", "Lea", "Arjun", "Fatima", "Wei", "Yuki",
    "Olivia", "Daniel", "Sarah", "Thomas", "Laura", "Mateo", "Julia", "Jan", "Sanne", "Ravi",
    "Isabela",
)
_LAST: Final = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson",
    "Taylor", "Anderson", "Thomas", "Mueller", "Schmidt", "Schneider", "Martin", "Bernard",
    "Dubois", "Patel", "Sharma", "Singh", "Silva", "Santos", "Oliveira", "Jansen", "DeVries",
    "Bakker", "Nguyen", "Chen", "Wang", "Kim", "Murphy", "Walsh", "Evans", "Roberts", "Clarke",
    "Fischer", "Weber",
)
_ADJ: Final = (
    "Blue", "Red", "Green", "Silver", "Golden", "North", "South", "East", "West", "Bright",
    "Rapid", "Clear", "Prime", "Summit", "Iron", "Cedar", "Maple", "Harbor", "River", "Stone",
    "Sun", "Star", "Nova", "Apex", "Vertex", "Pioneer", "Atlas", "Orbit", "Quantum", "Delta",
    "Alpha", "Omega", "Bold", "Swift", "True", "Open", "Smart", "Urban", "Global",
)
_NOUN: Final = (
    "Analytics", "Logistics", "Health", "Dynamics", "Networks", "Solutions", "Labs", "Works",
    "Foods", "Capital", "Media", "Retail", "Motors", "Energy", "Partners", "Cloud", "Data",
    "Bank", "Pharma", "Robotics", "Systems", "Software", "Finance", "Insurance", "Learning",
    "Security", "Design", "Supply", "Telecom", "Ventures", "Studios", "Goods", "Metrics",
)
_SUFFIX: Final = ("Inc", "Ltd", "GmbH", "Group", "Corp", "LLC", "BV", "Co")
_UNIS: Final = ("Northfield", "Lakeside", "Westbrook", "Riverside", "Eastmoor", "Hillcrest")
_INDUSTRIES: Final = (
    "Software", "Financial Services", "Healthcare", "Manufacturing", "Retail", "Education",
    "Government", "Media", "Telecommunications", "Professional Services", "Energy", "Nonprofit",
)
_IND_P = ((0.2, 0.12, 0.1, 0.12, 0.1, 0.06, 0.05, 0.06, 0.05, 0.09, 0.03, 0.02),)
_IND_SCORE: Final = (0.6, 0.5, 0.2, 0.2, 0.0, -0.5, -0.4, 0.0, 0.2, 0.1, 0.1, -0.6)
_REV_PER_EMP: Final = np.array([220, 400, 150, 250, 180, 90, 120, 200, 300, 160, 500, 60]) * 1e3
_COUNTRIES: Final = ("US", "GB", "DE", "FR", "CA", "NL", "IN", "BR", "AU")
_COUNTRY_P = ((0.4, 0.12, 0.1, 0.07, 0.07, 0.05, 0.08, 0.05, 0.06),)
_COUNTRY_SCORE: Final = (0.2, 0.2, 0.2, 0.1, 0.2, 0.2, -0.2, -0.2, 0.1)
_CALLING: Final = ("+1", "+44", "+49", "+33", "+1", "+31", "+91", "+55", "+61")
_TLDS: Final = (".com", ".co.uk", ".de", ".fr", ".ca", ".nl", ".in", ".com.br", ".com.au", ".edu")
_EDU_TLD: Final = 9
_SIZE_P = ((0.3, 0.28, 0.2, 0.13, 0.06, 0.03),)
_SIZE_LO: Final = np.array([1, 11, 51, 201, 1001, 5001], dtype=np.float64)
_SIZE_HI: Final = np.array([10, 50, 200, 1000, 5000, 100_000], dtype=np.float64)
_FREE_DOMAINS: Final = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com")
_FREE_P: Final = np.array([0.08, 0.08, 0.1, 0.15, 0.45, 0.0, 0.75, 0.1, 0.0])
_BUDGET: Final = ("approved", "planned", "none")
_AUTHORITY: Final = ("decision maker", "influencer", "user")
_NEED: Final = ("active project", "researching", "job seeker", "student", "selling to us")
_TIMEFRAME: Final = ("this quarter", "next quarter", "this year", "no timeline")
_LOW3 = (0.02, 0.08, 0.9)
_BUDGET_P: Final[tuple[tuple[float, ...], ...]] = (
    (0.35, 0.4, 0.25), (0.3, 0.4, 0.3), (0.2, 0.45, 0.35), (0.1, 0.35, 0.55), (0.1, 0.3, 0.6),
    _LOW3, _LOW3, _LOW3, _LOW3,
)
_AUTH_P: Final[tuple[tuple[float, ...], ...]] = (
    (0.85, 0.12, 0.03), (0.5, 0.45, 0.05), (0.15, 0.6, 0.25), (0.03, 0.3, 0.67), (0.1, 0.7, 0.2),
    (0.0, 0.05, 0.95), (0.02, 0.18, 0.8), (0.1, 0.3, 0.6), (0.1, 0.3, 0.6),
)
_NEED_P: Final[tuple[tuple[float, ...], ...]] = ((0.3, 0.65, 0.0, 0.0, 0.05),) * 5 + (
    (0, 0.1, 0, 0.9, 0), (0, 0.3, 0.7, 0, 0), (0, 0.15, 0, 0, 0.85), (0, 1.0, 0, 0, 0),
)
_SCORES: Final = {
    "budget": dict(zip(_BUDGET, (0.8, 0.3, -0.6), strict=True)),
    "authority": dict(zip(_AUTHORITY, (0.4, 0.1, -0.2), strict=True)),
    "need": dict(zip(_NEED, (1.0, 0.2, -2.0, -2.0, -3.0), strict=True)),
    "timeframe": dict(zip(_TIMEFRAME, (0.7, 0.4, 0.1, -0.4), strict=True)),
    "industry": dict(zip(_INDUSTRIES, _IND_SCORE, strict=True)),
    "country": dict(zip(_COUNTRIES, _COUNTRY_SCORE, strict=True)),
    "job_title": {},
}
for _group, _group_score in zip(_TITLES, _TITLE_GROUP_SCORE, strict=True):
    for _title in _group:
        _SCORES["job_title"].setdefault(_title, _group_score)  # first persona wins
_PERSONA_ADJ: Final = np.array([0.0, 0.0, 0.0, 0.0, 0.0, -2.0, -2.5, -3.0, -5.0])

# --- engagement profiles ------------------------------------------------------------------------
COLD, WARM, HOT, P_SEEKER, P_STUDENT, P_COMPETITOR, P_VENDOR = range(7)
_P_ZERO: Final = np.array([0.2, 0.03, 0.0, 0.1, 0.15, 0.05, 0.3])
_MU: Final = np.array([0.0, 1.2, 2.0, 0.6, 0.4, 1.0, -0.3])
_BURST_FRAC: Final = np.array([0.1, 0.4, 0.75, 0.3, 0.2, 0.5, 0.1])
_BURST_DAYS: Final = np.array([5.0, 12.0, 8.0, 10.0, 7.0, 10.0, 3.0])
_RECENCY_DAYS: Final = np.array([0.0, 30.0, 4.0, 0.0, 0.0, 20.0, 0.0])  # 0: uniform in window
TYPES: Final = (
    "page_view", "email_send", "email_open", "email_click", "email_bounce", "unsubscribe",
    "content_download", "form_submit", "demo_request", "trial_signup", "webinar_registered",
    "webinar_attended",
)
PV, SEND, OPEN, CLICK, BOUNCE, UNSUB, DOWNLOAD, FORM, DEMO, TRIAL, WREG, WATT = range(12)
CONTACT: Final = 12  # internal pseudo-kind: form_submit of the "contact-us" form
_KIND_P = (
    (0.2, 0.5, 0.2, 0.03, 0.03, 0.01, 0.015, 0.015),
    (0.4, 0.28, 0.17, 0.07, 0.005, 0.005, 0.05, 0.03),
    (0.55, 0.16, 0.13, 0.08, 0.0, 0.0, 0.05, 0.03),
    (0.6, 0.2, 0.12, 0.02, 0.02, 0.02, 0.01, 0.01),
    (0.45, 0.25, 0.12, 0.03, 0.03, 0.02, 0.08, 0.02),
    (0.75, 0.1, 0.05, 0.02, 0.0, 0.0, 0.08, 0.0),
    (0.2, 0.5, 0.18, 0.02, 0.05, 0.05, 0.0, 0.0),
)
# milestone probabilities per profile: webinar registered, attended | registered, demo, trial,
# contact-us form
_MILESTONE_P: Final = np.array([
    [0.02, 0.35, 0.003, 0.005, 0.005], [0.15, 0.5, 0.06, 0.1, 0.04], [0.4, 0.75, 0.65, 0.45, 0.3],
    [0.01, 0.3, 0.0, 0.0, 0.0], [0.05, 0.5, 0.0, 0.08, 0.0], [0.3, 0.8, 0.05, 0.35, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.6],
])
# page categories: / product features pricing pricing-ent blog docs contact careers jobs about
_PAGE_P = (
    (0.25, 0.1, 0.05, 0.04, 0.005, 0.4, 0.06, 0.01, 0.02, 0.02, 0.045),
    (0.12, 0.16, 0.12, 0.12, 0.03, 0.22, 0.12, 0.03, 0.01, 0.01, 0.06),
    (0.08, 0.14, 0.14, 0.25, 0.09, 0.08, 0.14, 0.05, 0.0, 0.0, 0.03),
    (0.08, 0.04, 0.01, 0.01, 0.0, 0.06, 0.01, 0.0, 0.3, 0.42, 0.07),
    (0.1, 0.05, 0.03, 0.02, 0.0, 0.35, 0.35, 0.0, 0.05, 0.03, 0.02),
    (0.08, 0.15, 0.2, 0.3, 0.1, 0.05, 0.1, 0.0, 0.01, 0.01, 0.0),
    (0.35, 0.1, 0.02, 0.03, 0.0, 0.1, 0.0, 0.1, 0.0, 0.0, 0.3),
    (0.0, 0.2, 0.15, 0.15, 0.0, 0.35, 0.15, 0.0, 0.0, 0.0, 0.0),  # e-mail click landing pages
)
_CLICK_ROW: Final = 7
_STATIC: Final = (
    "/", "/product", "/product/features", "/pricing", "/pricing/enterprise", "/contact",
    "/careers", "/about", "/demo", "/trial",
)
_BLOG: Final = (
    "roi-of-lead-scoring", "sales-marketing-alignment", "intent-data-101", "crm-hygiene",
    "abm-playbook", "pipeline-forecasting", "release-notes-2026", "customer-story-globex",
)
_DOCS: Final = (
    "getting-started", "api", "integrations/salesforce", "integrations/hubspot", "sso",
    "webhooks", "data-model", "security",
)
_N_JOBS: Final = 24
_URLS: Final = (
    _STATIC + tuple(f"/blog/{s}" for s in _BLOG) + tuple(f"/docs/{s}" for s in _DOCS)
) + tuple(f"/careers/jobs/{n}" for n in range(101, 101 + _N_JOBS))
_B0, _D0 = len(_STATIC), len(_STATIC) + len(_BLOG)
_J0 = _D0 + len(_DOCS)
_CAT_BASE: Final = np.array([0, 1, 2, 3, 4, _B0, _D0, 5, 6, _J0, 7])
_CAT_N: Final = np.array([1, 1, 1, 1, 1, len(_BLOG), len(_DOCS), 1, 1, _N_JOBS, 1])
_URL_DEMO, _URL_TRIAL, _URL_CONTACT = 8, 9, 5
_CAMPAIGNS: Final = ("newsletter", "product-update", "webinar-invite", "promo")
_CAMPAIGN_OFFSET: Final = np.array([2, 9, 16, 23]) * _DAY + 14 * _HOUR
_FORMS: Final = ("contact-us", "newsletter", "ebook-gated", "event-signup")
_ASSETS: Final = (
    "ebook-a", "ebook-b", "whitepaper-roi", "whitepaper-security",
    "case-study-acme", "case-study-globex", "datasheet-platform", "report-state-of-sales",
)
_HIGH_TYPES: Final = ("demo_request", "trial_signup", "webinar_attended")
# fmt: on


@dataclass(frozen=True)
class SampleFiles:
    """Paths of the Parquet files written by :func:`write_sample`."""

    leads: Path
    events: Path
    outcomes: Path


def _rng(seed: int, *tags: int) -> np.random.Generator:
    if seed < 0:
        raise ValueError("seed must be non-negative")
    return np.random.default_rng(np.random.SeedSequence([seed, *tags]))


def _cum_table(rows: Sequence[Sequence[float]]) -> F64:
    """Flattened cumulative table so that one ``searchsorted`` draws from a per-row categorical."""
    parts: list[F64] = []
    for g, row in enumerate(rows):
        p = np.asarray(row, dtype=np.float64)
        parts += [g + np.cumsum(p / p.sum())[:-1], np.array([g + 1.0])]
    return np.concatenate(parts)


def _draw(rng: np.random.Generator, rows: Sequence[Sequence[float]], group: I64) -> I64:
    """Category index for each element, from the distribution in ``rows[group]``."""
    u = rng.random(len(group))
    idx = np.searchsorted(_cum_table(rows), group + u, side="right")
    return (idx - group * len(rows[0])).astype(np.int64)


def _take(vocab: Sequence[str], codes: I64) -> pa.Array:
    """Strings ``vocab[codes]``; negative codes become nulls."""
    return pa.array(vocab, pa.string()).take(pa.array(codes, mask=codes < 0))


def _ids(prefix: str, start: int, n: int, width: int) -> pa.Array:
    nums = pa.array(np.arange(start, start + n, dtype=np.int64))
    digits = pc.utf8_lpad(pc.cast(nums, pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _us(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(microseconds=1)


def _month(ts_us: I64) -> I64:
    return ts_us.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def _month_start(month: I64) -> I64:
    return month.astype("datetime64[M]").astype("datetime64[us]").astype(np.int64)


def _hidden(n: int, seed: int) -> tuple[I64, F64]:
    """Hidden persona and latent intent of each lead (never written out)."""
    rng = _rng(seed, 10)
    return _draw(rng, _PERSONA_P, np.zeros(n, np.int64)), rng.normal(size=n)


@cache
def _company_vocab() -> tuple[tuple[str, ...], tuple[str, ...]]:
    names, slugs = [], []
    for a in _ADJ:
        for n in _NOUN:
            for s in _SUFFIX:
                names.append(f"{a} {n} {s}")
                slugs.append(f"{a}{n}".lower())
    names += [f"{u} University" for u in _UNIS] + ["Competitor Inc"]
    slugs += [u.lower() for u in _UNIS] + ["competitor"]
    return tuple(names), tuple(slugs)


def generate_leads(n_leads: int, seed: int = 0) -> pa.Table:
    """Generate ``n_leads`` synthetic B2B leads (schema :data:`LEADS_SCHEMA`)."""
    if n_leads < 0:
        raise ValueError("n_leads must be non-negative")
    n = n_leads
    persona, intent = _hidden(n, seed)
    rng = _rng(seed, 1)
    zeros = np.zeros(n, np.int64)
    # Companies carry the firmographics; several leads share one company.
    names, slugs = _company_vocab()
    n_plain = len(_ADJ) * len(_NOUN) * len(_SUFFIX)
    n_comp = max(1, n // 3)
    c_name = rng.choice(n_plain, size=n_comp, replace=n_comp > n_plain).astype(np.int64)
    czero = np.zeros(n_comp, np.int64)
    c_ind, c_country, c_size = (_draw(rng, p, czero) for p in (_IND_P, _COUNTRY_P, _SIZE_P))
    log_lo, log_hi = np.log(_SIZE_LO[c_size]), np.log(_SIZE_HI[c_size] + 1)
    c_emp = np.minimum(np.exp(rng.uniform(log_lo, log_hi)).astype(np.int64), _SIZE_HI[c_size])
    c_tld = np.where(rng.random(n_comp) < 0.55, 0, c_country)
    comp = rng.integers(0, n_comp, n)
    name_code, industry, country = c_name[comp], c_ind[comp], c_country[comp]
    employees, tld = c_emp[comp].astype(np.int64), c_tld[comp]
    uni = rng.integers(0, len(_UNIS), n)
    is_student, is_comp = persona == STUDENT, persona == COMPETITOR
    name_code = np.where(is_student, n_plain + uni, name_code)
    name_code = np.where(is_comp, n_plain + len(_UNIS), name_code)
    industry = np.where(is_student, _INDUSTRIES.index("Education"), industry)
    industry = np.where(is_comp, 0, industry)
    employees = np.where(is_student, 1500 + 2300 * uni, employees)
    employees = np.where(is_comp, 420, employees).astype(np.int64)
    country = np.where(is_comp, 0, country)
    tld = np.where(is_student, _EDU_TLD, np.where(is_comp, 0, tld))
    rev = employees * _REV_PER_EMP[industry] * np.exp(rng.normal(0.0, 0.4, n))
    revenue = (np.round(rev / 1000) * 1000).astype(np.int64)
    # Names, e-mail addresses and phones.
    first_code, last_code = rng.integers(0, len(_FIRST), n), rng.integers(0, len(_LAST), n)
    first, last = _take(_FIRST, first_code), _take(_LAST, last_code)
    f, lname = pc.utf8_lower(first), pc.utf8_lower(last)
    initial = pc.utf8_slice_codeunits(f, 0, 1)
    local = pc.choose(
        pa.array(rng.integers(0, 4, n)),
        pc.binary_join_element_wise(f, lname, "."),
        pc.binary_join_element_wise(initial, lname, ""),
        f,
        pc.binary_join_element_wise(f, lname, "_"),
    )
    number = pc.cast(pa.array(rng.integers(1, 100, n)), pa.string())
    free_local = pc.binary_join_element_wise(pc.if_else(rng.random(n) < 0.5, local, f), number, "")
    free_dom = _take(_FREE_DOMAINS, _draw(rng, ((0.55, 0.15, 0.2, 0.1),), zeros))
    corp_dom = pc.binary_join_element_wise(_take(slugs, name_code), _take(_TLDS, tld), "")
    free = rng.random(n) < _FREE_P[persona]
    email = pc.if_else(
        free,
        pc.binary_join_element_wise(free_local, free_dom, "@"),
        pc.binary_join_element_wise(local, corp_dom, "@"),
    )
    digits = pc.cast(pa.array(rng.integers(100_000_000, 9_999_999_999, n)), pa.string())
    phone = pc.binary_join_element_wise(_take(_CALLING, country), digits, " ")
    u = rng.random(n)
    phone = pc.if_else(u < 0.43, "", phone)
    phone = pc.if_else(u < 0.35, pa.scalar(None, pa.string()), phone)
    # Titles and BANT answers (often missing; need/timeframe track the hidden intent of buyers).
    t_off = np.cumsum([0] + [len(t) for t in _TITLES])
    t_len = np.diff(t_off)
    title = t_off[persona] + (rng.random(n) * t_len[persona]).astype(np.int64)
    all_titles = tuple(t for group in _TITLES for t in group)
    filled = rng.random(n) < 0.55
    budget = _draw(rng, _BUDGET_P, persona)
    authority = _draw(rng, _AUTH_P, persona)
    need = _draw(rng, _NEED_P, persona)
    buyer = persona <= CONSULT
    active = rng.random(n) < 1 / (1 + np.exp(1.0 - 1.3 * intent))
    need = np.where(buyer & (need != 4), np.where(active, 0, 1), need)
    urgency = intent + rng.normal(0.0, 0.8, n) - np.where(buyer, 0.0, 2.0)
    timeframe = 3 - np.searchsorted(np.array([-0.4, 0.3, 1.0]), urgency, side="right")
    bant, bant_vocab = [], (_BUDGET, _AUTHORITY, _NEED, _TIMEFRAME)
    for codes in (budget, authority, need, timeframe):
        missing = ~filled | (rng.random(n) < 0.12)
        bant.append(np.where(missing, -1, codes).astype(np.int64))
    width = max(7, len(str(n)))
    columns = [
        _ids("L", 1, n, width), email, first, last, _take(names, name_code),
        _take(all_titles, title.astype(np.int64)), _take(_INDUSTRIES, industry),
        pa.array(employees), pa.array(revenue), _take(_COUNTRIES, country), phone,
        *(_take(vocab, codes) for vocab, codes in zip(bant_vocab, bant, strict=True)),
    ]  # fmt: skip
    return pa.Table.from_arrays(columns, schema=LEADS_SCHEMA)


def _score(column: pa.ChunkedArray, table: dict[str, float]) -> F64:
    values = np.array([*table.values(), 0.0])
    idx = pc.fill_null(pc.index_in(column, value_set=pa.array(list(table))), len(table))
    out: F64 = values[idx.to_numpy()]
    return out


def _propensity(leads: pa.Table, seed: int) -> tuple[F64, I64]:
    """Hidden propensity (log-odds scale) and engagement profile of every lead."""
    n = leads.num_rows
    persona, intent = _hidden(n, seed)
    fit = sum((_score(leads.column(c), s) for c, s in _SCORES.items()), np.zeros(n))
    log_emp = np.log10(np.maximum(leads.column("employees").to_numpy(), 1))
    fit += np.select([log_emp < 1, log_emp < 1.7, log_emp < 3.7], [-0.6, -0.2, 0.4], 0.1)
    email = leads.column("email")
    fit -= 0.4 * pc.match_substring_regex(email, r"@(gmail|yahoo|outlook|hotmail)\.com$").to_numpy()
    fit -= 1.0 * pc.ends_with(email, ".edu").to_numpy()
    z = fit + _PERSONA_ADJ[persona] + 1.1 * intent
    profile = np.full(n, COLD, np.int64)
    if n:
        profile[z >= np.quantile(z, 0.78)] = WARM
        profile[z >= np.quantile(z, 0.96)] = HOT
    for p, prof in ((SEEKER, P_SEEKER), (STUDENT, P_STUDENT), (COMPETITOR, P_COMPETITOR)):
        profile[persona == p] = prof
    profile[persona == VENDOR] = P_VENDOR
    return z, profile


def _event_counts(profile: I64, n_events: int, seed: int) -> I64:
    """Exactly ``n_events`` events split over leads: heavy tailed, some leads get none."""
    rng = _rng(seed, 3)
    n = len(profile)
    weight = np.exp(_MU[profile] + 1.1 * rng.normal(size=n))
    weight[rng.random(n) < _P_ZERO[profile]] = 0.0
    if n_events == 0:
        return np.zeros(n, np.int64)
    if n == 0:
        raise ValueError("cannot generate events without leads")
    if weight.sum() == 0:
        weight[:] = 1.0
    return rng.multinomial(n_events, weight / weight.sum()).astype(np.int64)


@dataclass(frozen=True)
class _Window:
    as_of: int
    start: int
    month0: int
    n_months: int

    @classmethod
    def of(cls, as_of: datetime, days: int) -> _Window:
        if days <= 0:
            raise ValueError("days must be positive")
        end = _us(as_of)
        m0 = int(_month(np.array([end - days * _DAY]))[0]) - 1
        return cls(end, end - days * _DAY, m0, int(_month(np.array([end]))[0]) - m0 + 1)

    def items(self) -> tuple[str, ...]:
        span = range(self.month0, self.month0 + self.n_months)
        months = [f"{1970 + m // 12}-{m % 12 + 1:02d}" for m in span]
        camps = tuple(f"cmp-{m}-{k}" for m in months for k in _CAMPAIGNS)
        return camps + _FORMS + _ASSETS + tuple(f"wb-{m}" for m in months)


def _event_chunk(rng: np.random.Generator, profile: I64, counts: I64, w: _Window) -> list[I64]:
    """Events of a slice of leads as numeric codes: local lead, kind, ts, item, url (ts-sorted)."""
    n_lead, n = len(counts), int(counts.sum())
    days = (w.as_of - w.start) / _DAY
    lead = np.repeat(np.arange(n_lead), counts)
    pos = np.arange(n) - (np.cumsum(counts) - counts)[lead]
    prof = profile[lead]
    # Per-lead timeline: recency of last activity, active span, burst scale.
    rec_scale = _RECENCY_DAYS[profile]
    recency = np.where(
        rec_scale > 0, rng.exponential(np.maximum(rec_scale, 1e-9)), rng.random(n_lead) * days
    )
    recency = np.minimum(recency, days * 0.98)
    span = (days - recency) * rng.uniform(0.2, 1.0, n_lead)
    # Milestones (demo, trial, webinar, contact form) are one-off events occupying the first slots.
    mp = _MILESTONE_P[profile]
    flags = rng.random((n_lead, 5)) < mp
    flags[:, 1] &= flags[:, 0]
    order = np.argsort(~flags, axis=1, kind="stable")
    ms_kinds = np.array([WREG, WATT, DEMO, TRIAL, CONTACT])[order]
    n_ms = np.minimum(flags.sum(axis=1), counts)
    is_ms = pos < n_ms[lead]
    kind = _draw(rng, _KIND_P, prof)
    kind[is_ms] = ms_kinds[lead[is_ms], pos[is_ms]]
    # Time: recent bursts vs. background activity spread over the lead's span.
    burst = is_ms | (rng.random(n) < _BURST_FRAC[prof])
    back = recency[lead] + np.where(
        burst, rng.exponential(_BURST_DAYS[prof]), rng.random(n) * span[lead]
    )
    back = np.where(back >= days, rng.random(n) * days, back)
    t = w.as_of - (back * _DAY).astype(np.int64)
    ts = t.copy()
    item = np.full(n, -1, np.int64)
    url = np.full(n, -1, np.int64)
    n_camp = w.n_months * len(_CAMPAIGNS)
    form0, asset0 = n_camp, n_camp + len(_FORMS)
    web0 = asset0 + len(_ASSETS)
    # Page views come in sessions of a few views minutes apart, ending at the drawn time.
    pv = np.flatnonzero(kind == PV)
    if len(pv):
        cat = _draw(rng, _PAGE_P, prof[pv])
        url[pv] = _CAT_BASE[cat] + (rng.random(len(pv)) ** 2 * _CAT_N[cat]).astype(np.int64)
        lp = lead[pv]
        start = rng.random(len(pv)) < 0.4
        start[0] = True
        start[1:] |= lp[1:] != lp[:-1]
        first = np.flatnonzero(start)
        session = np.cumsum(start) - 1
        cs = np.cumsum(np.where(start, 0, rng.exponential(75 * 1e6, len(pv)).astype(np.int64)))
        offset = cs - cs[first][session]
        duration = np.maximum.reduceat(offset, first)[session]
        ts[pv] = t[pv][first][session] - duration + offset
    # Campaign e-mails: sent on fixed days of the month, opens/clicks follow the send.
    em = np.flatnonzero((kind >= SEND) & (kind <= UNSUB))
    if len(em):
        te, ck = t[em], rng.integers(0, len(_CAMPAIGNS), len(em))
        month = _month(te)
        send = _month_start(month) + _CAMPAIGN_OFFSET[ck]
        late = send > te
        month = np.where(late, month - 1, month)
        send = np.where(late, _month_start(month) + _CAMPAIGN_OFFSET[ck], send)
        send = np.where(send < w.start, te, send)
        mean = np.array([0, 0, 6, 8, 0.03, 20])[kind[em]] * _HOUR
        delay = (rng.exponential(1.0, len(em)) * mean).astype(np.int64)
        ts[em] = send + np.minimum(delay, te - send)
        item[em] = (month - w.month0) * len(_CAMPAIGNS) + ck
        click = em[kind[em] == CLICK]
        cat = _draw(rng, _PAGE_P, np.full(len(click), _CLICK_ROW))
        url[click] = _CAT_BASE[cat] + (rng.random(len(click)) * _CAT_N[cat]).astype(np.int64)
    # Webinars: one per lead, held on the 20th; registration days before, attendance on the day.
    wb = np.flatnonzero((kind == WREG) | (kind == WATT))
    if len(wb):
        tw = w.as_of - ((recency + rng.exponential(_BURST_DAYS[profile])) * _DAY).astype(np.int64)
        tw = np.maximum(tw, w.start)
        wmonth = _month(tw)
        wdate = _month_start(wmonth) + 19 * _DAY + 16 * _HOUR
        late = wdate > tw
        wmonth = np.where(late, wmonth - 1, wmonth)
        wdate = np.where(late, _month_start(wmonth) + 19 * _DAY + 16 * _HOUR, wdate)
        wdate = np.where(wdate < w.start, tw, wdate)
        lw = lead[wb]
        reg_ts = wdate[lw] - rng.uniform(_HOUR, 14 * _DAY, len(wb)).astype(np.int64)
        early = reg_ts < w.start
        reg_ts[early] = w.start + (rng.random(int(early.sum())) * (wdate[lw] - w.start)[early])
        att_ts = wdate[lw] + np.minimum(rng.integers(0, 45 * _MIN, len(wb)), tw[lw] - wdate[lw])
        ts[wb] = np.where(kind[wb] == WREG, reg_ts, att_ts)
        item[wb] = web0 + wmonth[lw] - w.month0
    other = kind[:, None] == np.array([DOWNLOAD, FORM, CONTACT, DEMO, TRIAL])
    item[other[:, 0]] = asset0 + rng.integers(0, len(_ASSETS), int(other[:, 0].sum()))
    item[other[:, 1]] = form0 + rng.integers(1, len(_FORMS), int(other[:, 1].sum()))
    item[other[:, 2]] = form0
    url[other[:, 2]], url[other[:, 3]], url[other[:, 4]] = _URL_CONTACT, _URL_DEMO, _URL_TRIAL
    kind[other[:, 2]] = FORM
    ts = np.clip(ts, w.start, w.as_of)
    order = np.argsort(ts, kind="stable")
    return [a[order] for a in (lead, kind, ts, item, url)]


def _event_chunks(
    leads: pa.Table, n_events: int, as_of: datetime, seed: int, days: int, chunk_events: int
) -> Iterator[tuple[pa.Table, I64]]:
    """Yield event tables for consecutive slices of leads (~chunk_events rows each)."""
    if n_events < 0 or chunk_events <= 0:
        raise ValueError("n_events must be >= 0 and chunk_events > 0")
    window = _Window.of(as_of, days)
    items = window.items()
    _, profile = _propensity(leads, seed)
    counts = _event_counts(profile, n_events, seed)
    cum = np.cumsum(counts)
    lead_ids = leads.column("lead_id").combine_chunks()
    width = max(9, len(str(n_events)))
    lo = done = 0
    while done < n_events:
        hi = max(int(np.searchsorted(cum, done + chunk_events, side="right")), lo + 1)
        rng = _rng(seed, 4, lo)
        lead, kind, ts, item, url = _event_chunk(rng, profile[lo:hi], counts[lo:hi], window)
        lead += lo
        columns = [
            lead_ids.take(pa.array(lead)), _take(TYPES, kind), pa.array(ts, _TS),
            _take(items, item), _take(_URLS, url), _ids("E", done + 1, len(lead), width),
        ]  # fmt: skip
        table = pa.Table.from_arrays(columns, schema=EVENTS_SCHEMA)
        yield table, lead
        done += len(lead)
        lo = hi


def generate_events(
    leads: pa.Table, n_events: int, as_of: datetime, seed: int = 0, days: int = 365
) -> pa.Table:
    """Generate exactly ``n_events`` events for ``leads`` in the ``days`` up to ``as_of``.

    Use the seed that generated ``leads`` so the hidden propensity matches.
    """
    chunks = [t for t, _ in _event_chunks(leads, n_events, as_of, seed, days, 5_000_000)]
    return pa.concat_tables(chunks) if chunks else EVENTS_SCHEMA.empty_table()


class _Engagement:
    """Per-lead event totals, high-intent event counts and last event time."""

    def __init__(self, n_leads: int) -> None:
        self.total = np.zeros(n_leads, np.int64)
        self.high = np.zeros(n_leads, np.int64)
        self.last = np.full(n_leads, np.iinfo(np.int64).min, np.int64)

    def add(self, events: pa.Table, lead: I64) -> None:
        typ, url = events.column("type"), events.column("url")
        high = pc.or_kleene(
            pc.is_in(typ, value_set=pa.array(_HIGH_TYPES)),
            pc.and_kleene(pc.equal(typ, "page_view"), pc.starts_with(url, "/pricing")),
        )
        contact = pc.and_kleene(
            pc.equal(typ, "form_submit"), pc.equal(events["item"], "contact-us")
        )
        high = pc.fill_null(pc.or_kleene(high, contact), False).to_numpy(zero_copy_only=False)
        n = len(self.total)
        self.total += np.bincount(lead, minlength=n)
        self.high += np.bincount(lead[high], minlength=n)
        np.maximum.at(self.last, lead, pc.cast(events.column("ts"), pa.int64()).to_numpy())


def _outcomes(leads: pa.Table, eng: _Engagement, as_of: datetime, seed: int) -> pa.Table:
    n = leads.num_rows
    z, _ = _propensity(leads, seed)
    persona, _ = _hidden(n, seed)
    rng = _rng(seed, 5)
    logit = -5.6 + 0.55 * z + 0.9 * np.log1p(eng.high) + 0.35 * np.log1p(eng.total)
    p = 1 / (1 + np.exp(-logit))
    p[(persona == COMPETITOR) | (persona == VENDOR)] = 0.0
    converted = np.flatnonzero(rng.random(n) < p)
    zc = z[converted]
    k = len(converted)
    opp = rng.random(k) < 1 / (1 + np.exp(-(0.5 * zc - 0.6)))
    closed = opp & (rng.random(k) < 0.6)
    won = closed & (rng.random(k) < 1 / (1 + np.exp(-(0.5 * zc - 2.0))))
    stage = np.where(won, 2, np.where(closed, 3, np.where(opp, 1, 0))).astype(np.int64)
    as_of_us = _us(as_of)
    last = eng.last[converted]
    base = np.where(last > np.iinfo(np.int64).min, last, as_of_us - rng.integers(0, 180 * _DAY, k))
    gap = (rng.exponential(21.0, k) + 10.0 * stage + 1 / 24) * _DAY
    ts = np.minimum(base + gap.astype(np.int64), as_of_us + 120 * _DAY)
    emp = leads.column("employees").to_numpy()[converted]
    amount = np.exp(rng.normal(np.log(12_000) + 0.35 * np.log(np.maximum(emp, 1) / 50), 0.6))
    amount = np.round(np.clip(amount, 1_000, 2_000_000), 2)
    has_amount = (stage == 1) | (stage == 2)
    columns = [
        leads.column("lead_id").take(pa.array(converted)),
        _take(("sql", "opportunity", "won", "lost"), stage),
        pa.array(ts, _TS),
        pa.array(amount, pa.float64(), mask=~has_amount),
    ]
    return pa.Table.from_arrays(columns, schema=OUTCOMES_SCHEMA)


def generate_outcomes(
    leads: pa.Table, events: pa.Table, as_of: datetime, seed: int = 0
) -> pa.Table:
    """At most one CRM outcome per lead, driven by the hidden propensity and observed events."""
    idx = pc.fill_null(pc.index_in(events.column("lead_id"), value_set=leads.column("lead_id")), -1)
    lead = idx.to_numpy().astype(np.int64)
    known = lead >= 0
    eng = _Engagement(leads.num_rows)
    eng.add(events.filter(pa.array(known)), lead[known])
    return _outcomes(leads, eng, as_of, seed)


def write_sample(
    directory: Path,
    n_leads: int,
    n_events: int,
    as_of: datetime,
    seed: int = 0,
    chunk_events: int = 5_000_000,
    progress: bool = True,
) -> SampleFiles:
    """Write ``leads.parquet``, ``events.parquet`` (in chunks) and ``outcomes.parquet``.

    Events are generated and written ``chunk_events`` rows at a time (each chunk covers a slice
    of leads), so memory stays bounded however large ``n_events`` is.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = SampleFiles(
        directory / "leads.parquet", directory / "events.parquet", directory / "outcomes.parquet"
    )
    leads = generate_leads(n_leads, seed)
    pq.write_table(leads, files.leads, compression="zstd")
    eng = _Engagement(n_leads)
    columns = (TextColumn("[bold]events"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with (
        Progress(*columns, console=Console(stderr=True), disable=not progress) as bar,
        pq.ParquetWriter(files.events, EVENTS_SCHEMA, compression="zstd") as writer,
    ):
        task = bar.add_task("events", total=n_events)
        for table, lead in _event_chunks(leads, n_events, as_of, seed, 365, chunk_events):
            writer.write_table(table)
            eng.add(table, lead)
            bar.advance(task, table.num_rows)
    pq.write_table(_outcomes(leads, eng, as_of, seed), files.outcomes, compression="zstd")
    return files
