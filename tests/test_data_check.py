"""`data check` statistics, warnings, the OpenAI target, and `data show`."""

from __future__ import annotations

import json

import pytest

from tunewise.cli import main
from tunewise.data import load_conversations, tokenize_dataset
from tunewise.data.check import assess_size, check_dataset, openai_epochs, openai_format_errors
from tunewise.data.show import show_examples


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_statistics_match_tokenization(shared_data, smol_tokenizer):
    path = shared_data / "alpaca_en_demo.json"
    report = check_dataset(path, tokenizer=smol_tokenizer, sequence_len=2048, goal="task")
    examples = tokenize_dataset(load_conversations(path), smol_tokenizer, 2048)
    assert report.ok and report.rows == report.examples == 999
    s = report.stats
    assert s["tokens_per_epoch"] == sum(len(e.input_ids) for e in examples)
    assert s["trainable_tokens_per_epoch"] == sum(e.n_trainable for e in examples)
    assert s["tokens_per_example"]["max"] == max(len(e.input_ids) for e in examples)
    assert s["duplicates"]["exact"] == 14
    assert report.goal_assessment["verdict"] == "below" and "1,000" in report.goal_assessment["message"]


def test_warnings_long_short_duplicates_and_eval_overlap(tmp_path, smol_tokenizer):
    rows = [{"instruction": f"Question {i}: explain topic {i} in detail", "output": f"Topic {i} is explained here at length."}
            for i in range(6)]
    rows.append({"instruction": "Essay please", "output": "word " * 400})  # too long for 64 tokens
    rows.append({"instruction": "Yes or no?", "output": "Yes"})  # very short
    rows.append(dict(rows[0]))  # exact duplicate
    train = _write(tmp_path / "train.jsonl", rows)
    ev = _write(tmp_path / "eval.jsonl", [rows[2], {"instruction": "Unrelated", "output": "Something else entirely."}])
    report = check_dataset(train, tokenizer=smol_tokenizer, sequence_len=64, eval_path=ev)
    by_code = {}
    for i in report.issues:
        by_code.setdefault(i.code, []).append(i)
    assert [i.source for i in by_code["too_long"]] == ["train.jsonl:7"]
    assert report.stats["over_sequence_len"]["tokens_lost"] > 300
    assert [i.source for i in by_code["never_stops"]] == ["train.jsonl:7"]  # response cut before <|im_end|>
    assert [i.source for i in by_code["short_response"]] == ["train.jsonl:8"]
    assert [(i.source, i.message) for i in by_code["duplicate"]] == [("train.jsonl:9", "exact duplicate of train.jsonl:1")]
    assert [i.source for i in by_code["eval_overlap"]] == ["eval.jsonl:1"]
    assert report.ok  # only warnings


def test_response_cut_away_is_a_warning_that_training_skips_it(tmp_path, smol_tokenizer):
    f = _write(tmp_path / "long_prompt.jsonl", [{"instruction": "hi", "output": "hello"},
                                                 {"instruction": "word " * 300, "output": "ok"},
                                                 {"instruction": "hi again", "output": "hello again"}])
    report = check_dataset(f, tokenizer=smol_tokenizer, sequence_len=100)
    assert report.ok and report.n_errors == 0
    (skip,) = [i for i in report.issues if i.code == "skipped_too_long"]
    assert skip.level == "warning" and skip.source == "long_prompt.jsonl:2"
    assert "training will skip this example" in skip.message and "sequence_len=100" in skip.message
    assert not [i for i in report.issues if i.source == "long_prompt.jsonl:2" and i.code != "skipped_too_long"]
    assert report.stats["skipped_by_training"] == 1
    # the epoch's tokens are those training sees: the two kept examples only
    examples = tokenize_dataset(load_conversations(f), smol_tokenizer, 100, on_empty="keep")
    assert report.stats["tokens_per_epoch"] == len(examples[0].input_ids) + len(examples[2].input_ids)


def test_every_turn_masked_is_still_an_error(tmp_path, smol_tokenizer):
    f = _write(tmp_path / "masked.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 0}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "weight": 1}]}])
    report = check_dataset(f, tokenizer=smol_tokenizer)
    errors = [i for i in report.issues if i.level == "error"]
    assert [(i.code, i.source) for i in errors] == [("zero_trainable", "masked.jsonl:1")]
    assert "every turn is masked" in errors[0].message and not report.ok


def test_template_without_end_token_warns_never_stops(tmp_path, smol_tokenizer):
    no_stop = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
               "{% if add_generation_prompt %}assistant: {% endif %}")
    f = _write(tmp_path / "a.jsonl", [{"instruction": "hi", "output": "hello there friend"}])
    report = check_dataset(f, tokenizer=smol_tokenizer, chat_template=no_stop)
    assert [i.code for i in report.issues] == ["never_stops"]
    ok = check_dataset(f, tokenizer=smol_tokenizer)
    assert ok.issues == [] and ok.stats["never_stop"] == 0


def test_openai_epochs_and_cost():
    assert openai_epochs(10) == 10  # 3*10 < 100 -> ceil(100/10)
    assert openai_epochs(3) == 25  # capped at 25
    assert openai_epochs(40) == 3
    assert openai_epochs(10_000) == 2  # 30,000 > 25,000 -> floor(25,000/10,000)
    assert openai_epochs(30_000) == 1


def test_openai_cookbook_format_checks():
    assert openai_format_errors([1]) == ["data_type"]
    assert openai_format_errors({"prompt": "x"}) == ["missing_messages_list"]
    errs = openai_format_errors({"messages": [{"role": "bot", "content": "x", "extra": 1}, {"role": "user"}]})
    assert set(errs) == {"unrecognized_role", "message_unrecognized_key", "message_missing_key", "missing_content",
                         "example_missing_assistant_message"}
    assert openai_format_errors({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) == []


def test_openai_target_report(tmp_path, smol_tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"answer {i}"}]}
            for i in range(20)]
    rows.append({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "mood": "happy"}]})
    f = _write(tmp_path / "oa.jsonl", rows)
    report = check_dataset(f, tokenizer=smol_tokenizer, target="openai", price_per_mtok=8.0)
    o = report.openai
    assert o["format_errors"] == {"message_unrecognized_key": 1}
    assert [i.source for i in report.issues if i.code == "openai_message_unrecognized_key"] == ["oa.jsonl:21"]
    assert o["n_missing_system"] == 21 and o["n_missing_user"] == 0
    assert o["epochs"] == 5  # 21 examples: ceil(100/21)
    assert o["charged_tokens"] == 5 * o["billable_tokens_per_epoch"] == 5 * o["tokens_per_example"]["total"]
    assert o["estimated_cost_usd"] == pytest.approx(o["charged_tokens"] / 1e6 * 8.0, abs=1e-4)
    assert not report.ok


def test_check_json_cli(shared_data, smol_tokenizer_dir, capsys):
    try:
        main(["data", "check", str(shared_data / "v1_sft_demo.jsonl"), "--model", str(smol_tokenizer_dir),
              "--json", "--goal", "style", "--target", "openai"])
        code = 0
    except SystemExit as e:
        code = e.code
    data = json.loads(capsys.readouterr().out)
    assert code == 1  # placeholders
    assert data["format"] == "messages" and data["rows"] == 500
    assert data["issue_counts"]["error:placeholder"] == 50
    assert data["error_examples"] == 50 and "_error_orders" not in data  # 50 of the 500 rows cannot train as they are
    assert data["openai"]["epochs"] == 3 and data["goal_assessment"]["verdict"] == "within"


def test_assess_size():
    assert assess_size(300, "style")["verdict"] == "below"
    assert assess_size(3000, "task")["verdict"] == "within"
    assert assess_size(30_000, "domain")["verdict"] == "above"


def test_show_marks_trained_masked_and_end_token(shared_data, smol_tokenizer):
    (ex,) = show_examples(shared_data / "identity.json", smol_tokenizer, n=1)
    trained = "".join(s.text for s in ex.segments if s.trained)
    assert trained == "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?<|im_end|>"
    ends = [s for s in ex.segments if s.special and s.text == "<|im_end|>"]
    assert ends[-1].trained and not ends[0].trained  # the response's end token trained; the prompt's not
    assert "".join(s.text for s in ex.segments).startswith("<|im_start|>system\n")


def test_show_cli(shared_data, smol_tokenizer_dir, capsys):
    main(["data", "show", str(shared_data / "glaive_toolcall_en_demo.json"), "--model", str(smol_tokenizer_dir), "-n", "2"])
    out = capsys.readouterr().out
    assert "glaive_toolcall_en_demo.json: row 1 (line 2)" in out and "<|im_end|>" in out and "trained" in out


def test_a_small_eval_set_is_the_first_warning(tmp_path, smol_tokenizer, capsys):
    rows = [{"instruction": f"Question {i}", "output": f"Answer {i}."} for i in range(12)]
    train = _write(tmp_path / "train.jsonl", rows[:8])
    ev = _write(tmp_path / "eval.jsonl", rows[8:])
    report = check_dataset(train, tokenizer=smol_tokenizer, eval_path=ev, tolerance=0.05)
    assert report.eval_examples == 4 and report.eval_size["min_examples"] == 246 and report.eval_size["small"]
    first = report.issues[0]
    assert (first.level, first.code, first.source) == ("warning", "small_eval", "eval.jsonl")
    assert first.message.startswith("Small eval set: 4 held-out examples") and report.ok
    assert check_dataset(train, tokenizer=smol_tokenizer).eval_size is None  # no --eval, no verdict on it
    main(["data", "check", str(train), "--eval", str(ev), "--tolerance", "0.05"])  # exits 0: warnings only
    out = capsys.readouterr().out
    assert out.lstrip().startswith("Caveat: Small eval set: 4 held-out examples")
