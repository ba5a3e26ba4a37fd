"""`tunewise rag index|query|eval` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tunewise.cli import main

DATA = Path(__file__).parent / "data" / "rag"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code or 0, out.out, out.err


@pytest.fixture
def docs(tmp_path) -> Path:
    d = tmp_path / "docs"
    d.mkdir()
    for name in ("leave-policy.md", "travel-reimbursement.md", "equipment.html", "holidays.txt"):
        shutil.copy(DATA / "policies" / name, d / name)
    return d


def test_index_then_query_json_and_table(docs, tmp_path, capsys):
    index = tmp_path / "index"
    code, out, _ = run(["rag", "index", str(docs), "--index", str(index), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["rebuilt"] is True and report["files"] == 4 and report["chunks"] == report["embedded"] > 4
    assert report["embedder"].startswith("all-MiniLM-L6-v2@53aa51172d14")

    code, out, _ = run(["rag", "index", str(docs), "--index", str(index)], capsys)
    assert code == 0 and "Reused (no document changed)" in out and "0 embedded" in out

    code, out, _ = run(["rag", "query", "How many optional holidays can I pick?", "--index", str(index), "-k", "2", "--json"], capsys)
    assert code == 0
    chunks = json.loads(out)
    assert len(chunks) == 2 and chunks[0]["source"] == "holidays.txt"
    assert set(chunks[0]) == {"text", "source", "heading", "score"}

    code, out, _ = run(["rag", "query", "hotel limit in Mumbai", "--docs", str(docs), "--index", str(index), "--mode", "bm25"], capsys)
    assert code == 0 and "travel-reimbursement.md" in out and "Hotel limits" in out


def test_eval_prints_recall_table(docs, tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    rows = [json.loads(line) for line in (DATA / "questions.jsonl").read_text().splitlines()]
    keep = [r for r in rows if (docs / r["source"]).exists()]
    questions.write_text("\n".join(json.dumps(r) for r in keep) + "\n")
    code, out, _ = run(["rag", "eval", str(questions), "--docs", str(docs), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["questions"] == len(keep) >= 8
    assert result["hybrid"]["recall@3"] >= 0.85


@pytest.mark.parametrize(
    "argv, message",
    [
        (["rag", "index", "/definitely/not/here"], "does not exist"),
        (["rag", "query", "anything"], "no index given"),
        (["rag", "query", "anything", "--index", "/definitely/not/here"], "not a tunewise RAG index"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    code, out, err = run(argv, capsys)
    assert code == 1
    assert message in err and "hint:" in err and "Traceback" not in err + out


def test_bad_mode_and_bad_labels_are_clear_errors(docs, tmp_path, capsys):
    code, _, err = run(["rag", "query", "leave", "--docs", str(docs), "--mode", "sparse"], capsys)
    assert code == 1 and "unknown retrieval mode 'sparse'" in err and "Traceback" not in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "source": "a.md"}\n{"question": "no source"}\n')
    code, _, err = run(["rag", "eval", str(bad), "--docs", str(docs)], capsys)
    assert code == 1 and "bad.jsonl:2" in err
