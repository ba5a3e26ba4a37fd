"""`tunewise advise`: the guide's scenarios, criteria-tied reasons, evidence, interactive mode, errors."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from tunewise.advise import CRITERIA, Answers, advise, load_answers, load_evidence
from tunewise.cli import app, main
from tunewise.errors import TunewiseError

runner = CliRunner()


def _advice(**kw):
    return advise(load_answers(None, kw))


# --- the guide's scenarios --------------------------------------------------------------------


def test_legal_notice_style_bot_on_premise_at_volume_is_finetuning():
    a = _advice(goal="style", labelled_examples=800, queries_per_month=2_000_000, on_premise=True, gpu="rtx-4090")
    assert a.recommendation == "finetune"
    crits = {r.criterion for r in a.ranked[0].reasons}
    assert {"C1", "C4", "C5"} <= crits
    assert a.plan is not None and a.plan.method in ("lora", "qlora")
    assert "Unsloth" in a.plan.tool
    assert any(c.startswith("tunewise data check") for c in a.next_commands)
    assert any(c.startswith("tunewise train") for c in a.next_commands)
    # on premise: priced as local serving, never an API
    assert a.ranked[0].cost_option == "finetune_local"


def test_document_qa_with_few_examples_at_low_volume_is_rag():
    a = _advice(goal="knowledge", labelled_examples=50, queries_per_month=20_000)
    assert a.recommendation == "rag"
    assert any(r.criterion == "C4" for r in a.ranked[0].reasons)
    assert a.ranked[0].monthly > 0


def test_one_off_general_tasks_is_prompting():
    a = _advice(goal="general", labelled_examples=0, queries_per_month=300)
    assert a.recommendation == "prompting"


def test_document_qa_at_volume_on_premise_with_many_examples_is_rag_plus_finetuning():
    a = _advice(goal="knowledge", labelled_examples=20_000, queries_per_month=3_000_000, on_premise=True,
                gpu="a100-80gb")
    assert a.recommendation == "rag_finetune"
    assert {"C3", "C4", "C5"} <= {r.criterion for r in a.ranked[0].reasons}
    assert a.plan is not None  # the fine-tuning half gets its "how"
    ft = next(o for o in a.ranked if o.key == "finetune")
    assert any("on top of retrieval" in r.text for r in ft.reasons)


def test_style_below_the_data_minimum_is_not_finetuning():
    a = _advice(goal="style", labelled_examples=100, queries_per_month=50_000)
    assert a.recommendation != "finetune"
    ft = next(o for o in a.ranked if o.key == "finetune")
    assert any(r.criterion == "data" and "500" in r.text for r in ft.reasons)


def test_task_with_10k_examples_cites_c3():
    a = _advice(goal="task", labelled_examples=15_000, queries_per_month=500_000)
    assert a.recommendation == "finetune"
    assert any(r.criterion == "C3" for r in a.ranked[0].reasons)


def test_every_reason_is_tied_to_a_criterion_or_named_rule():
    a = _advice(goal="vocabulary", labelled_examples=6000, queries_per_month=1_500_000, latency_target_ms=300,
                budget_per_month=100)
    allowed = set(CRITERIA) | {"data", "goal", "cost", "budget", "evidence"}
    for o in a.ranked:
        for r in o.reasons:
            assert r.criterion in allowed
    assert any(r.criterion == "C2" for o in a.ranked for r in o.reasons)
    assert any(r.criterion == "budget" for o in a.ranked for r in o.reasons)


def test_no_gpu_plan_rents_a_cloud_gpu():
    a = _advice(goal="style", labelled_examples=2000, queries_per_month=3_000_000)
    assert a.plan is not None
    assert "rented" in a.plan.hardware and a.plan.training_cost is not None
    assert "cloud" in a.plan.tool


def test_several_gpus_use_axolotl_or_accelerate():
    a = _advice(goal="task", labelled_examples=50_000, queries_per_month=5_000_000, gpu="a100-80gb", gpu_count=4,
                base_model="70b")
    assert "Axolotl" in a.plan.tool


def test_advisor_never_repeats_the_70b_on_24gb_claim():
    a = _advice(goal="style", labelled_examples=5000, queries_per_month=2_000_000, gpu="rtx-4090", base_model="70b")
    text = json.dumps(a.as_dict())
    assert a.plan.fits["qlora"] > 24
    assert "does not fit on a single 24 GB GPU" in text
    # Nothing says a 70B model fits a 24 GB GPU.
    assert not re.search(r"70B[^.]*\bfits?\b[^.]*\b24 ?GB", text.replace("does not fit", "")), text
    r = runner.invoke(app, ["advise", "--goal", "style", "--examples", "5000", "--queries", "2000000",
                            "--gpu", "rtx-4090", "--base-model", "70b"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "does not fit on a single 24 GB GPU" in flat
    assert not re.search(r"fits? (a|on a|on one|one) (single )?24 ?GB", flat.replace("does not fit on a single", ""))


# --- evidence --------------------------------------------------------------------------------


def _report(tmp_path, arms, tolerance=0.02):
    """A report.json as `tunewise compare` writes it: arms with per-example scores, and compare's
    recommendation (its rule, its statuses) next to them."""
    from tunewise.compare import recommend

    for a in arms:
        a.setdefault("status", "ok")
        a["quality"] = sum(a["scores"]) / len(a["scores"])
    rec = recommend(arms, tolerance, "USD")
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"arms": arms, "recommendation": rec, "quality_tolerance": tolerance, "currency": "USD"}))
    return p


def test_evidence_takes_precedence_over_rules(tmp_path):
    # Rules say RAG for document Q&A; measurements say the fine-tuned arm is clearly better.
    p = _report(tmp_path, [
        {"name": "rag-gpt4o-mini", "kind": "rag", "scores": [0.6, 0.4] * 15, "cost_per_1k_queries_usd": 0.45,
         "latency_p50_s": 1.2},
        {"name": "lora-8b", "kind": "finetuned", "scores": [0.8, 0.7] * 15, "cost_per_1k_queries_usd": 0.30,
         "latency_p50_s": 0.4},
        {"name": "prompt", "kind": "prompt", "scores": [0.4, 0.3] * 15, "cost_per_1k_queries_usd": 0.20},
    ])
    ans = load_answers(None, {"goal": "knowledge", "labelled_examples": 50, "queries_per_month": 20_000})
    assert advise(ans).recommendation == "rag"
    a = advise(ans, evidence=p)
    assert a.recommendation == "finetune"
    assert a.evidence.best_arm == "lora-8b" and a.evidence.resolved and a.evidence.finetuning_verdict == "paid_off"
    assert "takes precedence over the rules" in a.notes[0] and "beat every other arm" in a.notes[0]
    assert a.as_dict()["decided_by"] == "evidence"


def test_evidence_near_tie_goes_to_the_cheaper_arm(tmp_path):
    p = _report(tmp_path, [
        {"name": "ft", "kind": "finetuned", "scores": [0.8, 0.9, 0.7, 0.8, 0.8], "cost_per_1k_queries_usd": 0.9},
        {"name": "rag", "kind": "rag", "scores": [0.8, 0.8, 0.7, 0.8, 0.85], "cost_per_1k_queries_usd": 0.3},
    ])
    a = advise(Answers(goal="style", labelled_examples=900, queries_per_month=2_000_000), evidence=p)
    assert a.recommendation == "rag" and not a.evidence.resolved and "unresolved" in a.evidence.statement


def test_evidence_never_turns_an_unresolved_comparison_into_finetuning(tmp_path):
    """Compare picks the fine-tuned arm as the cheapest of arms it cannot tell apart (8 examples,
    better on 5, tied on 3): advise reports that, and does not recommend fine-tuning on it."""
    p = _report(tmp_path, [
        {"name": "rag-examples", "kind": "rag", "scores": [0.9, 0.9, 0.9, 0.9, 13 / 15, 1.0, 1.0, 1.0],
         "cost_per_1k_queries_usd": 0.146},
        {"name": "finetuned-lora", "kind": "finetuned", "scores": [1.0] * 8, "cost_per_1k_queries_usd": 0.110},
    ], tolerance=0.05)
    rec = json.loads(p.read_text())["recommendation"]
    assert rec["arm"] == "finetuned-lora" and rec["finetuning_verdict"] == "unresolved"
    # style at volume, on premise: the guide's rules alone would say fine-tune
    ans = Answers(goal="style", labelled_examples=900, queries_per_month=2_000_000, on_premise=True)
    assert advise(ans).recommendation == "finetune"
    a = advise(ans, evidence=p)
    assert a.recommendation == "rag" and a.evidence.compare_arm == "finetuned-lora"
    assert a.evidence.best_arm == "rag-examples" and a.evidence.finetuning_verdict == "unresolved"
    assert "unresolved" in a.notes[0] and "no evidence that fine-tuning pays off" in a.notes[0]
    assert "about 10 held-out examples would separate them" in a.notes[0]
    # with only fine-tuned arms measured the evidence cannot speak for fine-tuning: the rules decide
    p = _report(tmp_path, [{"name": "ft", "kind": "finetuned", "scores": [1.0] * 8, "cost_per_1k_queries_usd": 0.1}])
    a = advise(Answers(goal="general", queries_per_month=1000), evidence=p)
    assert a.evidence.option is None and a.recommendation == "prompting" and a.as_dict()["decided_by"] == "rules"


def test_evidence_without_per_example_scores_is_a_clear_error(tmp_path):
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"arms": [{"name": "rag", "kind": "rag", "quality": 0.8, "cost_per_1k_queries_usd": 0.3}],
                             "recommendation": {"arm": "rag"}}))
    with pytest.raises(TunewiseError) as e:
        advise(Answers(goal="style"), evidence=p)
    assert "arm 'rag' has no per-example scores" in e.value.message and "rerun `tunewise compare`" in e.value.hint


@pytest.mark.parametrize(
    "content,needle",
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"arms": []}), "arms"),
        (json.dumps({"arms": [{"name": "x", "kind": "magic", "quality": 0.5}]}), "arms.0.kind"),
        (json.dumps({"arms": [{"name": "x", "kind": "rag", "quality": 7}]}), "arms.0.quality"),
    ],
)
def test_bad_evidence_files_are_clear_errors(tmp_path, content, needle):
    p = tmp_path / "report.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(TunewiseError) as e:
        load_evidence(p)
    assert needle in e.value.message


# --- CLI: flags, YAML, interactive, JSON, errors -----------------------------------------------


def test_cli_flags_and_json():
    r = runner.invoke(app, ["advise", "--goal", "knowledge", "--examples", "50", "--queries", "20000", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["recommendation"] == "rag" and d["decided_by"] == "rules"
    assert len(d["ranked"]) == 4 and d["next_commands"]


def test_cli_answers_yaml_matches_examples(tmp_path):
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].glob("examples/advise-*.yaml"))
    assert examples, "ship examples/advise-*.yaml"
    expected = {"advise-legal-style.yaml": "finetune", "advise-docs-qa.yaml": "rag", "advise-general.yaml": "prompting"}
    for ex in examples:
        r = runner.invoke(app, ["advise", "--answers", str(ex), "--json"])
        assert r.exit_code == 0, (ex, r.output)
        if ex.name in expected:
            assert json.loads(r.output)["recommendation"] == expected[ex.name], ex.name


def test_cli_interactive_questionnaire():
    # goal, examples, queries, latency, on-premise, gpu, count, currency, budget
    answers = "\n".join(["style", "800", "2000000", "0", "y", "rtx-4090", "1", "INR", "0"]) + "\n"
    r = runner.invoke(app, ["advise"], input=answers)
    assert r.exit_code == 0, r.output
    assert "Recommendation: Fine-tuning" in r.output
    assert "₹" in r.output


def test_cli_interactive_reasks_on_bad_answers():
    answers = "\n".join(["knowledge", "-3", "50", "-1", "20000", "0", "n", "none", "USD", "0"]) + "\n"
    r = runner.invoke(app, ["advise"], input=answers)
    assert r.exit_code == 0, r.output
    assert "Please enter 0 or more" in r.output
    assert "Recommendation: RAG" in r.output


def test_cli_no_terminal_and_no_answers_is_a_clear_error(capsys):
    import io
    import sys

    old = sys.stdin
    sys.stdin = io.StringIO("")
    try:
        with pytest.raises(SystemExit) as e:
            main(["advise"])
    finally:
        sys.stdin = old
    assert e.value.code == 1
    assert "--answers" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["advise", "--goal", "style", "--queries", "-10"], "queries_per_month"),
        (["advise", "--goal", "style", "--gpu", "rtx-9090"], "unknown GPU"),
        (["advise", "--goal", "style", "--currency", "EUR"], "currency"),
        (["advise", "--goal", "jokes"], "goal"),
        (["advise", "--goal", "style", "--examples", "900", "--queries", "2000000", "--base-model", "14b"],
         "unknown model size"),
        (["advise", "--answers", "missing.yaml"], "does not exist"),
        (["advise", "--goal", "style", "--evidence", "nope.json"], "does not exist"),
    ],
)
def test_cli_bad_answers_are_clear_errors(args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_answers_yaml_unknown_key_is_named(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text(yaml.safe_dump({"goal": "style", "querys_per_month": 5}))
    with pytest.raises(TunewiseError) as e:
        load_answers(f)
    assert "querys_per_month" in e.value.message and "queries_per_month" in e.value.message


def test_evidence_in_the_shape_compare_writes(tmp_path):
    """tunewise compare's report.json: extra fields, skipped arms with null quality, local currency;
    a recommendation without a recorded decision is worked out again by compare's rule."""
    p = tmp_path / "report.json"
    p.write_text(json.dumps({
        "currency": "INR",
        "quality_tolerance": 0.02,
        "arms": [
            {"name": "prompt", "kind": "prompt", "status": "ok", "quality": 0.4, "scores": [0.4] * 10,
             "cost_per_1k_queries": 2.1, "cost_per_1k_queries_usd": 0.024, "latency_p50_s": 0.8, "latency_p95_s": 1.1,
             "notes": []},
            {"name": "api", "kind": "api", "status": "skipped", "skip_reason": "no API key", "quality": None},
            {"name": "lora", "kind": "finetuned", "status": "ok", "quality": 0.7, "scores": [0.7] * 10,
             "cost_per_1k_queries": 1.5, "cost_per_1k_queries_usd": 0.017, "latency_p50_s": 0.6,
             "training": {"seconds": 90}},
        ],
        "recommendation": {"arm": "lora", "kind": "finetuned", "rule": "..."},
    }))
    a = advise(Answers(goal="general", queries_per_month=1000), evidence=p)
    assert a.recommendation == "finetune" and a.evidence.best_arm == "lora" and a.evidence.resolved
    assert [r["name"] for r in a.evidence.ranking] == ["lora", "prompt"]
    assert a.evidence.ranking[1]["vs_recommended"] == "worse"


def test_evidence_with_no_measured_arm_is_a_clear_error(tmp_path):
    p = tmp_path / "report.json"
    p.write_text(json.dumps({"arms": [{"name": "api", "kind": "api", "status": "skipped", "quality": None}]}))
    with pytest.raises(TunewiseError) as e:
        load_evidence(p)
    assert "no arm has a measured quality" in e.value.message


def test_compare_prices_api_arms_through_costs():
    from tunewise.costs import api_cost_per_1k_usd, api_price

    usd, basis = api_cost_per_1k_usd("gpt-4o-mini", None, 1.0, 0.2)
    assert usd == pytest.approx(api_price("gpt-4o-mini", 1000, 200).usd_per_query) and usd > 0
    assert basis.startswith("genai-prices")


def test_cli_headline_says_when_the_evidence_was_a_tie(tmp_path):
    """The headline names an unresolved comparison as such, not plainly "measured evidence"."""
    tie = _report(tmp_path, [
        {"name": "ft", "kind": "finetuned", "scores": [0.8, 0.9, 0.7, 0.8, 0.8], "cost_per_1k_queries_usd": 0.9},
        {"name": "rag", "kind": "rag", "scores": [0.8, 0.8, 0.7, 0.8, 0.85], "cost_per_1k_queries_usd": 0.3},
    ])
    args = ["advise", "--goal", "style", "--examples", "900", "--queries", "2000000", "--evidence", str(tie)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "(decided by measured evidence, unresolved: the cheapest of arms that tie)" in " ".join(r.output.split())
    (tmp_path / "clear").mkdir()
    clear = _report(tmp_path / "clear", [
        {"name": "rag", "kind": "rag", "scores": [0.6, 0.4] * 15, "cost_per_1k_queries_usd": 0.45},
        {"name": "ft", "kind": "finetuned", "scores": [0.9, 0.8] * 15, "cost_per_1k_queries_usd": 0.30},
    ])
    r = runner.invoke(app, args[:-1] + [str(clear)])
    assert r.exit_code == 0, r.output
    assert "(decided by measured evidence)" in r.output
