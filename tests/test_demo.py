"""`tunewise demo`: the scenario data are deterministic and self-consistent (every reference passes
its own checks, every fact is in the documents), and the pipeline runs end to end (--quick)."""

from __future__ import annotations

import json

import pytest
import yaml

from test_eval import run_cli
from tunewise.compare import load_compare_config
from tunewise.demo import knowledge, notices, write_scenario
from tunewise.evaluate import TaskChecks, run_checks


def test_inr_grouping():
    assert notices.inr(500) == "₹500"
    assert notices.inr(45000) == "₹45,000"
    assert notices.inr(145000) == "₹1,45,000"
    assert notices.inr(12345678) == "₹1,23,45,678"


def test_notices_are_deterministic_and_varied():
    a, b = notices.conversations(20, seed=1), notices.conversations(20, seed=1)
    assert a == b
    assert a != notices.conversations(20, seed=2)
    prompts = {r["messages"][0]["content"] for r in a}
    assert len(prompts) == 20
    assert len({r["messages"][0]["content"].split("\n")[2] for r in a}) > 10  # many different tenants


def test_every_reference_notice_passes_the_scenario_checks():
    checks = TaskChecks.model_validate(notices.CHECKS)
    for row in notices.conversations(30, seed=3):
        prompt, target = row["messages"][0]["content"], row["messages"][1]["content"]
        res = run_checks(target, checks, prompt)
        assert all(res.values()), {k: v for k, v in res.items() if not v}
    # and a plausible-looking but wrong notice does not
    row = notices.conversations(1, seed=3)[0]
    wrong = row["messages"][1]["content"].replace("₹", "Rs. ")
    assert not all(run_checks(wrong, checks, row["messages"][0]["content"]).values())


def test_knowledge_facts_are_in_the_documents():
    corpus = "\n".join(knowledge.DOCS.values())
    for questions, answer, facts in knowledge.FACTS:
        assert len(set(questions)) == 3
        for f in facts:
            assert f.lower() in answer.lower(), (f, answer)
            assert f.lower() in corpus.lower(), f
    train_q = {r["messages"][0]["content"] for r in knowledge.train_rows()}
    eval_rows = knowledge.eval_rows(10)
    assert len(eval_rows) == 10 and len({r["id"] for r in eval_rows}) == 10
    assert not train_q & {r["messages"][0]["content"] for r in eval_rows}  # held-out phrasings


def test_write_scenario_gives_valid_configs_and_data(tmp_path):
    from tunewise.data import load_conversations

    for name in ("format", "knowledge"):
        path = write_scenario(name, tmp_path / name, quick=False, model="smollm2-135m")
        cfg = load_compare_config(path)
        assert [a.type for a in cfg.arms] == ["prompt", "few_shot", "rag", "finetuned"]
        assert cfg.primary_metric == "checks"
        assert len(load_conversations(cfg.train_file)) >= 48
        n_eval = len(load_conversations(cfg.eval_file))
        assert 30 <= n_eval <= 40  # enough held-out examples to resolve a difference (issue 15 item 5)
        train_prompts = {c.messages[0].content for c in load_conversations(cfg.train_file)}
        assert not train_prompts & {c.messages[0].content for c in load_conversations(cfg.eval_file)}
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["kind"] == "compare"
    assert len(list((tmp_path / "knowledge" / "docs").glob("*.md"))) == len(knowledge.DOCS)


def test_demo_engine_and_precision_reach_every_scenario_config(tmp_path, capsys):
    for name in ("format", "knowledge"):
        cfg = load_compare_config(write_scenario(name, tmp_path / name, quick=True, model="smollm2-135m",
                                                 engine="hf", precision="fp32"))
        assert (cfg.engine, cfg.precision) == ("hf", "fp32")
    assert load_compare_config(write_scenario("format", tmp_path / "d", quick=True, model="m")).precision == "auto"
    # a precision no engine knows stops the demo at its config, before any training, naming the key
    code, out, err = run_cli(["demo", "--out", str(tmp_path / "bad"), "--scenario", "format", "--quick",
                              "--precision", "q3"], capsys)
    err = " ".join(err.split())
    assert code == 1 and "precision: 'q3' is not known" in err and "q8_0" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "format" / "report").exists()


def test_unknown_scenario(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", str(tmp_path), "--scenario", "poetry"], capsys)
    assert code == 1 and "unknown scenario 'poetry'" in err and "Traceback" not in err


def test_demo_quick_on_tiny_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNEWISE_PROGRESS_EVERY", "0")  # a plain progress line per item (output is captured)
    code, out, err = run_cli(["demo", "--out", str(tmp_path), "--scenario", "format", "--quick",
                              "--model", str(tiny_model_dir)], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "format" / "report" / "report.json").read_text(encoding="utf-8"))
    assert [a["kind"] for a in rep["arms"]] == ["prompt", "few_shot", "rag", "finetuned"]
    assert rep["recommendation"]["statements"]
    assert "Recommendations" in out and "report.html" in out
    assert (tmp_path / "format" / "report" / "train-finetuned-lora" / "adapter").is_dir()
    assert "data check:" in err
    # the eval set's size is judged at the comparison's tolerance (0.05), as the report judges it
    assert "tolerance of 0.05" in " ".join(err.split()) and "tolerance of 0.02" not in " ".join(err.split())
    # progress in a log: the scenario, each arm and its questions, the training steps, with ETAs
    assert "(scenario 1/1)" in err and "finetuned-lora (finetuned, arm 4/4): answering 3 questions" in err
    for arm in ("prompt", "few_shot", "rag-examples", "finetuned-lora"):
        assert f"  {arm}: 1/3 questions (33%) · " in err and f"  {arm}: done 3/3 questions in " in err
    assert "training: 1/2 steps (50%) · " in err and "training: done 2/2 steps in " in err
    assert err.count(" · ETA ") >= 9
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| finetuned-lora |" in summary and "Whole demo:" in summary
    assert rep["recommendation"]["statements"][0] in summary
    from tunewise.formatting import money

    # the boxes are kept on all month; each row says what one box serves of that arm's queries
    assert "kept on all month (as many as the volume needs, at 50% of the throughput each arm sustained)" in summary
    assert "| queries/month one box serves |" in summary
    ft = next(a for a in rep["arms"] if a["name"] == "finetuned-lora")
    assert f"| {ft['pricing']['queries_per_machine_month']:,.0f} | {money(ft['cost_per_1k_queries'], 'INR')} |" in summary


@pytest.mark.e2e
def test_demo_quick_embedded_model(embedded_model, tmp_path, capsys):
    code, out, err = run_cli(["demo", "--out", str(tmp_path), "--quick"], capsys)
    assert code == 0, err
    for name in ("format", "knowledge"):
        rep = json.loads((tmp_path / name / "report" / "report.json").read_text(encoding="utf-8"))
        assert all(a["status"] == "ok" for a in rep["arms"])
        assert (tmp_path / name / "report" / "report.html").stat().st_size > 20_000
