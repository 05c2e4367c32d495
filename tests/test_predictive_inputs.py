"""Reading exports: the separator of a CSV file (`,`, `;` or tab), found from its first lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadscore import InputError
from leadscore.inputs import (
    NamedData,
    csv_delimiter,
    normalize_events,
    normalize_leads,
    read_table,
)

BANK = (
    Path(__file__).resolve().parents[2] / "shared/data/uci_bank_marketing/bank-additional-full.csv"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- separators ------------------------------------------------------------------------------


def test_semicolon_and_tab_files_read_as_comma_ones(tmp_path: Path) -> None:
    rows = [["lead_id", "job title", "amount"], ["L1", "VP, Sales", "1.5"], ["L2", "CEO", "3"]]
    comma = 'lead_id,job title,amount\nL1,"VP, Sales",1.5\nL2,CEO,3\n'
    expected = normalize_leads(write(tmp_path / "c.csv", comma))
    assert expected.to_pylist() == [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    semicolon = '"lead_id";"job title";"amount"\n"L1";"VP, Sales";1.5\n"L2";"CEO";3\n'  # bank's
    tab = "lead_id\tjob title\tamount\nL1\tVP, Sales\t1.5\nL2\tCEO\t3\n"
    for source in (
        write(tmp_path / "s.csv", semicolon),
        write(tmp_path / "t.csv", tab),
        write(tmp_path / "t.tsv", tab),
        NamedData("upload.csv", semicolon.encode()),
    ):
        assert normalize_leads(source).equals(expected), source
    # a comma file whose values hold semicolons stays a comma file; one column is one column
    lists = "lead_id,tags\nL1,a;b;c\nL2,d;e;f\n"
    assert normalize_leads(write(tmp_path / "l.csv", lists)).column("tags")[0].as_py() == "a;b;c"
    assert csv_delimiter("lead_id\nL1\n") == ","
    assert csv_delimiter('lead_id;"a,b"\nL1;x\n') == ";"


def test_a_semicolon_file_names_its_bad_lines(tmp_path: Path) -> None:
    """The lines of a `;` file are counted with its separator: a value over two lines and a
    line with a value too many are named by their line."""
    events = 'lead_id;type;ts;note\nA;view;2026-01-01;"two\nlines; here"\nB;view;soon;x\n'
    with pytest.raises(InputError) as info:
        normalize_events(write(tmp_path / "e.csv", events))
    assert "line 4 ('soon')" in str(info.value)
    with pytest.raises(InputError) as info:
        normalize_leads(write(tmp_path / "l.csv", "lead_id;a\nL1;x\nL2;y;z\n"))
    assert "line 3: 3 values where the header names 2" in str(info.value)
    assert "A value holding a semicolon (the separator) needs double quotes" in str(info.value)


@pytest.mark.skipif(not BANK.exists(), reason="the shared data is not there")
def test_the_bank_file_reads_as_its_columns() -> None:
    table = read_table(BANK)
    assert table.num_rows == 41_188 and table.num_columns == 21
    assert table.column("job")[0].as_py() == "housemaid" and table.column_names[-1] == "y"
