"""`tunewise compare`: config errors, costs, the recommendation rule, and full runs of every arm
type on the tiny model (the API arm against a local fake OpenAI-compatible server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from test_eval import FakeOpenAI, run_cli, write_jsonl
from tunewise.compare import load_compare_config, recommend, run_compare
from tunewise.costs import api_cost_per_1k_usd, local_cost_per_1k
from tunewise.errors import TunewiseError

QA = [("What is the casual leave?", "Nine days of casual leave.", ["Nine days"]),
      ("Who approves travel?", "The department head approves travel.", ["department head"]),
      ("What is the hotel limit?", "Hotels up to ₹6,500 per night.", ["₹6,500"]),
      ("When are claims due?", "Claims are due within 30 days.", ["30 days"])]


def rows(items, facts=True):
    out = []
    for q, a, f in items:
        r = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        if facts:
            r["must_include"] = f
        out.append(r)
    return out


@pytest.fixture
def files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(QA, facts=False))
    write_jsonl(tmp_path / "eval.jsonl", rows(QA[:2]))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "policy.md").write_text("# Leave\n\nNine days of casual leave.\n\n# Travel\n\n"
                                    "The department head approves travel. Hotels up to ₹6,500 per night.\n")
    return tmp_path


def fake_run_dir(base: Path, out: Path) -> Path:
    """A run directory as `tunewise train` leaves it: PEFT adapter + summary + metrics (no training)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out / "adapter")
    (out / "adapter" / "tunewise_base.json").write_text(json.dumps({"base_model": str(base)}))
    (out / "summary.json").write_text(json.dumps({"steps": 3, "final_loss": 9.5, "seconds": 360.0}))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 11 - s}) + "\n" for s in (1, 2, 3)))
    return out


def cfg_dict(files, **kw):
    d = {"kind": "compare", "name": "t", "base_model": "smollm2-135m", "eval_file": str(files / "eval.jsonl"),
         "train_file": str(files / "train.jsonl"), "max_new_tokens": 4, "output_dir": str(files / "report"),
         "engine": "hf", "arms": [{"type": "prompt"}]}  # the reference engine: fast on a tiny model (no conversion)
    d.update(kw)
    return d


# --- config errors ---------------------------------------------------------------------------


def test_unknown_arm_type_is_named(files):
    with pytest.raises(TunewiseError) as e:
        load_compare_config(data=cfg_dict(files, arms=[{"type": "prompt"}, {"type": "magic"}]))
    assert "arms[1].type 'magic' is not an arm type" in e.value.message
    assert "prompt, few_shot, rag, finetuned, api" in e.value.hint


def test_other_config_problems_are_listed(files):
    with pytest.raises(TunewiseError) as e:
        load_compare_config(data=cfg_dict(files, arms=[{"type": "finetuned"}, {"type": "rag"}], currency="EUR"))
    msg = e.value.message
    assert "exactly one of run" in msg and "needs docs" in msg and "currency" in msg
    with pytest.raises(TunewiseError, match="kind must be 'compare'"):
        load_compare_config(data={k: v for k, v in cfg_dict(files).items() if k != "kind"})
    with pytest.raises(TunewiseError, match="arm names must be unique"):
        load_compare_config(data=cfg_dict(files, arms=[{"type": "prompt", "name": "a"}, {"type": "few_shot", "name": "a"}]))


def test_an_api_price_needs_its_pair(files):
    """One config price alone would be ignored (genai-prices used instead): refused, naming both keys."""
    with pytest.raises(TunewiseError) as e:
        load_compare_config(data=cfg_dict(files, arms=[
            {"type": "prompt"}, {"type": "api", "model": "gpt-4o-mini", "price_input_per_mtok_usd": 0.15}]))
    assert "arms.1" in e.value.message or "arms[1]" in e.value.message
    assert "price_input_per_mtok_usd is set but price_output_per_mtok_usd is not" in e.value.message
    cfg = load_compare_config(data=cfg_dict(files, arms=[{"type": "api", "model": "gpt-4o-mini",
                                                          "price_input_per_mtok_usd": 0.15, "price_output_per_mtok_usd": 0.6}]))
    assert cfg.arms[0].price_output_per_mtok_usd == 0.6


def test_missing_run_directory_fails_before_any_work(files):
    cfg = load_compare_config(data=cfg_dict(files, arms=[{"type": "prompt"}, {"type": "finetuned", "run": str(files / "runs/none")}]))
    with pytest.raises(TunewiseError) as e:
        run_compare(cfg, quiet=True)
    assert "arms[1] (finetuned): run directory" in e.value.message and "does not exist" in e.value.message
    assert "tunewise train" in e.value.hint
    assert not (files / "report").exists()
    (files / "half").mkdir()
    cfg = load_compare_config(data=cfg_dict(files, arms=[{"type": "finetuned", "run": str(files / "half")}]))
    with pytest.raises(TunewiseError, match="not a finished tunewise run"):
        run_compare(cfg, quiet=True)


def test_eval_file_in_the_wrong_format(files):
    cfg = load_compare_config(data=cfg_dict(files, eval_format="alpaca"))
    with pytest.raises(TunewiseError) as e:
        run_compare(cfg, quiet=True)
    assert e.value.message.startswith("eval file:") and "eval.jsonl" in e.value.message
    (files / "eval.txt").write_text("plain words, no conversations\n")
    cfg = load_compare_config(data=cfg_dict(files, eval_file=str(files / "eval.txt")))
    with pytest.raises(TunewiseError, match="eval"):
        run_compare(cfg, quiet=True)


def test_cli_compare_bad_config_is_one_line(files, capsys):
    path = files / "c.yaml"
    path.write_text(yaml.safe_dump(cfg_dict(files, arms=[{"type": "lora"}])))
    code, out, err = run_cli(["compare", str(path)], capsys)
    assert code == 1 and "arms[0].type 'lora' is not an arm type" in err and "Traceback" not in err


# --- costs and the rule ----------------------------------------------------------------------


def test_costs():
    assert local_cost_per_1k(3.6, 10.0) == pytest.approx(10.0)  # 1000 × 3.6 s = 1 hour
    usd, basis = api_cost_per_1k_usd("x", None, 100, 20, price_in=1.0, price_out=4.0)
    assert usd == pytest.approx((100 * 1.0 + 20 * 4.0) * 1000 / 1e6) and "config" in basis
    usd, basis = api_cost_per_1k_usd("gpt-4o-mini", "openai", 1000, 100)
    assert usd is not None and usd > 0 and "genai-prices" in basis
    usd, basis = api_cost_per_1k_usd("no-such-model-xyz", None, 1000, 100)
    assert usd is None and "price_input_per_mtok_usd" in basis


def arm(name, kind, scores, cost, p50=1.0):
    """A measured arm as report.json holds it: per-example scores, their mean, its cost."""
    return {"name": name, "kind": kind, "status": "ok", "quality": sum(scores) / len(scores), "scores": scores,
            "cost_per_1k_queries": cost, "latency_p50_s": p50}


def test_rule_picks_cheapest_of_the_arms_no_other_arm_beat():
    good = [1.0, 0.8, 1.0, 0.6, 1.0, 0.8, 1.0, 1.0, 0.8, 1.0] * 3  # 30 examples
    arms = [arm("prompt", "prompt", [0.2] * 30, 1.0), arm("rag", "rag", good, 3.0),
            arm("ft", "finetuned", good[1:] + good[:1], 1.2), arm("api", "api", good[2:] + good[:2], 20.0)]
    rec = recommend(arms, tolerance=0.02, currency="INR")
    assert rec["arm"] == "ft" and rec["decision"] == "tie" and set(rec["tied_arms"]) == {"rag", "ft", "api"}
    assert rec["finetuning_paid_off"] is None and rec["finetuning_verdict"] == "unresolved"
    assert rec["comparisons"]["prompt"]["status"] == "worse"
    assert any(s.startswith("Fine-tuning has not been shown to pay off") for s in rec["statements"])
    # the API arm right on every example where the others slip: it beat them all
    arms[3] = arm("api", "api", [1.0] * 30, 20.0)
    rec = recommend(arms, tolerance=0.0, currency="INR")
    assert rec["arm"] == "api" and rec["decision"] == "clear" and rec["finetuning_paid_off"] is False
    assert any(s.startswith("Fine-tuning did not pay off") for s in rec["statements"])


def test_rule_says_plainly_when_finetuning_did_not_pay_off():
    arms = [arm("prompt", "prompt", [0.2] * 10, 1.0), arm("rag", "rag", [0.9] * 10, 2.0),
            arm("ft", "finetuned", [0.3] * 10, 1.0),
            {"name": "api", "kind": "api", "status": "skipped", "skip_reason": "OPENAI_API_KEY is not set", "quality": None}]
    rec = recommend(arms, tolerance=0.05, currency="INR", min_quality=0.95, primary_metric="checks")
    assert rec["arm"] == "rag"
    text = rec["text"]
    assert "Fine-tuning did not pay off: 'ft' reached 0.300, 0.600 below the best arm 'rag'" in text
    assert "No arm is fit for use yet" in text and "'api' was not measured: OPENAI_API_KEY is not set" in text
    # equal quality on every example: the cheaper arm that needs no training wins, and it says why
    rec = recommend([arm("prompt", "prompt", [0.9] * 10, 1.0), arm("ft", "finetuned", [0.9] * 10, 1.5)], 0.02, "INR")
    assert rec["arm"] == "prompt" and "'ft' ties with 'prompt'" in rec["text"] and "needs no training" in rec["text"]


# --- full runs -------------------------------------------------------------------------------


def test_compare_every_arm_type(tiny_model_dir, files, monkeypatch):
    run = fake_run_dir(tiny_model_dir, files / "run")
    monkeypatch.setenv("TW_TEST_API_KEY", "sk-abc")
    monkeypatch.delenv("TW_TEST_MISSING_KEY", raising=False)
    with FakeOpenAI("The department head approves travel.") as fake:
        cfg = load_compare_config(data=cfg_dict(
            files, base_model=str(tiny_model_dir), system_prompt="Answer briefly.",
            hardware={"name": "test box", "price_per_hour": 36.0}, currency="INR", usd_rate=90.0,
            monthly_queries=50_000, checks={"max_words": 50},
            arms=[{"type": "prompt"}, {"type": "few_shot", "k": 2},
                  {"type": "rag", "docs": str(files / "docs"), "k": 1, "examples_k": 1},
                  {"type": "finetuned", "run": str(run)},
                  {"type": "api", "model": "fake-model", "base_url": fake.base_url, "api_key_env": "TW_TEST_API_KEY",
                   "price_input_per_mtok_usd": 1.0, "price_output_per_mtok_usd": 2.0},
                  {"type": "api", "name": "no-key", "model": "gpt-4o-mini", "api_key_env": "TW_TEST_MISSING_KEY"}]))
        res = run_compare(cfg, quiet=True)
    rep = json.loads(res.json_path.read_text(encoding="utf-8"))
    assert [a["name"] for a in rep["arms"]] == ["prompt", "few_shot", "rag", "finetuned", "api", "no-key"]
    by = {a["name"]: a for a in rep["arms"]}
    for a in rep["arms"][:5]:
        assert a["status"] == "ok"
        for key in ("kind", "quality", "cost_per_1k_queries_usd", "latency_p50_s", "latency_p95_s",
                    "mean_input_tokens", "mean_output_tokens", "monthly_cost"):
            assert a[key] is not None, (a["name"], key)
        assert (res.output_dir / a["outputs_file"]).is_file()
    assert rep["primary_metric"] == "checks"
    # local cost: the queries/hour sustained — measured throughput, or one query at a time (with a note),
    # less the shared prefix's prefill that a serving engine's prompt cache saves — × 50 % utilisation
    # × 730 h is what one box serves a month; the ₹36/hour box is kept on all month (the default), and one
    # serves the 50,000 queries: ₹26,280 a month, ₹525.60 per 1,000 queries
    p = by["prompt"]
    pr = p["pricing"]
    assert pr["always_on"] and pr["utilisation"] == 0.5
    assert pr["queries_per_machine_month"] == pytest.approx(pr["queries_per_hour"] * 0.5 * 730)
    assert pr["machines"] == max(1, math.ceil(50_000 / pr["queries_per_machine_month"]))
    assert p["monthly_running_cost"] == pytest.approx(pr["machines"] * 36.0 * 730)
    assert p["cost_per_1k_queries"] == pytest.approx(p["monthly_running_cost"] / 50)
    if pr["method"] == "sequential":
        assert pr["queries_per_hour"] == pytest.approx(3600 / (p["seconds_per_query"] - pr["prefix_seconds_saved"]))
        assert any("priced from sequential latency" in n for n in p["notes"])
    else:
        assert pr["queries_per_hour"] == pytest.approx(3600 / (3600 / p["throughput_qph"] - pr["prefix_seconds_saved"]))
        assert pr["concurrency"] == p["throughput_concurrency"]
    assert pr["shared_prefix_tokens"] > 0 and "shared prompt prefix" in p["cost_basis"]  # "Answer briefly."
    assert p["cost_per_1k_queries_usd"] == pytest.approx(p["cost_per_1k_queries"] / 90.0)
    # monthly = running + one-off costs / 12 months: the prompt arm has none, few-shot labelled its 2
    # demonstrations (2 min each at the default ₹600/hour), the fine-tuned arm trained (₹3.60) on
    # examples its fake run did not record (said in a note)
    assert rep["pricing"]["amortise_months"] == 12 and rep["pricing"]["reviewer_hourly_rate"] == 600
    assert p["monthly_cost"] == pytest.approx(p["monthly_running_cost"])
    assert res.output_dir.joinpath("charts", "cost_by_volume.png").stat().st_size > 1000
    fs = by["few_shot"]
    assert fs["one_off"]["labelled_examples"] == 2 and fs["one_off"]["data_prep"] == pytest.approx(40.0)
    assert fs["monthly_cost"] == pytest.approx(fs["cost_per_1k_queries"] * 50 + 40.0 / 12)
    ft = by["finetuned"]
    assert ft["one_off"]["training"] == pytest.approx(3.6) and ft["one_off"]["labelled_examples"] is None
    assert ft["monthly_cost"] == pytest.approx(ft["cost_per_1k_queries"] * 50 + 3.6 / 12)
    assert any("data_fingerprint.json" in n for n in ft["notes"])
    assert by["rag"]["one_off"]["labelled_examples"] == 4  # retrieves demonstrations from the whole pool
    # prompts grow with demonstrations and retrieved context
    assert by["few_shot"]["mean_input_tokens"] > p["mean_input_tokens"]
    assert by["rag"]["mean_input_tokens"] > p["mean_input_tokens"]
    rag_lines = [json.loads(x) for x in (res.output_dir / by["rag"]["outputs_file"]).read_text().splitlines()]
    assert rag_lines[0]["extra"]["retrieved"] == ["policy.md › Leave"] and len(rag_lines[0]["extra"]["demonstrations"]) == 1
    # the API arm: the fake server's usage (30 in, 5 out) × the configured prices
    api = by["api"]
    assert api["quality"] == pytest.approx(0.75)  # fact found in 1 of 2 answers; max_words passes in both
    assert api["cost_per_1k_queries_usd"] == pytest.approx((30 * 1.0 + 5 * 2.0) * 1000 / 1e6)
    assert fake.requests[0]["body"]["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert fake.requests[0]["auth"] == "Bearer sk-abc"
    assert by["no-key"]["status"] == "skipped" and "TW_TEST_MISSING_KEY" in by["no-key"]["skip_reason"]
    # decode-speed parity inputs: local arms record their model size and decoding rate; the API arm not
    for name in ("prompt", "few_shot", "rag", "finetuned"):
        assert by[name]["model_params"] == by["prompt"]["model_params"] > 0
        assert by[name]["decode_tokens_per_s"] > 0
    assert "decode_tokens_per_s" not in api and "other_cpu_load" not in api
    assert by["prompt"]["other_cpu_load"] >= 0
    # fine-tuned: training figures and cost from summary.json (360 s at ₹36/hour = ₹3.60)
    assert by["finetuned"]["training"]["cost"] == pytest.approx(3.6)
    assert rep["recommendation"]["arm"] in by and rep["recommendation"]["statements"]
    # uncertainty: per-example scores, 95% intervals, paired comparisons with the pick, the small-eval caveat
    for a in rep["arms"][:5]:
        assert len(a["scores"]) == 2 and a["quality_interval"]["low"] <= a["quality"] <= a["quality_interval"]["high"]
        assert "checks" in a["metric_intervals"] and set(a["check_rate_intervals"]) == set(a["check_rates"])
    assert set(rep["recommendation"]["comparisons"]) == {"prompt", "few_shot", "rag", "finetuned", "api"} - {
        rep["recommendation"]["arm"]}
    assert rep["recommendation"]["decision"] == "tie"  # 2 examples separate nothing
    assert rep["eval_size"]["small"] and rep["caveat"].startswith("Small eval set: 2 held-out examples")
    html = res.html_path.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 5  # quality-vs-cost, cost by volume, metrics, latency, loss curve
    assert "id=\"chart-cost-volume\"" in html
    assert "id='recommendation'" in html and "no-key" in html and "not measured" in html
    assert "id='pricing-arms'" in html and "one-off costs ÷ 12 months" in html  # how each arm was priced
    assert html.index("id='caveat'") < html.index("id='recommendation'") and "Unresolved (a tie)" in html
    assert "sk-abc" not in html and "sk-abc" not in res.json_path.read_text()
    assert len(rep["samples"]) == 2 and set(rep["samples"][0]["outputs"]) == {"prompt", "few_shot", "rag", "finetuned", "api"}


def test_compare_trains_the_finetuned_arm_itself(tiny_model_dir, files, capsys):
    cfg = cfg_dict(files, base_model=str(tiny_model_dir),
                   arms=[{"type": "prompt"},
                         {"type": "finetuned", "name": "ft", "train": {"max_steps": 2, "sequence_len": 128,
                                                                      "micro_batch_size": 1, "lora_r": 2}}])
    path = files / "compare.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code, out, err = run_cli(["compare", str(path), "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)  # stdout holds the JSON alone; what compare says goes to stderr
    assert "answering" in err and "training" in err
    ft = [a for a in data["arms"] if a["name"] == "ft"][0]
    assert ft["training"]["steps"] == 2 and Path(ft["training"]["run_dir"]).name == "train-ft"
    assert ft["training"]["seconds"] > 0
    assert (files / "report" / "charts" / "loss-ft.png").is_file()
    assert Path(data["report_html"]).is_file()


def test_a_finished_full_fine_tuning_run_is_reused(tiny_model_dir, files, monkeypatch):
    """`method: full` leaves model/ (no adapter/): compare must reuse it, not train again."""
    import shutil

    import tunewise.train.trainer as trainer
    from tunewise.train.run_dir import is_finished

    run = files / "report" / "train-ft"
    shutil.copytree(tiny_model_dir, run / "model")
    assert not is_finished(run)  # the weights alone: training stopped before summary.json
    (run / "summary.json").write_text(json.dumps({"steps": 2, "final_loss": 9.0, "seconds": 36.0}))
    assert is_finished(run)

    def no_training(*a, **k):
        raise AssertionError("compare retrained a finished full fine-tuning run")

    monkeypatch.setattr(trainer, "train", no_training)
    cfg = load_compare_config(data=cfg_dict(files, base_model=str(tiny_model_dir), arms=[
        {"type": "prompt"}, {"type": "finetuned", "name": "ft", "train": {"method": "full", "max_steps": 2}}]))
    rep = run_compare(cfg, quiet=True).report
    ft = [a for a in rep["arms"] if a["name"] == "ft"][0]
    assert ft["status"] == "ok" and ft["training"]["steps"] == 2 and ft["training"]["run_dir"] == str(run)


def _gguf_of_type(path: Path, file_type) -> Path:
    """A GGUF holding only its header and file type: what tunewise reads before running one."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_local_arm_runs_at_one_precision_settled_before_training(files, monkeypatch):
    """Issue 14: no arm quietly on a 4-bit base GGUF while the fine-tuned one is converted to f16;
    a precision the engine cannot run is refused at once, not after a training run."""
    import gguf

    import tunewise.compare.runner as runner
    from tunewise.compare.runner import plan_precision

    def plan(**kw):
        return plan_precision(load_compare_config(data=cfg_dict(files, **kw)))

    ft = {"type": "finetuned", "run": str(files / "runs/ft")}
    # the engine and the precision must fit
    with pytest.raises(TunewiseError) as e:
        plan(engine="hf", precision="q8_0")
    assert "precision: q8_0" in e.value.message and "engine hf" in e.value.message and "llama.cpp" in e.value.hint
    assert plan(engine="hf", precision="bf16") == "bf16" and plan(engine="hf-batch", precision="auto") == "auto"
    assert plan(engine="llama.cpp", precision="float16") == "f16" and plan(engine="llama.cpp", precision="fp32") == "f32"
    assert plan(engine="hf", precision="q8_0", arms=[{"type": "api", "model": "m"}]) == "q8_0"  # no local arm: moot
    # a base model given as a GGUF runs as it is: auto takes its type for the converted fine-tuned arm
    f32 = _gguf_of_type(files / "base-f32.gguf", gguf.LlamaFileType.ALL_F32)
    assert plan(engine="llama.cpp", base_model=str(f32), arms=[{"type": "prompt"}, ft]) == "f32"
    assert plan(engine="llama.cpp", base_model=str(f32), arms=[{"type": "prompt"}]) == "auto"
    with pytest.raises(TunewiseError) as e:
        plan(engine="llama.cpp", base_model=str(f32), precision="q8_0", arms=[{"type": "prompt"}, ft])
    assert "holds f32 weights" in e.value.message and "q8_0" in e.value.message and "precision: auto" in e.value.hint
    q41 = _gguf_of_type(files / "base-q4_1.gguf", gguf.LlamaFileType.MOSTLY_Q4_1)
    assert plan(engine="llama.cpp", base_model=str(q41), arms=[{"type": "rag", "docs": str(files / "docs")}]) == "auto"
    assert plan(engine="llama.cpp", base_model=str(q41), arms=[ft]) == "auto"  # the base itself is not run
    with pytest.raises(TunewiseError) as e:
        plan(engine="llama.cpp", base_model=str(q41), arms=[{"type": "prompt"}, ft])
    assert "holds q4_1 weights" in e.value.message and "different precisions" in e.value.message
    assert "HF model" in e.value.hint

    # in a run: refused before the fine-tuned arm is trained or any file is written
    def no_training(*a, **k):
        raise AssertionError("trained before the precision was checked")

    monkeypatch.setattr(runner, "_train_arm", no_training)
    cfg = load_compare_config(data=cfg_dict(files, engine="llama.cpp", base_model=str(q41), arms=[
        {"type": "prompt"}, {"type": "finetuned", "train": {"max_steps": 1}}]))
    with pytest.raises(TunewiseError, match="holds q4_1 weights"):
        run_compare(cfg, quiet=True)
    cfg = load_compare_config(data=cfg_dict(files, engine="hf", precision="q8_0", arms=[
        {"type": "finetuned", "train": {"max_steps": 1}}]))
    with pytest.raises(TunewiseError, match="engine hf"):
        run_compare(cfg, quiet=True)
    assert not (files / "report").exists()


def test_example_configs_are_valid():
    root = Path(__file__).resolve().parents[1] / "examples"
    paths = sorted(root.glob("compare-*.yaml"))
    assert len(paths) >= 2
    for p in paths:
        cfg = load_compare_config(p)
        assert cfg.arms and cfg.kind == "compare"
