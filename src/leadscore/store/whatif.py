"""What-if questions a model editor asks of the store, answered without writing to it.

- :func:`preview_model`: score every stored lead with a draft model (the batch evaluator, as
  of now) and compare with the current scores on the sheet of the same name: what publishing
  the draft would change.
- :func:`model_diff`: the unified diff between two stored versions of a model file.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.errors import NotFound
from leadscore.scoring import PreparedInputs
from leadscore.spec import Model
from leadscore.store.keeper import RESCORE_PART, Sheet, Store, _batch_rows, _export, _next_part
from leadscore.store.schema import leads, scores
from leadscore.store.scores import HISTORY_MIN_DELTA
from leadscore.store.versions import ModelVersion, get_version, list_versions

__all__ = [
    "MOVERS",
    "NO_BAND",
    "ModelDiff",
    "ModelPreview",
    "Mover",
    "model_diff",
    "preview_model",
]

MOVERS = 20  # leads listed in a preview, biggest score change first
NO_BAND = "(none)"  # the band count of leads below the lowest band


@dataclass(frozen=True)
class _Score:
    score: float
    band: str | None
    grade: str | None
    mql: bool


@dataclass
class Mover:
    """A lead whose score a draft would change, with who it is."""

    lead_id: str
    email: str | None
    name: str | None
    company: str | None
    old_score: float
    new_score: float
    delta: float
    old_band: str | None
    new_band: str | None
    old_grade: str | None
    new_grade: str | None
    old_mql: bool
    new_mql: bool


@dataclass
class ModelPreview:
    """What publishing a draft would do to the stored leads' scores on its sheet.

    The ``*_before`` figures, ``band_changes``, ``grade_changes`` and ``score_changes`` are
    None when the sheet has no active version to compare with.
    """

    sheet: str
    as_of_us: int
    leads: int
    compared_with: dict[str, int] | None
    mql_before: int | None
    mql_after: int
    band_before: dict[str, int] | None
    band_after: dict[str, int]
    band_changes: int | None  # leads whose band differs
    # {from, to, leads}, biggest first; from null: the lead had no stored score
    band_moves: list[dict[str, Any]] = field(default_factory=list)
    grade_changes: int | None = None
    score_changes: int | None = None  # leads whose score, band, grade or MQL flag changes
    movers: list[Mover] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preview_model(
    store: Store,
    model: Model,
    yaml_text: str,
    *,
    as_of_us: int | None = None,
    movers: int = MOVERS,
    part: int = RESCORE_PART,
) -> ModelPreview:
    """Score every stored lead with ``model`` (parsed from ``yaml_text``, stored or not) as of
    ``as_of_us`` (default: the store's clock) and compare with the current scores on the
    sheet named ``model.name``.

    A lead changes when its score moves by at least
    :data:`~leadscore.store.scores.HISTORY_MIN_DELTA` (smaller moves are float noise or a
    little decay) or its band, grade or MQL flag changes; of those, the ``movers`` with the
    biggest score changes are listed. Nothing is written. The leads are read and scored
    ``part`` at a time, in lead id order, as a full rescoring reads them.
    """
    t_us = store.clock() if as_of_us is None else as_of_us
    # Not stored: the version numbers mean nothing. The compiled plan is cached by the text,
    # so previewing the same draft again (or publishing it) does not compile it again.
    draft = Sheet(ModelVersion(0, model.name, 0, yaml_text, "draft", t_us, None), model)
    active: Sheet | None = None
    before: dict[str, _Score] | None = None
    after: dict[str, _Score] = {}
    last: str | None = None  # the last lead id of the parts scored
    # The leads in parts, as a full rescoring reads them (Store.rescore_all): the memory
    # of one part at a time, whatever the store's size.
    while True:
        with store.db.read() as conn:
            if last is None:
                active = next((s for s in store.sheets(conn) if s.name == model.name), None)
                if active is not None:
                    before = {
                        lead_id: _Score(float(score), band, grade, bool(mql))
                        for lead_id, score, band, grade, mql in conn.execute(
                            sa.select(
                                scores.c.lead_id,
                                scores.c.score,
                                scores.c.band,
                                scores.c.grade,
                                scores.c.mql,
                            ).where(scores.c.sheet == model.name)
                        )
                    }
            found = _next_part(conn, last, part)
            if found is None:
                break
            ids, more, span = found
            prepared = PreparedInputs(*_export(conn, [draft], span))
        for r in _batch_rows([draft], prepared, t_us):
            after[r["lead_id"]] = _Score(float(r["score"]), r["band"], r["grade"], bool(r["mql"]))
        del prepared
        last = ids[-1]
        if not more:
            break
    preview = ModelPreview(
        sheet=model.name,
        as_of_us=t_us,
        leads=len(after),
        compared_with=None if active is None else {"version": active.version.version},
        mql_before=None,
        mql_after=sum(s.mql for s in after.values()),
        band_before=None,
        band_after=_band_counts(model, after.values()),
        band_changes=None,
    )
    if active is None or before is None:
        return preview
    # Over the leads scored now: a score row whose lead is gone would not count.
    old = {lead_id: before[lead_id] for lead_id in after if lead_id in before}
    preview.mql_before = sum(s.mql for s in old.values())
    preview.band_before = _band_counts(active.model, old.values())
    moves: Counter[tuple[str | None, str | None]] = Counter()
    changed: list[tuple[str, _Score | None, _Score]] = []
    grade_changes = 0
    for lead_id, new in after.items():
        was = old.get(lead_id)
        if was is None or was.band != new.band:
            # from null: no stored score; NO_BAND: below the lowest band
            frm = None if was is None else (was.band or NO_BAND)
            moves[(frm, new.band or NO_BAND)] += 1
        if was is not None and was.grade != new.grade:
            grade_changes += 1
        if (
            was is None
            or abs(new.score - was.score) >= HISTORY_MIN_DELTA
            or (was.band, was.grade, was.mql) != (new.band, new.grade, new.mql)
        ):
            changed.append((lead_id, was, new))
    order = _band_order(active.model, model)
    preview.band_changes = sum(moves.values())
    preview.band_moves = [
        {"from": b1, "to": b2, "leads": n}
        for (b1, b2), n in sorted(
            moves.items(), key=lambda m: (-m[1], order(m[0][0]), order(m[0][1]))
        )
    ]
    preview.grade_changes = grade_changes
    preview.score_changes = len(changed)
    compared: list[tuple[str, _Score, _Score]] = [
        (lead_id, was, new) for lead_id, was, new in changed if was is not None
    ]
    compared.sort(key=lambda c: (-abs(c[2].score - c[1].score), c[0]))
    ranked = compared[:movers]
    with store.db.read() as conn:
        who = _who(conn, [lead_id for lead_id, _, _ in ranked])
    for lead_id, was, new in ranked:
        email, name, company = who.get(lead_id, (None, None, None))
        preview.movers.append(
            Mover(
                lead_id,
                email,
                name,
                company,
                was.score,
                new.score,
                new.score - was.score,
                was.band,
                new.band,
                was.grade,
                new.grade,
                was.mql,
                new.mql,
            )
        )
    return preview


def _band_counts(model: Model, results: Iterable[_Score]) -> dict[str, int]:
    """Leads per band, in the model's order (lowest first), every band listed; leads below the
    lowest band (or of a band the model does not have) after them."""
    counts = {name: 0 for name, _ in model.bands}
    for s in results:
        key = NO_BAND if s.band is None else s.band
        counts[key] = counts.get(key, 0) + 1
    return counts


def _band_order(*models: Model) -> Callable[[str | None], tuple[int, str]]:
    """A sort key for band names: the models' bands from the lowest, then any other name."""
    rank: dict[str | None, int] = {None: -1}
    for m in models:
        for name, _ in m.bands:
            rank.setdefault(name, len(rank))

    def key(band: str | None) -> tuple[int, str]:
        return (rank.get(band, len(rank)), band or "")

    return key


def _who(conn: Connection, lead_ids: Sequence[str]) -> dict[str, tuple[str | None, ...]]:
    """(email, name, company) of a few leads, from their profiles where present."""
    if not lead_ids:
        return {}
    out: dict[str, tuple[str | None, ...]] = {}
    q = sa.select(leads.c.lead_id, leads.c.email, leads.c.profile).where(
        leads.c.lead_id.in_(list(lead_ids))
    )
    for lead_id, email, profile in conn.execute(q):
        name = _text(profile.get("name")) or (
            " ".join(
                t for t in (_text(profile.get("first_name")), _text(profile.get("last_name"))) if t
            )
            or None
        )
        company = _text(profile.get("company"))
        out[lead_id] = (email or _text(profile.get("email")), name, company)
    return out


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# --- diffs of stored versions -----------------------------------------------------------------


@dataclass
class ModelDiff:
    name: str
    from_version: int | None  # None: the first version, diffed against nothing
    to_version: int
    diff: str
    added: int
    removed: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "from": self.from_version,
            "to": self.to_version,
            "diff": self.diff,
            "added": self.added,
            "removed": self.removed,
        }


def model_diff(
    conn: Connection, name: str, from_version: int | None = None, to_version: int | None = None
) -> ModelDiff:
    """The unified diff from one stored version of model ``name`` to another.

    ``to_version`` defaults to the newest; ``from_version`` to the published version when it
    is older than ``to_version`` (what publishing would change), else the version just before
    ``to_version`` (None when there is none: every line is added). :class:`NotFound` for an
    unknown model or version.
    """
    versions = list_versions(conn, name)
    if not versions:
        raise NotFound(f"no model {name!r} in the store")
    to = versions[-1] if to_version is None else get_version(conn, name, to_version)
    frm: ModelVersion | None
    if from_version is not None:
        frm = get_version(conn, name, from_version)
    else:
        published = [v for v in versions if v.status == "published" and v.version < to.version]
        older = [v for v in versions if v.version < to.version]
        frm = published[0] if published else (older[-1] if older else None)
    old_lines = _lines(frm.yaml if frm is not None else "")
    new_lines = _lines(to.yaml)
    diff = list(
        difflib.unified_diff(
            old_lines,
            new_lines,
            fromfile=f"{name} v{frm.version}" if frm is not None else "/dev/null",
            tofile=f"{name} v{to.version}",
        )
    )
    # The first two lines are the ---/+++ header (a content line may start with "++").
    body = diff[2:]
    return ModelDiff(
        name,
        None if frm is None else frm.version,
        to.version,
        "".join(diff),
        sum(1 for line in body if line.startswith("+")),
        sum(1 for line in body if line.startswith("-")),
    )


def _lines(text: str) -> list[str]:
    """Lines, each ending in a newline: a last line without one gets one, so the diff stays
    well-formed (a change of the final newline alone is not shown)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line + "\n" for line in lines]
