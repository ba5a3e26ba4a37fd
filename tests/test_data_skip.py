"""Over-long examples, decided once: an example whose trained tokens `sequence_len` cuts away
entirely is skipped by training (counted and named in the run summary and the log), and
`data check` reports it as a warning saying so. Check and training apply the same rule to the
same tokens, so they name the same rows."""

from __future__ import annotations

import json
import re

from tunewise.data.check import check_dataset
from tunewise.data.ops import fill_file

from train_helpers import make_cfg


def test_llamafactory_demo_files_pass_check_at_the_defaults(shared_data, smol_tokenizer, tmp_path):
    for name in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json"):
        report = check_dataset(shared_data / name, tokenizer=smol_tokenizer)
        assert report.ok, (name, [(i.code, i.source, i.message) for i in report.issues if i.level == "error"])
    # identity.json and v1_sft_demo.jsonl hold {{name}} / {{author}} placeholders on purpose: filled
    # as their README says (tunewise data fill), they pass too.
    for name in ("identity.json", "v1_sft_demo.jsonl"):
        assert check_dataset(shared_data / name, tokenizer=smol_tokenizer).issue_counts.keys() & {"error:placeholder"}
        filled = tmp_path / name
        fill_file(shared_data / name, filled, {"name": "Zephyrine", "author": "Acme Labs"})
        report = check_dataset(filled, tokenizer=smol_tokenizer)
        assert report.ok, (name, [(i.code, i.source, i.message) for i in report.issues if i.level == "error"])


def test_glaive_over_long_example_is_a_warning_naming_its_row(shared_data, smol_tokenizer):
    report = check_dataset(shared_data / "glaive_toolcall_en_demo.json", tokenizer=smol_tokenizer)
    (skip,) = [i for i in report.issues if i.code == "skipped_too_long"]
    assert skip.level == "warning"
    m = re.fullmatch(r"glaive_toolcall_en_demo\.json: row (\d+) \(line (\d+)\)", skip.source)
    assert m, skip.source
    row = int(m.group(1))
    rows = json.loads((shared_data / "glaive_toolcall_en_demo.json").read_text())
    assert max(range(len(rows)), key=lambda k: len(json.dumps(rows[k]))) == row - 1  # the longest row
    assert skip.message.startswith("11,632 tokens") and "training will skip this example" in skip.message
    assert report.stats["skipped_by_training"] == 1


def _boundary_rows(n: int = 14) -> list[dict]:
    """Prompts growing one word at a time, so the response starts just before, at and after
    sequence_len=64 (the rows around the edge are the ones a rule could disagree on)."""
    return [{"instruction": "word " * (28 + k), "output": "yes it is"} for k in range(n)]


def test_check_and_training_skip_the_same_rows(tiny_model_dir, smol_tokenizer, tmp_path):
    from tunewise.models import load_tokenizer
    from tunewise.train.trainer import prepare_data

    path = tmp_path / "edge.json"
    path.write_text(json.dumps(_boundary_rows()))
    report = check_dataset(path, tokenizer=smol_tokenizer, sequence_len=64)
    warned = [i.source for i in report.issues if i.code == "skipped_too_long"]
    cfg = make_cfg(tiny_model_dir, path, tmp_path / "run", sequence_len=64)
    data = prepare_data(cfg, load_tokenizer(str(tiny_model_dir)), None)
    skipped = data.fingerprint["skipped_examples"]
    assert 0 < len(warned) < 14  # the edge is inside the rows
    assert skipped["cut_by_sequence_len"] == warned and skipped["count"] == len(warned)
    assert data.fingerprint["train_examples"] == 14 - len(warned)
    assert report.stats["tokens_per_epoch"] == data.train.n_tokens


def test_training_skips_over_long_examples_and_names_them(tiny_model_dir, tmp_path, capsys):
    from tunewise.train import train

    rows = [{"instruction": f"What is {i} + {i}?", "output": f"{2 * i}"} for i in range(1, 9)]
    rows[3] = {"instruction": "Summarise: " + "lorem ipsum " * 60, "output": "Too long to see."}  # row 4
    rows[6] = {"instruction": "Summarise: " + "dolor sit " * 60, "output": "Also cut."}  # row 7
    path = tmp_path / "long.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "run"
    result = train(make_cfg(tiny_model_dir, path, out, sequence_len=64, max_steps=1, save_steps=10), progress=True)
    expected = ["long.json: row 4 (line 1)", "long.json: row 7 (line 1)"]
    assert result.skipped_examples == 2 and result.skipped["cut_by_sequence_len"] == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_examples"] == 2 and summary["skipped"]["cut_by_sequence_len"] == expected
    fp = json.loads((out / "data_fingerprint.json").read_text())
    assert fp["train_examples"] == 6 and fp["skipped_examples"]["cut_by_sequence_len"] == expected
    log = capsys.readouterr().err
    assert "skipped 2 training examples (sequence_len=64 cuts away the whole response)" in log
    assert all(src in log for src in expected)


def test_fully_masked_examples_are_skipped_under_their_own_reason(tiny_model_dir, tmp_path):
    from tunewise.models import load_tokenizer
    from tunewise.train.trainer import prepare_data

    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(4)]
    rows[1]["messages"][1]["weight"] = 0
    path = tmp_path / "masked.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = prepare_data(make_cfg(tiny_model_dir, path, tmp_path / "run"), load_tokenizer(str(tiny_model_dir)), None)
    skipped = data.fingerprint["skipped_examples"]
    assert skipped["no_trained_tokens"] == ["masked.jsonl:2"] and skipped["cut_by_sequence_len"] == []
