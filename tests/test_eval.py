"""`tunewise eval`: metrics, task checks, loss, the LLM judge (against a local fake
OpenAI-compatible server) and the CLI, on the tiny random model with the HF reference engine
(llama.cpp: tests/test_compare_engines.py)."""

from __future__ import annotations

import json
import math

import pytest
from conftest import FakeOpenAI  # noqa: F401  (test_compare imports it from here)

from tunewise.errors import TunewiseError
from tunewise.evaluate import (
    FACTS_CHECK,
    JudgeConfig,
    TaskChecks,
    chrf,
    evaluate,
    exact_match,
    judge_note,
    load_eval_set,
    percentile,
    response_loss,
    rouge_l,
    run_checks,
)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def eval_file(tmp_path):
    return write_jsonl(tmp_path / "eval.jsonl", [
        {"messages": [{"role": "user", "content": "What is the capital of France?"},
                      {"role": "assistant", "content": "Paris is the capital of France."}],
         "must_include": ["Paris"]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Pay ₹45,000 by 5 March 2025."},
                      {"role": "assistant", "content": "Noted: ₹45,000 by 5 March 2025."}]},
    ])


# --- metrics ---------------------------------------------------------------------------------


def test_reference_metrics_known_values():
    assert exact_match("  Paris\n", "paris") == 1.0
    assert exact_match("Paris.", "Paris") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # LCS "the cat the mat" = 4 of 6 tokens each side -> F1 = 4/6
    assert rouge_l("the cat was on the mat", "the cat sat under the mat") == pytest.approx(4 / 6)
    assert chrf("identical text", "identical text") == pytest.approx(1.0)
    assert 0.0 < chrf("identical test", "identical text") < 1.0
    assert chrf("zzzz", "identical text") < 0.1


def test_percentile_interpolates():
    assert percentile([1.0], 95) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_checks_each_kind_passes_and_fails():
    checks = TaskChecks(
        must_match=[r"(?m)^Subject: "], must_not_match=[r"(?i)as an ai"],
        required_phrases=["legal notice"], forbidden_phrases=["lorem"],
        keep_from_input=[r"₹[\d,]+", r"Tenant: (.+)"], max_words=12,
    )
    prompt = "Tenant: Asha Rao\nAmount: ₹45,000"
    good = "LEGAL NOTICE\nSubject: rent\nAsha Rao owes ₹45,000."
    res = run_checks(good, checks, prompt)
    assert all(res.values()), res
    bad = "As an AI I cannot. Lorem ipsum " + "word " * 12
    res = run_checks(bad, checks, prompt)
    assert not any(res.values()), res
    # a group in keep_from_input keeps only the group's text (the name, not "Tenant: ")
    assert run_checks("Asha Rao ₹45,000", TaskChecks(keep_from_input=[r"Tenant: (.+)"]), prompt) == {
        "keeps /Tenant: (.+)/ from input": True}


def test_json_and_schema_checks(tmp_path):
    schema = {"type": "object", "required": ["name", "age"], "properties": {"age": {"type": "integer"}}}
    checks = TaskChecks(valid_json=True, json_schema=schema)
    assert run_checks('```json\n{"name": "A", "age": 3}\n```', checks) == {"valid JSON": True, "matches JSON schema": True}
    assert run_checks('{"name": "A", "age": "3"}', checks) == {"valid JSON": True, "matches JSON schema": False}
    assert run_checks("not json", checks) == {"valid JSON": False, "matches JSON schema": False}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    assert run_checks('{"name": "A", "age": 3}', TaskChecks(json_schema=str(path)))["matches JSON schema"]


def test_must_include_facts_and_bad_regex():
    assert run_checks("It is 9  Days.", TaskChecks(), must_include=["9 days"]) == {FACTS_CHECK: True}
    assert run_checks("It is nine.", TaskChecks(), must_include=["9 days"]) == {FACTS_CHECK: False}
    with pytest.raises(ValueError, match="does not compile"):
        TaskChecks(must_match=["(unclosed"])


def test_load_eval_set_splits_prompt_and_reference(eval_file):
    exs = load_eval_set(eval_file)
    assert len(exs) == 2
    assert exs[0].question == "What is the capital of France?"
    assert exs[0].reference == "Paris is the capital of France."
    assert exs[0].must_include == ["Paris"]
    assert exs[1].messages[0] == {"role": "system", "content": "Be brief."}
    assert all(m["role"] != "assistant" for m in exs[1].messages)


def test_eval_file_errors_are_clear(tmp_path):
    with pytest.raises(TunewiseError, match="does not exist"):
        load_eval_set(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{not json\n')
    with pytest.raises(TunewiseError, match="bad.jsonl:2"):
        load_eval_set(bad)


# --- model-backed ----------------------------------------------------------------------------


def test_evaluate_tiny_model_end_to_end(tiny_model_dir, eval_file, tmp_path):
    out = tmp_path / "outputs.jsonl"
    rep = evaluate(str(tiny_model_dir), eval_file, checks={"required_phrases": ["Paris"]},
                   max_new_tokens=6, outputs_path=out, progress=False, engine="hf")
    assert rep.n_examples == 2
    for m in ("exact_match", "rouge_l", "chrf", "checks", "loss", "perplexity"):
        assert m in rep.metrics, m
    # a random 49k-vocab model: loss near ln(49152) ~ 10.8, perplexity = exp(loss)
    assert 8.0 < rep.metrics["loss"] < 13.0
    assert rep.metrics["perplexity"] == pytest.approx(math.exp(rep.metrics["loss"]), rel=1e-6)
    assert 0.0 < rep.latency_p50_s <= rep.latency_p95_s
    assert rep.mean_output_tokens <= 6
    assert set(rep.check_rates) == {FACTS_CHECK, "contains 'Paris'"}
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [x["id"] for x in lines] == ["1", "2"]
    assert lines[1]["question"] == "Pay ₹45,000 by 5 March 2025." and "₹" in out.read_text(encoding="utf-8")
    for key in ("output", "reference", "latency_s", "input_tokens", "output_tokens", "stopped", "scores", "checks"):
        assert key in lines[0]
    assert "judge skipped" not in " ".join(rep.notes)


def test_response_loss_matches_transformers_loss(tiny_model_dir, eval_file):
    import torch

    from tunewise.data import tokenize_dataset
    from tunewise.models import load_model, load_tokenizer

    tok, model = load_tokenizer(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    exs = load_eval_set(eval_file)[:1]
    ours = response_loss(model, tok, exs)
    t = tokenize_dataset([exs[0].conversation], tok, 2048, train_on="assistant")[0]
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([t.input_ids]), labels=torch.tensor([t.labels])).loss.item()
    assert ours["loss"] == pytest.approx(hf, rel=1e-4)
    assert ours["loss_tokens"] == sum(1 for x in t.labels[1:] if x != -100)


def test_response_loss_of_an_unmerged_lora_projects_only_trained_positions(tiny_model_dir, eval_file):
    """A PEFT model (compare's fine-tuned reference) takes the same path: logits only for the
    positions that predict an answer token, the loss equal to transformers' own."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunewise.data import tokenize_dataset
    from tunewise.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = get_peft_model(load_model(str(tiny_model_dir)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # a trained adapter, not an identity
    exs = load_eval_set(eval_file)[:2]
    seen = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
    ours = response_loss(model, tok, exs)
    hook.remove()
    total, n = 0.0, 0
    for ex in exs:
        t = tokenize_dataset([ex.conversation], tok, 2048, train_on="assistant")[0]
        k = sum(1 for x in t.labels[1:] if x != -100)
        with torch.no_grad():
            total += model(input_ids=torch.tensor([t.input_ids]), labels=torch.tensor([t.labels])).loss.item() * k
        n += k
    assert ours["loss"] == pytest.approx(total / n, rel=1e-4) and ours["loss_tokens"] == n
    assert sum(seen[:2]) == n  # the output layer saw the trained positions only


# --- judge -----------------------------------------------------------------------------------


def test_judge_against_fake_openai_server(tiny_model_dir, eval_file, monkeypatch):
    monkeypatch.setenv("TW_TEST_JUDGE_KEY", "sk-test-123")
    with FakeOpenAI("Score: 4\nMostly right.") as fake:
        judge = JudgeConfig(base_url=fake.base_url, model="judge-1", api_key_env="TW_TEST_JUDGE_KEY",
                            rubric="Correct and concise.")
        assert judge_note(judge) is None
        rep = evaluate(str(tiny_model_dir), eval_file, metrics=["judge"], judge=judge, max_new_tokens=4, progress=False, engine="hf")
    assert rep.metrics["judge"] == pytest.approx(0.75)  # (4 - 1) / (5 - 1)
    assert len(fake.requests) == 2
    req = fake.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test-123"
    assert req["body"]["model"] == "judge-1"
    assert "Correct and concise." in req["body"]["messages"][1]["content"]
    assert rep.examples[0].judge_reply.startswith("Score: 4")


def test_judge_skipped_without_key_and_stops_on_http_error(tiny_model_dir, eval_file, monkeypatch):
    monkeypatch.delenv("TW_TEST_JUDGE_KEY", raising=False)
    judge = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="TW_TEST_JUDGE_KEY", rubric="r")
    rep = evaluate(str(tiny_model_dir), eval_file, metrics=["judge"], judge=judge, max_new_tokens=2, progress=False, engine="hf")
    assert "judge" not in rep.metrics
    assert any("TW_TEST_JUDGE_KEY is not set" in n for n in rep.notes)
    monkeypatch.setenv("TW_TEST_JUDGE_KEY", "wrong")
    with FakeOpenAI(status=401) as fake:
        judge = JudgeConfig(base_url=fake.base_url, model="m", api_key_env="TW_TEST_JUDGE_KEY", rubric="r")
        rep = evaluate(str(tiny_model_dir), eval_file, metrics=["judge"], judge=judge, max_new_tokens=2, progress=False, engine="hf")
    assert len(fake.requests) == 1  # stopped after the first failure, did not hammer the endpoint
    assert any("HTTP 401" in n for n in rep.notes)


# --- CLI -------------------------------------------------------------------------------------


def run_cli(args, capsys):
    from tunewise.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_eval_json_and_config(tiny_model_dir, eval_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("kind: eval\nmax_new_tokens: 3\nchecks:\n  required_phrases: [Paris]\n")
    code, out, err = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(eval_file),
                              "--config", str(cfg), "--metrics", "rouge_l,checks", "--json", "--engine", "hf"], capsys)
    assert code in (0, None), err
    summary = json.loads(out)
    assert set(summary["metrics"]) >= {"rouge_l", "checks"} and "loss" not in summary["metrics"]
    assert summary["check_rates"]["contains 'Paris'"] >= 0.0
    assert (tmp_path / "eval-outputs.jsonl").is_file()
    assert "generating (hf" in err  # progress on stderr, stdout kept for the JSON
    code, out, err = run_cli(["eval", "--model", str(tiny_model_dir), "--data", str(eval_file), "--config", str(cfg),
                              "--metrics", "rouge_l", "--engine", "hf"], capsys)
    assert code in (0, None), err
    assert "replaced the earlier file there" in " ".join(out.split())


def test_cli_eval_bad_input_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "eval.csv"
    bad.write_text("just,one\n")
    code, out, err = run_cli(["eval", "--data", str(tmp_path / "nope.jsonl")], capsys)
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    code, out, err = run_cli(["eval", "--data", str(bad), "--metrics", "bleu"], capsys)
    assert code == 1 and "Traceback" not in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kind: eval\nchecks:\n  must_match: ['(oops']\n")
    code, out, err = run_cli(["eval", "--config", str(cfg), "--data", "x"], capsys)
    assert code == 1 and "checks.must_match" in err and "does not compile" in err
