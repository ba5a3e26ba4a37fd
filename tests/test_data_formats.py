"""Reading every supported format, and the corpus of broken files: each gives the right error with
its line number, no traceback, exit status 1."""

from __future__ import annotations

import codecs
import json

import pytest

from tunewise.cli import main
from tunewise.data import Message, load_conversations, parse_mapping
from tunewise.data.formats import iter_conversations
from tunewise.errors import TunewiseError

SHARED = {
    "alpaca_en_demo.json": ("alpaca", 999),
    "identity.json": ("alpaca", 91),
    "glaive_toolcall_en_demo.json": ("sharegpt", 300),
    "v1_sft_demo.jsonl": ("messages", 500),
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_files_load(shared_data, name):
    fmt, rows = SHARED[name]
    convs = load_conversations(shared_data / name)
    assert len(convs) == rows
    assert {c.meta["format"] for c in convs} == {fmt}
    assert all(any(m.role == "assistant" for m in c.messages) for c in convs)
    assert convs[0].source.startswith(f"{name}:")


def test_alpaca_fields_become_messages(shared_data):
    convs = load_conversations(shared_data / "alpaca_en_demo.json")
    rows = json.loads((shared_data / "alpaca_en_demo.json").read_text())
    k = next(i for i, r in enumerate(rows) if r["input"])  # a row with an input
    row, conv = rows[k], convs[k]
    assert [m.role for m in conv.messages] == ["user", "assistant"]
    assert conv.messages[0].content == row["instruction"] + "\n" + row["input"]
    assert conv.messages[1].content == row["output"]


def test_sharegpt_tool_calls_and_observations(shared_data):
    conv = load_conversations(shared_data / "glaive_toolcall_en_demo.json")[0]
    roles = [m.role for m in conv.messages]
    assert roles[:6] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    call = conv.messages[3].tool_calls[0]["function"]
    assert call["name"] == "search_recipes"
    assert json.loads(call["arguments"]) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert json.loads(conv.tools)[0]["name"] == "search_recipes"


def test_llamafactory_v1_loss_weight(shared_data):
    conv = load_conversations(shared_data / "v1_sft_demo.jsonl")[0]
    assert conv.messages[0] == Message("user", "hi", train=False)
    assert conv.messages[1].train is True


def test_openai_weights_tool_calls_and_text_parts(tmp_path):
    f = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello there", "weight": 0},
                      {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Pune?"}]},
                      {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                            "function": {"name": "weather", "arguments": "{\"city\": \"Pune\"}"}}]},
                      {"role": "tool", "tool_call_id": "c1", "content": "31C"},
                      {"role": "assistant", "content": "31°C in Pune.", "weight": 1}],
         "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}]},
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    (conv,) = load_conversations(f)
    assert conv.meta["format"] == "openai"
    assert conv.messages[2].train is False and conv.messages[6].train is True
    assert conv.messages[3].content == "Weather\nin Pune?"
    assert conv.messages[4].tool_calls[0]["function"]["name"] == "weather"
    assert json.loads(conv.tools) == [{"name": "weather", "parameters": {}}]


def test_csv_with_column_mapping_and_text_files(tmp_path):
    f = tmp_path / "qa.csv"
    f.write_text('question,answer\n"What is 2+2?","4"\n"Capital of India?","New Delhi"\n')
    with pytest.raises(TunewiseError) as err:
        load_conversations(f)
    assert "--map" in err.value.hint
    convs = load_conversations(f, mapping=parse_mapping(["instruction=question,output=answer"]))
    assert [c.messages[-1].content for c in convs] == ["4", "New Delhi"]
    assert convs[1].source == "qa.csv:3"
    t = tmp_path / "corpus.txt"
    t.write_text("First document.\n\nSecond document.\n")
    texts = load_conversations(t)
    assert [c.messages[0].content for c in texts] == ["First document.", "Second document."]
    assert texts[1].messages[0].role == "text" and texts[1].source == "corpus.txt:3"


def test_parquet_with_mapping(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "qa.parquet"
    pq.write_table(pa.table({"q": ["a?", "b?"], "a": ["A.", "B."]}), f)
    convs = load_conversations(f, mapping={"instruction": "q", "output": "a"})
    assert [c.messages[0].content for c in convs] == ["a?", "b?"]
    assert convs[1].source == "qa.parquet[1]"


# ---------------------------------------------------------------------------------------------
# Broken files: the right error, with its line, no traceback, exit status 1
# ---------------------------------------------------------------------------------------------

GOOD = {"instruction": "Say hi", "input": "", "output": "Hi!"}


def _jsonl(rows) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n"


def _corpus(tmp_path):
    """name -> (bytes, [(expected "file:line", expected text in the message)])."""
    good = json.dumps(GOOD)
    array = json.dumps([GOOD] * 4, indent=2)
    cases = {
        "truncated.json": (array[: len(array) // 2].encode(), [(None, "truncated")]),
        "bad_line.jsonl": (_jsonl([GOOD, GOOD, '{"instruction": "x", "output": ', GOOD, "not json", GOOD]).encode(),
                           [("bad_line.jsonl:3", "malformed JSON"), ("bad_line.jsonl:5", "malformed JSON")]),
        "utf16.jsonl": (codecs.BOM_UTF16_LE + _jsonl([GOOD, GOOD]).encode("utf-16-le"), [("utf16.jsonl:1", "UTF-16")]),
        "bad_bytes.jsonl": (_jsonl([GOOD]).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n' + _jsonl([GOOD]).encode(),
                            [("bad_bytes.jsonl:2", "invalid UTF-8 byte 0xe9")]),
        "types.jsonl": (_jsonl([GOOD, {"instruction": "Add", "output": 4}, {"instruction": ["a"], "output": "b"}]).encode(),
                        [("types.jsonl:2", "'output' must be a string, got int"),
                         ("types.jsonl:3", "'instruction' must be a string, got list")]),
        "empty_response.jsonl": (_jsonl([GOOD, {"instruction": "Explain", "output": "  "}, {"instruction": "Explain"}]).encode(),
                                 [("empty_response.jsonl:2", "empty response"), ("empty_response.jsonl:3", "missing response")]),
        "no_assistant.jsonl": (_jsonl([{"messages": [{"role": "user", "content": "hi"}]},
                                       {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]).encode(),
                               [("no_assistant.jsonl:1", "no assistant turn")]),
        "role_order.jsonl": (_jsonl([{"messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "ok"}]}]).encode(),
                             [("role_order.jsonl:1", "impossible role order")]),
        "huge_line.jsonl": ((good + "\n" + '{"instruction": "long", "output": "' + "x" * 5_000_000 + "\n" + good + "\n").encode(),
                            [("huge_line.jsonl:2", "malformed JSON")]),
        "placeholder.jsonl": (_jsonl([GOOD, {"instruction": "Who are you?", "output": "I am {{name}}."}]).encode(),
                              [("placeholder.jsonl:2", "{{name}}")]),
        "not_objects.json": (b'[1, {"instruction": "a", "output": "b"}]', [("not_objects.json: row 1", "must be a JSON object")]),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    return cases


def test_broken_corpus_cli(tmp_path, smol_tokenizer_dir, capsys):
    cases = _corpus(tmp_path)
    for name, (_, expected) in cases.items():
        with pytest.raises(SystemExit) as exit_:
            main(["data", "check", str(tmp_path / name), "--model", str(smol_tokenizer_dir), "--show", "50"])
        out = capsys.readouterr()
        text = out.out + out.err
        assert exit_.value.code == 1, (name, text)
        assert "Traceback" not in text, name
        for where, what in expected:
            if where is None:
                assert what in text, (name, text)
                continue
            lines = [ln for ln in text.splitlines() if where + ":" in ln or where + " " in ln]
            assert any(what in ln for ln in lines), (name, where, what, text)


def test_bad_jsonl_lists_every_bad_line_and_keeps_going(tmp_path):
    f = tmp_path / "mixed.jsonl"
    f.write_text(_jsonl([GOOD, "{oops", GOOD, "[1,", GOOD]))
    rows = list(iter_conversations(f))
    assert [(r.source, r.error is None) for r in rows] == [
        ("mixed.jsonl:1", True), ("mixed.jsonl:2", False), ("mixed.jsonl:3", True), ("mixed.jsonl:4", False),
        ("mixed.jsonl:5", True)]
    with pytest.raises(TunewiseError) as err:
        load_conversations(f)
    assert err.value.message.startswith("mixed.jsonl:2: malformed JSON") and "1 more bad row" in err.value.message


def test_json_array_rows_know_their_lines(tmp_path):
    f = tmp_path / "arr.json"
    f.write_text(json.dumps([GOOD, {"instruction": "x", "output": 3}, GOOD], indent=2))
    rows = list(iter_conversations(f))
    assert [r.source for r in rows] == ["arr.json: row 1 (line 2)", "arr.json: row 2 (line 7)", "arr.json: row 3 (line 11)"]
    assert rows[1].error == "'output' must be a string, got int"


def test_single_pretty_printed_object_is_one_row(tmp_path):
    f = tmp_path / "one.json"
    f.write_text(json.dumps(GOOD, indent=2))
    (conv,) = load_conversations(f)
    assert conv.messages[-1].content == "Hi!" and conv.source == "one.json:1"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(TunewiseError, match="no such file"):
        load_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TunewiseError, match="no examples"):
        load_conversations(tmp_path / "empty.jsonl")
