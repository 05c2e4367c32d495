"""Bad input gets a message naming the file, column and rows, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from leadscore import InputError, prepare
from leadscore.inputs import LoadReport, NamedData, normalize_events, normalize_leads


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_id_column_names_the_columns(tmp_path: Path) -> None:
    leads = write(tmp_path / "leads.csv", "id,Job Title\n1,VP\n")
    with pytest.raises(InputError) as info:
        normalize_leads(leads)
    assert str(info.value) == (
        f"{leads}: no lead id column 'lead_id' (columns: 'id', 'Job Title')\n"
        "Name the id column with --lead-id-column."
    )
    table = normalize_leads(leads, "id")
    assert table.column_names == ["lead_id", "Job Title"]


def test_bad_rows_are_listed_by_line(tmp_path: Path) -> None:
    events = write(
        tmp_path / "events.csv",
        "lead_id,type,ts\n"
        "a,page_view,2026-01-01T00:00:00Z\n"
        "a,page_view,yesterday\n"  # line 3
        ",page_view,2026-01-01\n"  # line 4: no id
        "b,email_open,1767225600\n"  # epoch seconds
        "b,email_open,\n",  # line 6: no time
    )
    with pytest.raises(InputError) as info:
        normalize_events(events)
    assert "column 'lead_id': 1 line has no lead id: line 4" in str(info.value)
    with pytest.raises(InputError) as info:
        normalize_events(write(tmp_path / "e2.csv", "lead_id,type,ts\na,x,yesterday\nb,y,\n"))
    text = str(info.value)
    assert "column 'ts': 2 lines have a missing or unreadable timestamp" in text
    assert "lines 2 ('yesterday'), 3 (None)" in text
    assert "--skip-bad-rows" in text


def test_lines_are_counted_as_the_file_has_them(tmp_path: Path) -> None:
    """A value over several lines and blank lines (which the readers skip) move the lines of
    the rows after them; the numbers shown are the file's own. Uploads alike."""
    text = (
        "lead_id,type,ts,note\n"
        'a,page_view,2026-06-01,"multi\nline\nnote"\n'  # lines 2-4
        "\n"  # line 5
        "b,page_view,2026-06-02,x\n"  # line 6
        "c,page_view,BAD,y\n"  # line 7
        ",page_view,2026-06-02,z"  # line 8, no line break at the end
    )
    for source in (write(tmp_path / "e.csv", text), NamedData("up.csv", text.encode())):
        with pytest.raises(InputError) as info:
            normalize_events(source)
        assert "line 7 ('BAD')" in str(info.value) and "no lead id: line 8" in str(info.value)
    jsonl = '{"lead_id": "a", "type": "x", "ts": "2026-06-01"}\n\n\n{"lead_id": "b", "type": "x"}\n'
    with pytest.raises(InputError) as info:
        normalize_events(write(tmp_path / "e.jsonl", jsonl))
    assert "line 4 (None)" in str(info.value)
    # a value holding U+2028 (a line break to str.splitlines, not to JSON lines) stays whole
    sep = '{"lead_id": "a", "type": "x", "ts": "2026-06-01", "note": "a\u2028b"}\n'
    table = normalize_events(write(tmp_path / "sep.jsonl", sep))
    assert table.column("note").to_pylist() == ["a\u2028b"]


def test_lines_with_too_many_values_and_text_not_utf8_are_named_by_line(
    tmp_path: Path,
) -> None:
    text = 'lead_id,job_title,employees\nL1,VP,200\nL2,"multi\nline",3\nL3,VP,200,extra\nL4,x\n'
    for source in (write(tmp_path / "l.csv", text), NamedData("up.csv", text.encode())):
        with pytest.raises(InputError) as info:
            normalize_leads(source)
        message = str(info.value)
        assert "line 5: 4 values where the header names 3" in message
        assert "line 6: 2 values where the header names 3" in message
        assert "needs double quotes" in message
    latin = tmp_path / "latin.csv"
    latin.write_bytes("lead_id,city\nL1,Zürich\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv: line 2 is not UTF-8 text \(byte 0xfc\)"):
        normalize_leads(latin)


def test_skip_bad_rows_keeps_the_good_ones(tmp_path: Path) -> None:
    leads = write(tmp_path / "leads.csv", "lead_id,x\na,1\n,2\nb,3\na,4\n")
    events = write(
        tmp_path / "events.csv",
        "lead_id,type,ts,url\na,page_view,2026-01-01T00:00:00Z,/p\nb,page_view,nope,/q\n",
    )
    prepared = prepare(leads, events, skip_bad_rows=True)
    assert prepared.leads.column("lead_id").to_pylist() == ["a", "b"]
    assert prepared.events.num_rows == 1
    warnings = "\n".join(prepared.report.warnings)
    assert "skipped 1 line has no lead id: line 3" in warnings
    assert "skipped 1 line repeats an earlier lead id: line 5 ('a')" in warnings
    assert "skipped 1 line has a missing or unreadable timestamp" in warnings


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        normalize_leads(tmp_path / "nope.csv")
    with pytest.raises(InputError, match=r"unknown file format '\.xlsx'"):
        normalize_leads(write(tmp_path / "l.xlsx", "x"))


def test_formats_agree(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "lead_id": ["a", "b"],
            "employees": pa.array([200, None], pa.int64()),
            "score_hint": [1.5, 2.0],
        }
    )
    pq.write_table(table, tmp_path / "l.parquet")
    write(
        tmp_path / "l.jsonl",
        '{"lead_id": "a", "employees": 200, "score_hint": 1.5}\n'
        '{"lead_id": "b", "employees": null, "score_hint": 2.0}\n',
    )
    write(tmp_path / "l.csv", "lead_id,employees,score_hint\na,200,1.5\nb,,2\n")
    got = [normalize_leads(tmp_path / n).to_pylist() for n in ("l.parquet", "l.jsonl", "l.csv")]
    assert (
        got[0]
        == got[1]
        == got[2]
        == [
            {"lead_id": "a", "employees": "200", "score_hint": "1.5"},
            {"lead_id": "b", "employees": None, "score_hint": "2"},
        ]
    )


def test_naive_times_are_utc_and_epoch_millis_are_read(tmp_path: Path) -> None:
    events = write(
        tmp_path / "e.csv",
        "lead_id,type,ts\na,x,2026-01-01T00:00:00\na,x,2026-01-01T01:00:00+01:00\n"
        "a,x,1767225600000\n",
    )
    stamps = normalize_events(events).column("ts").cast(pa.int64()).to_pylist()
    assert stamps == [1767225600000000] * 3


def test_non_numbers_are_warnings_naming_original_lines(tmp_path: Path) -> None:
    """Line 3 is dropped (no id); the non-number on line 4 keeps its line number."""
    from leadscore import parse_model, score_run

    leads = write(tmp_path / "leads.csv", "lead_id,employees\na,300\n,5\nb,lots\nc,1e3\n")
    events = write(
        tmp_path / "events.csv",
        "lead_id,type,ts,amount\na,deal,2026-01-01,12\nb,deal,2026-01-02,twelve\n"
        "c,other,2026-01-02,zero\n",
    )
    model = parse_model(
        "version: 1\nname: m\nprofile: [{id: size, if: {field: employees, gte: 200}, points: 5}]\n"
        "activity: [{id: big, event: deal, where: {field: amount, gt: 10}, points: 1}]\n"
    )
    run = score_run(model, prepare(leads, events, skip_bad_rows=True), "2026-06-30T00:00:00Z")
    assert run.table.column("score").to_pylist() == [6.0, 0.0, 5.0]
    text = "\n".join(run.warnings)
    assert f"{leads}: column 'employees': 1 value(s) are not numbers" in text
    assert "size was false for them: line 4 ('lots')" in text
    # only events the rule looks at are checked: 'zero' belongs to another event type
    assert "rule(s) big was false for them: line 3 ('twelve')" in text
    assert "'zero'" not in text


def test_every_kind_of_bad_row_is_reported_at_once(tmp_path: Path) -> None:
    events = write(
        tmp_path / "events.csv",
        "lead_id,type,ts\na,x,2026-01-01\na,x,soon\na,,2026-01-01\n,x,2026-01-01\n",
    )
    with pytest.raises(InputError) as info:
        normalize_events(events)
    assert [p.column for p in info.value.problems] == ["lead_id", "type", "ts"]
    assert [str(p).rsplit(": ", 1)[-1] for p in info.value.problems] == [
        "line 5",
        "line 4",
        "line 3 ('soon')",
    ]


def test_timestamps_in_every_shape(tmp_path: Path) -> None:
    """ns Parquet, dates, and epoch numbers in s, ms, µs and ns are one instant."""
    import datetime as dt

    import pyarrow.parquet as pq

    want = 1767225600000000  # 2026-01-01T00:00:00Z
    ns = pa.table(
        {"lead_id": ["a"], "type": ["x"], "ts": pa.array([want * 1000], pa.timestamp("ns"))}
    )
    pq.write_table(ns, tmp_path / "ns.parquet")
    dates = pa.table({"lead_id": ["a"], "type": ["x"], "ts": [dt.date(2026, 1, 1)]})
    pq.write_table(dates, tmp_path / "dates.parquet")
    epochs = write(
        tmp_path / "epochs.csv",
        "lead_id,type,ts\na,x,1767225600\na,x,1767225600000\na,x,1767225600000000\n"
        "a,x,1767225600000000000\na,x,2026-01-01t00:00:00z\n",  # RFC 3339's lower case
    )
    for path in (tmp_path / "ns.parquet", tmp_path / "dates.parquet", epochs):
        stamps = normalize_events(path).column("ts").cast(pa.int64()).to_pylist()
        assert set(stamps) == {want}, path
    with pytest.raises(InputError, match=r"line 2 \('1e30'\)"):
        normalize_events(write(tmp_path / "far.csv", "lead_id,type,ts\na,x,1e30\n"))


def test_column_names_are_read_without_the_spaces_around_them(tmp_path: Path) -> None:
    events = write(tmp_path / "e.csv", "lead_id , type ,ts\nL1,demo_request,2026-01-01\n")
    assert normalize_events(events).column_names[:3] == ["lead_id", "type", "ts"]
    # unless two columns would then share a name
    leads = write(tmp_path / "l.csv", "lead_id,a,a \nL1,1,2\n")
    assert normalize_leads(leads).column_names == ["lead_id", "a", "a "]


def test_byte_order_mark_and_json_arrays(tmp_path: Path) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefflead_id,zip\n007,02134\n".encode())
    assert normalize_leads(bom).to_pylist() == [{"lead_id": "007", "zip": "02134"}]
    array = write(tmp_path / "l.json", '[{"lead_id": "a", "n": 1}, {"lead_id": "b"}]')
    assert normalize_leads(array).to_pylist() == [
        {"lead_id": "a", "n": "1"},
        {"lead_id": "b", "n": None},
    ]
    with pytest.raises(InputError, match="each item of the array must be a JSON object"):
        normalize_leads(write(tmp_path / "bad.json", '[{"lead_id": "a"}, 3]'))


def test_json_that_holds_no_object_is_skipped_on_request(tmp_path: Path) -> None:
    """With skip_bad_rows a JSON line that does not parse, or an item of a JSON array that is
    not an object, is left out and listed (by line, by item) instead of stopping the read."""
    report = LoadReport()
    lines = write(tmp_path / "l.jsonl", '{"lead_id": "a"}\n{"lead_id": \n{"lead_id": "b"}\n')
    table = normalize_leads(lines, skip_bad_rows=True, report=report)
    assert table.column("lead_id").to_pylist() == ["a", "b"]
    array = write(tmp_path / "l.json", '[{"lead_id": "a"}, 3, {"lead_id": ""}]')
    table = normalize_leads(array, skip_bad_rows=True, report=report)
    assert table.column("lead_id").to_pylist() == ["a"]
    assert report.warnings == [
        f"{lines}: skipped 1 line holds no JSON object: line 2 (not JSON: Expecting value at "
        "column 13)",
        f"{array}: skipped 1 item holds no JSON object: item 2 (each item of the array must be "
        "a JSON object)",
        f"{array}: column 'lead_id': skipped 1 item has no lead id: item 3",
    ]
    with pytest.raises(InputError, match="line 2: not JSON: Expecting value at column 13"):
        normalize_leads(lines)
