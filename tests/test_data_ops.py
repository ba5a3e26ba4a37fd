"""convert / split / dedupe / fill on the shared files: lossless round trips, nothing overwritten,
deterministic splits that keep duplicates on one side."""

from __future__ import annotations

import json

import pytest

from tunewise.cli import main
from tunewise.data import load_conversations
from tunewise.data.convert import convert_file
from tunewise.data.ops import dedupe_file, fill_file, split_file
from tunewise.errors import TunewiseError


def run(args: list[str]) -> int:
    """Exit status of the CLI (main returns normally on success)."""
    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.mark.parametrize("name,fmt", [("alpaca_en_demo.json", "alpaca"), ("identity.json", "alpaca"),
                                      ("glaive_toolcall_en_demo.json", "sharegpt")])
def test_round_trip_through_openai_is_identical(shared_data, tmp_path, name, fmt):
    src = shared_data / name
    there = convert_file(src, tmp_path / "x.openai.jsonl", "openai")
    assert there.dropped == [] and there.rows_out == there.rows_in
    back = convert_file(tmp_path / "x.openai.jsonl", tmp_path / "back.json", fmt)
    assert back.dropped == []
    assert json.loads((tmp_path / "back.json").read_text()) == json.loads(src.read_text())
    assert (tmp_path / "back.json").read_bytes() == src.read_bytes()  # byte for byte, as LLaMA-Factory writes it


def test_openai_output_is_valid_openai(shared_data, tmp_path):
    convert_file(shared_data / "glaive_toolcall_en_demo.json", tmp_path / "g.jsonl", "openai")
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    call_msg = rows[0]["messages"][3]
    assert call_msg["tool_calls"][0]["function"] == {"name": "search_recipes",
                                                    "arguments": '{"ingredients": ["chicken", "bell peppers", "rice"]}'}
    assert rows[0]["messages"][4] == {"role": "tool", "content": rows[0]["messages"][4]["content"],
                                      "tool_call_id": call_msg["tool_calls"][0]["id"]}
    assert rows[0]["tools"][0]["type"] == "function"


def test_every_shared_file_converts_to_every_format(shared_data, tmp_path):
    for name in ("alpaca_en_demo.json", "identity.json", "glaive_toolcall_en_demo.json", "v1_sft_demo.jsonl"):
        for to in ("alpaca", "sharegpt", "openai", "messages"):
            out = tmp_path / f"{name}.{to}.jsonl"
            res = convert_file(shared_data / name, out, to)
            assert res.rows_out + len({s for s, w in res.dropped if "skipped" in w}) == res.rows_in
            assert len(load_conversations(out)) == res.rows_out


def test_lossy_conversion_lists_what_was_dropped(shared_data, tmp_path):
    res = convert_file(shared_data / "glaive_toolcall_en_demo.json", tmp_path / "a.json", "alpaca")
    skipped = [s for s, w in res.dropped if "tool" in w]
    assert len(skipped) == res.rows_in - res.rows_out == 191
    res = convert_file(shared_data / "alpaca_en_demo.json", tmp_path / "s.json", "sharegpt")
    assert len(res.dropped) == 412 and all("joined" in w for _, w in res.dropped)


def test_v1_messages_round_trip(shared_data, tmp_path):
    convert_file(shared_data / "v1_sft_demo.jsonl", tmp_path / "v1.jsonl", "messages")
    assert (tmp_path / "v1.jsonl").read_bytes() == (shared_data / "v1_sft_demo.jsonl").read_bytes()


def test_convert_never_overwrites(shared_data, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    convert_file(shared_data / "identity.json", src, "openai")
    before = src.read_bytes()
    for args in (["data", "convert", str(src), str(src), "--to", "alpaca"],
                 ["data", "convert", str(src), str(tmp_path / "." / "in.jsonl"), "--to", "alpaca", "--force"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 1
        assert "is the input file" in capsys.readouterr().err
    assert src.read_bytes() == before
    out = tmp_path / "out.json"
    out.write_text("keep me")
    with pytest.raises(SystemExit):
        main(["data", "convert", str(src), str(out), "--to", "alpaca"])
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert run(["data", "convert", str(src), str(out), "--to", "alpaca", "--force"]) == 0
    assert len(json.loads(out.read_text())) == 91


def test_split_is_deterministic_and_keeps_duplicates_together(shared_data, tmp_path):
    src = shared_data / "glaive_toolcall_en_demo.json"
    a = split_file(src, eval=0.1, seed=0, out_dir=tmp_path / "a")
    b = split_file(src, eval=0.1, seed=0, out_dir=tmp_path / "b")
    c = split_file(src, eval=0.1, seed=1, out_dir=tmp_path / "c")
    read = lambda p: (tmp_path / p).read_text()  # noqa: E731
    assert read("a/glaive_toolcall_en_demo.eval.jsonl") == read("b/glaive_toolcall_en_demo.eval.jsonl")
    assert read("a/glaive_toolcall_en_demo.eval.jsonl") != read("c/glaive_toolcall_en_demo.eval.jsonl")
    assert a.eval_rows == 30 and a.train_rows == 270 and a.duplicate_groups >= 30
    train = {line for line in read("a/glaive_toolcall_en_demo.train.jsonl").splitlines()}
    evals = read("a/glaive_toolcall_en_demo.eval.jsonl").splitlines()
    assert not any(e in train for e in evals)  # no exact copy straddles the split


def test_split_refuses_an_eval_size_it_would_have_to_guess(shared_data, tmp_path):
    """--eval is a share below 1 or a whole number of rows; 1.5 is neither (was quietly 1 row)."""
    src = shared_data / "alpaca_en_demo.json"
    for bad, needle in ((1.5, "--eval 1.5 is neither a share below 1 nor a whole number of rows"),
                        (0.0, "--eval must be positive")):
        with pytest.raises(TunewiseError) as e:
            split_file(src, eval=bad, out_dir=tmp_path)
        assert needle in e.value.message
    assert "--eval 0.015 for 1.5%" in str(pytest.raises(TunewiseError, split_file, src, eval=1.5, out_dir=tmp_path).value.hint)
    assert not list(tmp_path.iterdir())  # nothing written
    assert split_file(src, eval=3.0, out_dir=tmp_path).eval_rows == 3  # a whole number given as 3.0 is 3 rows


def test_split_near_duplicates_never_straddle(tmp_path):
    import random

    rng = random.Random(0)
    vocab = [f"w{k}" for k in range(5000)]
    rows = []
    for i in range(40):
        prompt = " ".join(rng.choice(vocab) for _ in range(12))
        answer = " ".join(rng.choice(vocab) for _ in range(30))
        rows.append({"instruction": prompt, "input": "", "output": answer + "."})
        rows.append({"instruction": prompt + ".", "input": "", "output": answer + "!"})  # a near copy
    src = tmp_path / "poems.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    res = split_file(src, eval=0.25, seed=3)
    assert res.duplicate_groups == 40
    evals = [json.loads(x) for x in (tmp_path / "poems.eval.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (tmp_path / "poems.train.jsonl").read_text().splitlines()]
    assert len(evals) == 20 and len(train) == 60
    key = lambda r: r["output"][:-1]  # noqa: E731
    assert not ({key(r) for r in evals} & {key(r) for r in train})


def test_dedupe_exact_and_near(shared_data, tmp_path):
    res = dedupe_file(shared_data / "alpaca_en_demo.json", tmp_path / "d.json", exact_only=True)
    original = json.loads((shared_data / "alpaca_en_demo.json").read_text())
    unique = {json.dumps(r, sort_keys=True) for r in original}
    assert res.rows_out == len(unique) == len(json.loads((tmp_path / "d.json").read_text()))
    rows = [{"instruction": "Tell me about the Taj Mahal in Agra please", "output": "It is a white marble mausoleum built by Shah Jahan in Agra."},
            {"instruction": "Tell me about the Taj Mahal in Agra, please", "output": "It is a white marble mausoleum built by Shah Jahan in Agra!"},
            {"instruction": "What is a transformer?", "output": "A neural network built from attention layers."}]
    src = tmp_path / "near.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    res = dedupe_file(src, tmp_path / "near.out.jsonl")
    assert res.rows_out == 2 and res.removed[0]["kind"] == "near" and res.removed[0]["source"] == "near.jsonl:2"


def test_fill_placeholders_then_check_passes(shared_data, tmp_path, smol_tokenizer_dir, capsys):
    src = shared_data / "identity.json"
    assert run(["data", "check", str(src), "--model", str(smol_tokenizer_dir)]) == 1
    assert "{{name}}" in capsys.readouterr().out
    with pytest.raises(TunewiseError, match=r"\{\{author\}\}"):
        fill_file(src, tmp_path / "half.json", {"name": "Tara"})
    assert not (tmp_path / "half.json").exists()
    out = tmp_path / "tara.json"
    assert run(["data", "fill", str(src), str(out), "--set", "name=Tara", "--set", "author=Acme Labs"]) == 0
    text = out.read_text()
    assert "{{" not in text and "I am Tara, an AI assistant developed by Acme Labs." in text
    assert run(["data", "check", str(out), "--model", str(smol_tokenizer_dir)]) == 0, capsys.readouterr().out
