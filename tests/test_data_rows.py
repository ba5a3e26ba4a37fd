"""Row numbers that find the row: in a JSON array (pretty or written on one line, as json.dump
writes it) every message names the 1-based row and, where it differs, the line the row starts on
(`file.json: row 4 (line 1): …`); JSON lines keep `file.jsonl:LINE`. The same location reaches
every command that reports rows: check, convert, split, dedupe and train's data loading."""

from __future__ import annotations

import json

import pytest

from tunewise.cli import main
from tunewise.data import load_conversations
from tunewise.data.check import check_dataset
from tunewise.data.convert import convert_file
from tunewise.data.formats import iter_conversations, iter_rows
from tunewise.data.ops import dedupe_file, split_file
from tunewise.errors import TunewiseError


def _turns(q: str, a) -> dict:
    return {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}


def _held_back_rows() -> tuple[list[dict], dict[int, str]]:
    """20 ShareGPT rows with problems in rows 4, 5, 6, 12 and 18 (1-based), and what each one's
    message says."""
    rows = [_turns(f"Question {i}: what is {i} + {i}?", f"It is {2 * i}.") for i in range(1, 21)]
    rows[3] = _turns("Empty answer?", "")  # row 4
    rows[17] = _turns("Blank answer?", "   ")  # row 18
    rows[4] = _turns("Number answer?", 42)  # row 5
    rows[11] = {"conversations": "human: hi / gpt: hello"}  # row 12
    rows[5] = {"conversations": [{"from": "gpt", "value": "I speak first"}, {"from": "human", "value": "ok"},
                                 {"from": "gpt", "value": "fine"}]}  # row 6
    expected = {4: "empty response", 5: "must be a string, got int", 6: "impossible role order",
                12: "must be a list of turns", 18: "empty response"}
    return rows, expected


def _row_lines(text: str) -> dict[int, int]:
    """Row number -> the line its object starts on, for json.dumps(rows, indent=2)."""
    starts = [i for i, line in enumerate(text.splitlines(), start=1) if line == "  {"]
    return {k: line for k, line in enumerate(starts, start=1)}


@pytest.fixture(params=["minified", "pretty"])
def held_back(request, tmp_path):
    rows, expected = _held_back_rows()
    if request.param == "minified":
        text = json.dumps(rows)  # what json.dump writes: one line
        lines = {k: 1 for k in range(1, len(rows) + 1)}
    else:
        text = json.dumps(rows, indent=2)
        lines = _row_lines(text)
    path = tmp_path / f"held_back_{request.param}.json"
    path.write_text(text)

    def where(row: int) -> str:
        return f"{path.name}: row {row} (line {lines[row]})" if lines[row] != row else f"{path.name}: row {row}"

    return path, expected, where


def test_check_names_each_bad_row(held_back, smol_tokenizer):
    path, expected, where = held_back
    report = check_dataset(path, tokenizer=smol_tokenizer)
    bad = [(i.source, i.message) for i in report.issues if i.code == "bad_row"]
    assert [s for s, _ in bad] == [where(k) for k in sorted(expected)]
    for (source, message), k in zip(bad, sorted(expected)):
        assert expected[k] in message, (source, message)
    assert report.rows == 20 and report.examples == 15


def test_check_cli_prints_row_and_line(held_back, smol_tokenizer_dir, capsys):
    path, expected, where = held_back
    with pytest.raises(SystemExit) as exit_:
        main(["data", "check", str(path), "--model", str(smol_tokenizer_dir), "--show", "50"])
    text = capsys.readouterr().out
    assert exit_.value.code == 1 and "Traceback" not in text
    for k, what in expected.items():
        assert any(line.strip().startswith(where(k) + ":") and what in line for line in text.splitlines()), (k, text)


def test_train_loading_convert_split_and_dedupe_name_the_row(held_back, tmp_path):
    path, expected, where = held_back
    first = where(min(expected))
    with pytest.raises(TunewiseError) as err:  # what `tunewise train` reports when it reads the data
        load_conversations(path)
    assert err.value.message.startswith(f"{first}: empty response") and "4 more bad rows" in err.value.message
    for call in (lambda: convert_file(path, tmp_path / "out.jsonl", "openai"),
                 lambda: split_file(path, out_dir=tmp_path),
                 lambda: dedupe_file(path, tmp_path / "d.json")):
        with pytest.raises(TunewiseError) as err:
            call()
        assert f"{first}: empty response" in err.value.message and where(5) in err.value.message


def test_good_rows_carry_their_row_into_training_and_duplicates(tmp_path, smol_tokenizer):
    rows = [{"instruction": f"Say {i}", "output": f"{i}!"} for i in range(1, 6)] + [{"instruction": "Say 2", "output": "2!"}]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(rows))
    convs = load_conversations(path)
    assert [c.source for c in convs] == ["dup.json: row 1"] + [f"dup.json: row {k} (line 1)" for k in range(2, 7)]
    report = check_dataset(path, tokenizer=smol_tokenizer)
    (dup,) = [i for i in report.issues if i.code == "duplicate"]
    assert (dup.source, dup.message) == ("dup.json: row 6 (line 1)", "exact duplicate of dup.json: row 2 (line 1)")
    removed = dedupe_file(path, tmp_path / "d.json").removed
    assert removed == [{"source": "dup.json: row 6 (line 1)", "duplicate_of": "dup.json: row 2 (line 1)", "kind": "exact"}]


def test_line_is_left_out_where_it_equals_the_row(tmp_path):
    path = tmp_path / "one_per_line.json"
    path.write_text('[{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": 1},\n'
                    '{"instruction": "e", "output": "f"}]\n')
    assert [(r.source, r.error) for r in iter_conversations(path)] == [
        ("one_per_line.json: row 1", None), ("one_per_line.json: row 2", "'output' must be a string, got int"),
        ("one_per_line.json: row 3", None)]


def test_jsonl_keeps_file_colon_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": ""}\n')
    assert [r.source for r in iter_conversations(path)] == ["rows.jsonl:1", "rows.jsonl:3"]


def test_malformed_json_and_bad_bytes_in_a_minified_array_name_the_row(tmp_path):
    good = json.dumps({"instruction": "a", "output": "b"})
    path = tmp_path / "broken.json"
    path.write_text("[" + ", ".join([good] * 3) + ', {"instruction": "x", "output": }]')
    *_, last = iter_rows(path)
    assert last.source == "broken.json: row 4 (line 1)" and last.error.startswith("malformed JSON")
    raw = ("[" + ", ".join([good] * 2)).encode() + b', {"instruction": "caf\xe9", "output": "x"}, ' + good.encode() + b"]"
    path.write_bytes(raw)
    rows = list(iter_rows(path))
    bad = [r for r in rows if r.error]
    assert [(r.source, r.index) for r in bad] == [("broken.json: row 3 (line 1)", 2)]
    assert "invalid UTF-8 byte 0xe9" in bad[0].error and len([r for r in rows if r.error is None]) == 4


def test_unclosed_array_says_after_which_row(tmp_path):
    path = tmp_path / "open.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}')
    *_, last = iter_rows(path)
    assert last.source == "open.json: after row 2 (line 1)" and "not closed" in last.error
