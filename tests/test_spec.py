"""Model files: every problem at once, as file:line: path: message."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from leadscore import ModelError, load_model, load_models, model_json_schema, parse_model
from leadscore.errors import ConfigError
from leadscore.store.trigger_config import parse_triggers

BAD = textwrap.dedent(
    """\
    version: 1
    name: bad
    groups:
      fit: {kind: profile, max: 100}
    profile:
      - id: a
        group: fitt
        if: {field: job_title, containz: vp}
        points: 5
      - id: a
        if: {field: x, matches: "("}
        stars: 7
    activity:
      - id: b
        event: page_view
        half_life_days: -3
        points: 2
        frequency: sometimes
      - id: c
        event: page_view
        where: {field: url, contains: /p, eq: 3}
        points: 1
    grades: {A: 20, B: 40}
    bands: {cold: 0, hot: 40}
    mql: warm
    """
)


def test_every_error_reported_at_once_with_lines() -> None:
    with pytest.raises(ModelError) as info:
        parse_model(BAD, "bad.yaml")
    lines = [str(i) for i in info.value.issues]
    assert lines == [
        "bad.yaml:7: profile[0].group: unknown group 'fitt' (declared: engagement, fit)",
        "bad.yaml:8: profile[0].if.containz: unknown key 'containz' (did you mean 'contains'?)",
        "bad.yaml:10: profile[1].id: duplicate rule id 'a' (profile[0].id)",
        "bad.yaml:11: profile[1].if.matches: regular expression does not compile: "
        "missing ), unterminated subpattern at position 0",
        "bad.yaml:12: profile[1].stars: must be <= 5, got 7",
        "bad.yaml:16: activity[0].half_life_days: must be > 0, got -3",
        "bad.yaml:18: activity[0].frequency: must be 'every', 'once' or 'once_per_item', "
        "got 'sometimes'",
        "bad.yaml:21: activity[1].where: needs exactly one operator (eq, ne, in, not_in, "
        "contains, not_contains, starts_with, ends_with, matches, gt, gte, lt, lte, between, "
        "exists, missing); found eq, contains",
        "bad.yaml:23: grades.B: grades must be listed best to worst, thresholds falling: "
        "B (40) after A (20)",
        "bad.yaml:25: mql: unknown band 'warm' (cold, hot)",
    ]


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("version: 2\nname: x\n", "x.yaml:1: version: must be 1, got 2"),
        ("version: 1\n", "x.yaml:1: name: required"),
        ("version: 1\nname: x\ncolour: red\n", "x.yaml:3: colour: unknown key 'colour'"),
        ("version: 1\nname: x\nname: y\n", "x.yaml:3: name: duplicate key"),
        (
            "version: 1\nname: x\nbands: {cold: 0, hot: -1}\n",
            "x.yaml:3: bands.hot: bands must be listed lowest first, bounds rising: hot (-1) after "
            "cold (0)",
        ),
        (
            "version: 1\nname: x\nactivity:\n  - {id: a, event: e}\n",
            "x.yaml:4: activity[0]: needs exactly one of `points` or `stars`",
        ),
        (
            "version: 1\nname: x\nactivity:\n  - {id: a, event: e, points: 1, diminishing: 1.5}\n",
            "x.yaml:4: activity[0].diminishing: must be <= 1, got 1.5",
        ),
        (
            "version: 1\nname: x\nprofile:\n  - {id: a, group: engagement, if: {field: f, exists: "
            "true}, points: 1}\nactivity:\n  - {id: b, event: e, points: 1}\n",
            "x.yaml:6: activity[0]: group 'engagement' holds profile rules (profile[0].group), so "
            "this activity rule cannot join it",
        ),
        (
            "version: 1\nname: x\nprofile:\n"
            "  - {id: a, if: {field: f, between: [5, 1]}, points: 1}\n",
            "x.yaml:4: profile[0].if.between: must be [low, high] with low <= high, got [5.0, 1.0]",
        ),
        ("version: 1\nname: x\n  bad: [\n", "x.yaml:3: not valid YAML"),
        (
            "version: 1\nname: x\nprofile:\n  - {id: a, if: {field: c, in: [US, NO]}, points: 1}\n",
            "x.yaml:4: profile[0].if.in: YAML read a value here as false (it does so for NO, yes, "
            "on, off, ...): quote it, e.g. 'NO', if you mean the text",
        ),
        ("", "x.yaml:1: the file is empty"),
    ],
)
def test_single_errors(snippet: str, expected: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model(snippet, "x.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_resolution_stars_implicit_groups_and_tables() -> None:
    m = parse_model(
        textwrap.dedent(
            """\
            version: 1
            name: s
            points_per_star: 7
            profile:
              - {id: p, if: {field: f, exists: true}, stars: 3}
            activity:
              - {id: a, event: [x, y], points: 2}
            inactivity:
              - {id: q, no_activity_days: 10, points: -1}
            grades: {A: 10, B: 5}
            bands: {low: -.inf, high: 10}
            mql: 8
            """
        )
    )
    assert m.rule("p").points == 21
    assert [(g.id, g.kind, [r.id for r in g.rules]) for g in m.groups] == [
        ("fit", "profile", ["p"]),
        ("engagement", "activity", ["a", "q"]),
    ]
    assert m.grade_for(4.9) == "F" and m.grade_for(5) == "B" and m.grade_for(100) == "A"
    assert m.band_for(-1e9) == "low" and m.band_for(10) == "high"
    assert m.is_mql(8) and not m.is_mql(7.99)
    assert m.event_types == {"x", "y"}


def test_missing_file_and_sheets(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        load_model(tmp_path / "nope.yaml")
    (tmp_path / "a.yaml").write_text("version: 1\nname: one\n")
    (tmp_path / "b.yaml").write_text("version: 1\nname: one\n")
    with pytest.raises(ModelError, match="sheet name 'one' is also used by"):
        load_models([tmp_path])
    (tmp_path / "b.yaml").write_text("version: 1\nname: two\n")
    assert [m.name for m in load_models([tmp_path])] == ["one", "two"]


def test_json_schema_describes_the_file() -> None:
    schema = model_json_schema()
    json.dumps(schema)
    assert set(schema["properties"]) >= {"version", "name", "profile", "activity", "bands"}
    assert schema["additionalProperties"] is False
    rule = schema["$defs"]["ProfileRuleSpec"]["properties"]
    assert "if" in rule


def test_shipped_models_are_valid_and_their_examples_pass() -> None:
    from leadscore import run_examples
    from tests.conftest import MODELS

    for path in MODELS.glob("*.yaml"):
        model = load_model(path)
        outcomes = run_examples(model)
        assert outcomes, f"{path.name} has no examples"
        assert [o.problems for o in outcomes if not o.passed] == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("activity: [{id: a, event: e, points: .nan}]", "activity[0].points: must be a finite"),
        ("groups: {fit: {max: .inf}}", "groups.fit.max: must be a finite number, got inf"),
        ("grades: {A: .nan}", "grades: A: must be a number or -.inf, not NaN"),
        (
            "activity: [{id: a, event: e, points: 1, where: {field: ts, exists: true}}]",
            "activity[0].where.field: `where` cannot read 'ts'",
        ),
        (
            "profile:\n  - id: a\n    points: 1\n    if: {field: f, exists: true}\n    on: 3",
            "x.yaml:7: profile[0].on: YAML reads the key 'on' as true/false",
        ),
    ],
)
def test_values_the_evaluators_cannot_agree_on_are_rejected(body: str, expected: str) -> None:
    with pytest.raises(ModelError) as info:
        parse_model("version: 1\nname: x\n" + body + "\n", "x.yaml")
    assert expected in str(info.value)


def test_deeply_nested_yaml_is_an_error_not_a_crash() -> None:
    """libyaml recurses without a limit (a segmentation fault): such text goes to PyYAML."""
    with pytest.raises(ModelError, match="nested too deeply"):
        parse_model("rules: " + "[" * 30_000 + "]" * 30_000)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: &a [*a]\n", 1),
        ("version: 1\nname: x\nbands: &b\n  cold: 0\n  hot: [1, *b]\n", 3),
        ("version: 1\nname: x\nprofile:\n- &r {id: r, points: 1, if: {all: [*r]}}\n", 4),
    ],
)
def test_an_alias_inside_the_node_it_names_is_an_error_not_a_crash(text: str, line: int) -> None:
    """YAML lets a node contain itself through an alias; walking it had no end."""
    with pytest.raises(ModelError) as info:
        parse_model(text, "x.yaml")
    assert f"x.yaml:{line}: not valid here: an alias (*name) inside the node it names" in str(
        info.value
    )


def test_aliases_that_expand_a_small_file_beyond_reason_are_an_error() -> None:
    """Seven levels of nine aliases each: 400 bytes, 5 million values written out (seconds
    and gigabytes to walk). Refused before any walk."""
    lines = ["version: 1", "name: bomb", "x0: &a0 [1, 2, 3, 4, 5, 6, 7, 8, 9]"]
    for i in range(1, 8):
        lines.append(f"x{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    with pytest.raises(ModelError, match="written out, make more than 200,000 values"):
        parse_model("\n".join(lines), "x.yaml")


def test_text_no_store_can_keep_is_an_error_at_its_line() -> None:
    """YAML's escapes write the NUL character and lone surrogate halves, which JSON bodies
    are refused for: a model holding them (PostgreSQL failed to store its scores, and every
    write after the publish failed with it) is refused, each at its line. Triggers alike."""
    text = (
        'version: 1\nname: x\nbands: {"c\\0ld": 0}\nprofile:\n  - id: a\n'
        '    if: {field: x, eq: "a\\ud800"}\n    points: 1\n'
    )
    with pytest.raises(ModelError) as info:
        parse_model(text, "x.yaml")
    message = str(info.value)
    assert "x.yaml:3: bands.c\x00ld: a key: text may not contain the NUL character" in message
    assert "x.yaml:6: profile[0].if.eq: text may not contain half of a UTF-16 surrogate" in message
    triggers = (
        'triggers:\n  - id: t\n    description: "a\\0b"\n    when: {becomes_mql: true}\n'
        "    actions: [{set_stage: sql}]\n"
    )
    with pytest.raises(ConfigError, match=r"t.yaml:3: triggers\[0\].description: text may not"):
        parse_triggers(triggers, "t.yaml")


def test_true_is_not_a_number_of_points() -> None:
    """YAML reads `points: yes` as true, which pydantic would have taken as 1."""
    body = "profile:\n  - id: a\n    if: {field: x, exists: true}\n    points: yes\n"
    with pytest.raises(ModelError) as info:
        parse_model("version: 1\nname: x\n" + body, "x.yaml")
    assert "x.yaml:6: profile[0].points: a number is needed here, not true/false" in str(info.value)


def test_true_is_no_number_inside_a_mapping_a_list_or_a_condition() -> None:
    """Thresholds (`bands: {hot: yes}`), expected points, numeric operators and `between`
    take numbers only: each true/false is named at its own place."""
    text = (
        "version: 1\nname: x\ngrades: {A: on, B: 10}\nbands:\n  cold: -.inf\n  hot: yes\n"
        "mql: hot\nprofile:\n  - {id: a, if: {field: n, gte: yes}, points: 1}\n"
        "  - {id: b, if: {field: n, between: [0, on]}, points: 1}\nexamples:\n"
        "  - name: e\n    as_of: 2026-01-01T00:00:00Z\n    expect: {rules: {a: yes}}\n"
    )
    with pytest.raises(ModelError) as info:
        parse_model(text, "x.yaml")
    lines = str(info.value).splitlines()
    for where in (
        "x.yaml:3: grades.A",
        "x.yaml:6: bands.hot",
        "x.yaml:9: profile[0].if.gte",
        "x.yaml:10: profile[1].if.between[1]",
        "x.yaml:14: examples[0].expect.rules.a",
    ):
        assert f"{where}: a number is needed here, not true/false" in lines, (where, lines)


def test_an_example_that_could_never_pass_is_an_error() -> None:
    """An expected band, grade or priority the model cannot give, an event after as_of."""
    text = (
        "version: 1\nname: m\nbands: {cold: -.inf, hot: 10}\nmql: hot\nexamples:\n"
        "  - name: e\n    as_of: 2026-01-01T00:00:00Z\n    events: [{type: x, days_ago: -1}]\n"
        "    expect: {band: tepid, grade: Z, priority: A1}\n"
    )
    with pytest.raises(ModelError) as info:
        parse_model(text, "m.yaml")
    assert str(info.value).splitlines() == [
        "m.yaml:8: examples[0].events[0].days_ago: must be >= 0, got -1",
        "m.yaml:9: examples[0].expect.band: unknown band 'tepid' (cold, hot)",
        "m.yaml:9: examples[0].expect.grade: unknown grade 'Z' (the model has no grades)",
        "m.yaml:9: examples[0].expect.priority: the model has no priority matrix",
    ]


def test_a_key_written_beside_a_merge_overrides_the_merged_one() -> None:
    """YAML's merge key: `{<<: *base, id: big2}` takes base's keys, its own id and points
    first; a key written twice in one mapping is still a duplicate."""
    text = (
        "version: 1\nname: m\nprofile:\n"
        "  - &r {id: big, if: {field: employees, gte: 1000}, points: 10}\n"
        "  - {<<: *r, id: big2, points: 5}\n"
        "bands: {cold: -.inf, hot: 10}\nmql: hot\n"
    )
    assert [(r.id, r.points) for r in parse_model(text).rules] == [("big", 10.0), ("big2", 5.0)]
    twice = text.replace("points: 5}", "points: 5, id: big3}")
    with pytest.raises(ModelError, match=r"<model>:5: profile\[1\].id: duplicate key"):
        parse_model(twice)
    # a merge of a mapping written in place (inside the one it merges into)
    inline = (
        "version: 1\nname: m\nprofile:\n  - <<: {points: 1}\n    id: a\n"
        "    if: {field: x, eq: y}\n    points: 5\nbands: {cold: -.inf}\n"
    )
    assert [r.points for r in parse_model(inline).rules] == [5.0]


def test_aliases_that_name_a_node_twice_are_fine() -> None:
    model = parse_model(
        "version: 1\nname: x\nbands: {cold: 0, hot: 40}\nprofile:\n"
        "- {id: a, points: 1, if: &vp {field: title, contains: vp}}\n"
        "- {id: b, points: 2, if: {all: [*vp, *vp]}}\n"
    )
    assert [r.id for r in model.rules] == ["a", "b"]


def test_an_unknown_key_is_not_its_own_suggestion() -> None:
    with pytest.raises(ModelError) as info:
        parse_model("version: 1\nname: x\nrules: []\n")
    assert "unknown key 'rules'" in str(info.value)
    assert "did you mean 'rules'" not in str(info.value)
