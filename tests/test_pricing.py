"""Compare's pricing (issue 15 item 4): local arms from the throughput the hardware sustained (sequential
latency only as a noted fallback), the shared prompt prefix cached, and one-off costs (training,
labelled examples) spread over the stated months in the monthly figure that the rule ranks on."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tunewise.compare.arms import Arm, Demo
from tunewise.compare.config import CompareConfig
from tunewise.compare.pricing import how_priced, price_arm, pricing_assumptions, pricing_lines
from tunewise.compare.recommend import recommend
from tunewise.compare.report import pricing_html
from tunewise.compare.speed import prefill_measure
from tunewise.costs import (
    API_MIN_CACHED_PREFIX_TOKENS,
    OneOffCosts,
    api_cost_per_1k_usd,
    DEFAULT_LOCAL_UTILISATION,
    CostAssumptions,
    cost_options,
    local_serving_price,
    machines_needed,
    running_monthly_at,
    shared_prefix_tokens,
)

# --- serving: throughput, not sequential latency ---------------------------------------------


def test_throughput_pricing_is_cheaper_than_sequential_when_requests_are_batched():
    spq, price = 9.0, 4.0  # 9 s a query alone, ₹4/hour
    seq = local_serving_price(price, spq)
    assert seq.method == "sequential" and seq.cost_per_1k == pytest.approx(10.0)  # 400 queries/hour
    # 8 requests decoded together sustained 2,400 queries/hour: 6× cheaper per query
    batched = local_serving_price(price, spq, throughput_qph=2400, concurrency=8)
    assert batched.method == "throughput" and batched.concurrency == 8
    assert batched.cost_per_1k == pytest.approx(4.0 / 2400 * 1000) and batched.cost_per_1k < seq.cost_per_1k
    assert "2,400 queries/hour measured with 8 concurrent requests" in batched.basis
    # at concurrency 1 the measured rate is the sequential one: the same price
    alone = local_serving_price(price, spq, throughput_qph=3600 / spq, concurrency=1)
    assert alone.cost_per_1k == pytest.approx(seq.cost_per_1k) and alone.concurrency == 1


def test_the_sequential_fallback_says_so():
    seq = local_serving_price(4.0, 2.0, hardware="CPU box", currency="INR")
    assert seq.note and "priced from sequential latency" in seq.note and "upper bound" in seq.note
    assert seq.basis == "2.00 s/query one at a time on CPU box at 4 INR/hour"
    assert local_serving_price(4.0, 2.0, throughput_qph=5000, concurrency=4).note is None
    assert how_priced({"pricing": seq.as_dict()}) == "sequential fallback: 1,800 queries/hour one at a time"


# --- the shared prompt prefix ----------------------------------------------------------------


def _prompts(system: str, questions: list[str]) -> list[list[dict]]:
    return [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]


def test_shared_prefix_is_the_longest_common_start_in_tokens():
    system = "You draft formal legal notices. " * 10  # 320 characters every prompt starts with
    prompts = _prompts(system, ["Tenant Asha owes ₹45,000.", "Tenant Ravi owes ₹12,500 for 3 months."])
    mean_chars = sum(len("\x1esystem\x1f" + system + "\x1euser\x1f" + p[1]["content"]) for p in prompts) / 2
    common = len("\x1esystem\x1f" + system + "\x1euser\x1fTenant ")
    assert shared_prefix_tokens(prompts, 100.0) == pytest.approx(100.0 * common / mean_chars)
    assert shared_prefix_tokens(prompts[:1], 100.0) == 0.0  # one prompt: nothing known to be shared


def test_local_shared_prefix_is_prefilled_once_per_cache_lifetime():
    # 600 prefix tokens at 4 ms each = 2.4 s of every 9 s query, paid once per 137 queries instead
    base = local_serving_price(4.0, 9.0)
    cached = local_serving_price(4.0, 9.0, shared_prefix_tokens=600, prefill_s_per_token=0.004, queries_per_cache=137)
    saved = 600 * 0.004 * (1 - 1 / 137)
    assert cached.prefix_seconds_saved == pytest.approx(saved)
    assert cached.cost_per_1k == pytest.approx(4.0 * (9.0 - saved) / 3600 * 1000)
    assert cached.cost_per_1k < base.cost_per_1k
    assert "shared prompt prefix" in cached.basis and "once per 137 queries" in cached.basis
    # the measuring engine already served the prefix from its prompt cache: nothing to take off
    engine_cached = local_serving_price(4.0, 9.0, throughput_qph=1000, concurrency=8, shared_prefix_tokens=600,
                                        uncached_prefix_tokens=0, prefill_s_per_token=0.004, queries_per_cache=137)
    assert engine_cached.prefix_seconds_saved == 0 and engine_cached.cost_per_1k == pytest.approx(4.0)
    assert "came from the engine's prompt cache" in engine_cached.basis
    # batched but recomputed each time: the prefill is taken off each query's share of the hour too
    batched = local_serving_price(4.0, 9.0, throughput_qph=1000, concurrency=8, shared_prefix_tokens=600,
                                  prefill_s_per_token=0.001, queries_per_cache=1e9)
    assert batched.queries_per_hour == pytest.approx(3600 / (3.6 - 0.6)) and batched.cost_per_1k < 4.0
    # a cache that lives for one query saves nothing
    assert local_serving_price(4.0, 9.0, shared_prefix_tokens=600, prefill_s_per_token=0.004).cost_per_1k == \
        pytest.approx(base.cost_per_1k)


def test_api_shared_prefix_uses_the_cached_input_price_when_there_is_one():
    full, basis = api_cost_per_1k_usd("gpt-4o-mini", "openai", 2000, 100)
    assert full == pytest.approx((2000 * 0.15 + 100 * 0.6) / 1000)
    cached, basis = api_cost_per_1k_usd("gpt-4o-mini", "openai", 2000, 100, shared_prefix_tokens=1500)
    assert cached == pytest.approx((500 * 0.15 + 1500 * 0.075 + 100 * 0.6) / 1000) and cached < full
    assert "at the cached-input price" in basis
    short, basis = api_cost_per_1k_usd("gpt-4o-mini", "openai", 2000, 100, shared_prefix_tokens=500)
    assert short == pytest.approx(full) and f"{API_MIN_CACHED_PREFIX_TOKENS:,}-token minimum" in basis
    model = "accounts/fireworks/models/llama-v3p1-8b-instruct"
    a, _ = api_cost_per_1k_usd(model, "fireworks", 2000, 100)
    b, basis = api_cost_per_1k_usd(model, "fireworks", 2000, 100, shared_prefix_tokens=1500)
    assert a == pytest.approx(b) and "no cached-input price" in basis
    usd, basis = api_cost_per_1k_usd("x", None, 2000, 100, price_in=1.0, price_out=2.0, shared_prefix_tokens=1500)
    assert usd == pytest.approx((2000 + 200) / 1000) and "full input price" in basis


def test_prefill_measure_reads_time_to_first_token_and_the_engine_cache():
    def ans(ttft, n_in, n_out, secs, cached=0):
        return SimpleNamespace(ttft_s=ttft, input_tokens=n_in, output_tokens=n_out, seconds=secs,
                               extra={"cached_tokens": cached})

    # 1.1 s to the first token, 0.1 s a decoding step: 1.0 s of prefill for 500 tokens
    rate, cached = prefill_measure([ans(1.1, 500, 11, 2.1), ans(0.6, 500, 11, 1.6, cached=250)])
    assert rate == pytest.approx((0.002 + 0.002) / 2) and cached == pytest.approx(125)
    assert prefill_measure([SimpleNamespace(input_tokens=5, output_tokens=2, seconds=1.0)]) == (None, 0.0)


# --- one-off costs in the monthly figure -----------------------------------------------------


def test_amortisation_adds_training_and_data_preparation_over_the_months():
    one = OneOffCosts(training=3.6, labelled_examples=320, review_minutes_per_example=2.0,
                      reviewer_hourly_rate=600.0, months=12)
    assert one.review_hours == pytest.approx(320 * 2 / 60)
    assert one.data_prep == pytest.approx(320 * 2 / 60 * 600)  # ₹6,400
    assert one.total == pytest.approx(6403.6) and one.monthly == pytest.approx(6403.6 / 12)
    assert OneOffCosts(0.0, None, 2.0, 600.0, 12).total == 0


def _cfg(**kw) -> CompareConfig:
    kw.setdefault("hardware", {"name": "box", "price_per_hour": 36.0})
    return CompareConfig(kind="compare", eval_file="eval.jsonl", arms=[{"type": "prompt"}], monthly_queries=50_000,
                         **kw)


def _rep(kind: str, **kw) -> dict:
    return {"name": kind, "kind": kind, "status": "ok", "notes": [], "training": None, "seconds_per_query": 1.0,
            "mean_input_tokens": 40.0, "mean_output_tokens": 10.0, **kw}


def test_price_arm_writes_running_and_one_off_costs(tmp_path):
    cfg = _cfg(amortise_months=6, review_minutes_per_example=3, reviewer_hourly_rate=800)
    prompts = _prompts("Answer briefly.", ["What is the leave?", "Who approves travel?"])
    answers = [SimpleNamespace(ttft_s=0.2, input_tokens=40, output_tokens=10, seconds=1.0, extra={})] * 2
    # few-shot: 3 demonstrations reviewed, throughput measured with the prefix in the engine's cache
    fs = _rep("few_shot", throughput_qph=7200.0, throughput_concurrency=4)
    runner = Arm("few_shot", "few_shot", "m", demos=[Demo([], "a")] * 3)
    in_cache = [SimpleNamespace(ttft_s=0.2, input_tokens=40, output_tokens=10, seconds=1.0,
                                extra={"cached_tokens": 30})] * 2
    price_arm(fs, None, runner, prompts, in_cache, cfg, rate=90.0)
    assert 0 < fs["pricing"]["shared_prefix_tokens"] < 30 and fs["pricing"]["prefix_seconds_saved"] == 0
    # one box on all month (default): 7,200/hour × 50 % × 730 h serves 2.6M a month, so 50,000 queries pay one box
    assert fs["pricing"]["method"] == "throughput" and fs["pricing"]["machines"] == 1
    assert fs["monthly_running_cost"] == pytest.approx(36 * 730)
    assert fs["cost_per_1k_queries"] == pytest.approx(36 * 730 / 50_000 * 1000)
    assert fs["cost_per_1k_queries_usd"] == pytest.approx(fs["cost_per_1k_queries"] / 90)
    assert fs["one_off"]["labelled_examples"] == 3 and fs["one_off"]["data_prep"] == pytest.approx(3 * 3 / 60 * 800)
    assert fs["monthly_cost"] == pytest.approx(fs["monthly_running_cost"] + 120.0 / 6)
    assert not any("sequential" in n for n in fs["notes"])
    # fine-tuned: training cost + every conversation its run read, no throughput → the noted fallback
    run = tmp_path / "run"
    run.mkdir()
    (run / "data_fingerprint.json").write_text(json.dumps({"train_conversations": 54, "eval_conversations": 6}))
    ft = _rep("finetuned", training={"run_dir": str(run), "cost": 12.0})
    price_arm(ft, None, Arm("ft", "finetuned", str(run)), prompts, answers, cfg, rate=90.0)
    assert ft["pricing"]["method"] == "sequential" and any("priced from sequential latency" in n for n in ft["notes"])
    # 3,600 queries/hour one at a time × 50 % × 730 h = 1.31M a month: the same one box as the faster arm
    assert ft["monthly_running_cost"] == pytest.approx(fs["monthly_running_cost"])
    assert ft["one_off"]["labelled_examples"] == 60 and ft["one_off"]["training"] == 12.0
    assert ft["monthly_cost"] == pytest.approx(ft["monthly_running_cost"] + (12.0 + 60 * 3 / 60 * 800) / 6)
    # a run that did not record its examples: training only, and a note saying so
    (run / "data_fingerprint.json").unlink()
    ft2 = _rep("finetuned", training={"run_dir": str(run), "cost": 12.0})
    price_arm(ft2, None, Arm("ft", "finetuned", str(run)), prompts, answers, cfg, rate=90.0)
    assert ft2["one_off"]["total"] == 12.0 and any("data_fingerprint.json" in n for n in ft2["notes"])
    # RAG retrieving demonstrations reviews its whole pool; RAG over documents alone needs none
    pool = [Demo([], "a")] * 7
    rag = _rep("rag")
    price_arm(rag, None, Arm("rag", "rag", "m", examples_k=2, pool=pool), prompts, answers, cfg, rate=90.0)
    assert rag["one_off"]["labelled_examples"] == 7
    docs = _rep("rag")
    price_arm(docs, None, Arm("rag", "rag", "m", pool=pool), prompts, answers, cfg, rate=90.0)
    assert docs["one_off"]["total"] == 0 and docs["monthly_cost"] == pytest.approx(docs["monthly_running_cost"])


def test_hourly_billing_prices_the_hours_the_load_needs(tmp_path):
    cfg = _cfg(hardware={"name": "box", "price_per_hour": 36.0, "always_on": False, "utilisation": 0.8})
    prompts = _prompts("Answer briefly.", ["What is the leave?", "Who approves travel?"])
    answers = [SimpleNamespace(ttft_s=0.2, input_tokens=40, output_tokens=10, seconds=1.0,
                               extra={"cached_tokens": 30})] * 2  # the prefix came from the engine's cache
    fs = _rep("few_shot", throughput_qph=7200.0, throughput_concurrency=4)
    price_arm(fs, None, Arm("few_shot", "few_shot", "m"), prompts, answers, cfg, rate=90.0)
    assert fs["pricing"]["machines"] is None and fs["pricing"]["always_on"] is False
    assert fs["cost_per_1k_queries"] == pytest.approx(36 / (7200 * 0.8) * 1000)
    assert fs["monthly_running_cost"] == pytest.approx(fs["cost_per_1k_queries"] * 50)
    assert "billed for the hours used at 80% utilisation" in fs["cost_basis"]


# --- machines on all month --------------------------------------------------------------------


def test_machines_kept_on_all_month_step_up_with_the_volume():
    # 2,000 queries/hour × 50 % × 730 h = 730,000 queries a month per ₹4/hour box (₹2,920 a month)
    def at(q, **kw):
        return local_serving_price(4.0, 1.0, throughput_qph=2000, concurrency=8, utilisation=0.5, always_on=True,
                                   monthly_queries=q, **kw)

    low = at(100_000)
    assert low.queries_per_machine_month == pytest.approx(730_000) and low.machines == 1
    assert low.running_monthly == pytest.approx(2920) and low.cost_per_1k == pytest.approx(29.2)
    assert "1 on all month" in low.basis and "one machine serves 730,000 queries/month" in low.basis
    assert at(730_000).machines == 1 and at(730_001).machines == 2
    assert at(2_000_000).running_monthly == pytest.approx(3 * 2920)
    assert at(100_000, min_machines=2).running_monthly == pytest.approx(2 * 2920)
    assert at(0).running_monthly == pytest.approx(2920)  # a box kept up costs its month even unused
    # the stored dict prices any other volume the same way (the report's volume chart)
    assert running_monthly_at(low.as_dict(), 2_000_000) == pytest.approx(3 * 2920) == low.running_at(2_000_000)
    with pytest.raises(ValueError):
        local_serving_price(4.0, 1.0, always_on=True)


def test_at_low_volume_every_local_arm_costs_the_same_machine():
    """A per-query saving (shorter prompt, faster arm) only shows once the volume needs more machines."""
    def arm(qph, q):
        return local_serving_price(4.0, 1.0, throughput_qph=qph, concurrency=8, utilisation=0.5, always_on=True,
                                   monthly_queries=q)

    slow, fast = 1_000, 3_000  # 365,000 and 1,095,000 queries a month per box
    assert arm(slow, 100_000).running_monthly == arm(fast, 100_000).running_monthly
    assert arm(slow, 1_000_000).running_monthly == pytest.approx(3 * 2920)
    assert arm(fast, 1_000_000).running_monthly == pytest.approx(2920)
    # billed by the hour, the per-query difference shows at any volume
    hourly = [local_serving_price(4.0, 1.0, throughput_qph=q, concurrency=8, utilisation=0.5) for q in (slow, fast)]
    assert hourly[0].cost_per_1k == pytest.approx(3 * hourly[1].cost_per_1k)


def test_compare_and_cost_share_one_utilisation_and_one_machine_rule():
    assert CompareConfig(kind="compare", eval_file="e.jsonl", arms=[{"type": "prompt"}]).hardware.utilisation == \
        DEFAULT_LOCAL_UTILISATION == CostAssumptions().local_utilisation
    assert machines_needed(1, 10) == 1 and machines_needed(11, 10) == 2 and machines_needed(0, 10, 3) == 3
    local = {o.key: o for o in cost_options(CostAssumptions())}["finetune_local"]
    q = local.capacity_queries_per_gpu_month * 2.5
    assert local.gpus_at(q) == machines_needed(q, local.capacity_queries_per_gpu_month) == 3


def test_the_reviewer_rate_default_is_stated_per_currency():
    assert pricing_assumptions(_cfg())["reviewer_hourly_rate"] == 600.0
    usd = pricing_assumptions(_cfg(currency="USD"))
    assert usd["reviewer_hourly_rate"] == 30.0 and usd["reviewer_rate_is_default"]
    assert pricing_assumptions(_cfg(reviewer_hourly_rate=450))["reviewer_rate_is_default"] is False
    assert pricing_assumptions(_cfg())["queries_per_cache"] == pytest.approx(50_000 / 730)


# --- the rule ranks on the monthly figure; the report shows how -----------------------------


def _arm(name, kind, scores, c1k, one_off_total, months=12, q=100_000):
    one = {"training": 0.0, "labelled_examples": 0, "data_prep": one_off_total, "total": one_off_total,
           "months": months, "monthly": one_off_total / months}
    return {"name": name, "kind": kind, "status": "ok", "quality": sum(scores) / len(scores), "scores": scores,
            "cost_per_1k_queries": c1k, "latency_p50_s": 1.0, "one_off": one,
            "monthly_running_cost": c1k * q / 1000, "monthly_cost": c1k * q / 1000 + one_off_total / months}


def test_a_tie_is_priced_with_the_labelled_examples_the_fine_tune_needed():
    """The issue's case: few-shot 0.975 vs fine-tuned 0.962 on 8 examples, the fine-tuned prompt shorter
    (₹19.57 vs ₹22.43 per 1,000 queries). Per query the fine-tuned arm is cheaper; with its 320
    reviewed examples (₹6,400) spread over 12 months it is not."""
    few = [1.0, 1.0, 0.9, 1.0, 1.0, 0.9, 1.0, 1.0]
    ft = [1.0, 0.9, 0.9, 1.0, 1.0, 0.9, 1.0, 1.0]
    arms = [_arm("few_shot", "few_shot", few, 22.43, 3 * 2 / 60 * 600),
            _arm("finetuned", "finetuned", ft, 19.57, 320 * 2 / 60 * 600 + 3.6)]
    rec = recommend(arms, 0.02, "INR", primary_metric="checks")
    assert rec["decision"] == "tie" and rec["arm"] == "few_shot"
    assert "monthly cost, one-off costs spread in" in rec["rule"]
    assert "(monthly, one-off costs included) is recommended" in rec["text"]
    assert "₹2,248 a month with ₹60.00 of one-off costs spread over 12 months" in rec["statements"][0]
    assert rec["finetuning_paid_off"] is False and "one-off costs included" in rec["text"]
    # without the one-off costs (an older report) the per-query cost decides, as before
    old = [{k: v for k, v in a.items() if k != "one_off"} for a in arms]
    assert recommend(old, 0.02, "INR", primary_metric="checks")["arm"] == "finetuned"


def test_report_and_terminal_show_how_each_arm_was_priced():
    arms = [_arm("few_shot", "few_shot", [1.0] * 4, 2.0, 60.0), _arm("ft", "finetuned", [1.0] * 4, 1.5, 6400.0)]
    arms[0]["pricing"] = local_serving_price(4.0, 1.0, throughput_qph=2000, concurrency=8).as_dict()
    arms[1]["pricing"] = local_serving_price(4.0, 1.0).as_dict()
    report = {"currency": "INR", "usd_rate": 88.0, "hardware": {"name": "CPU box", "price_per_hour": 4.0},
              "arms": arms, "pricing": pricing_assumptions(_cfg())}
    html = pricing_html(report)
    assert "id='pricing-arms'" in html and "throughput: 2,000 queries/hour at concurrency 8" in html
    assert "sequential fallback: 3,600 queries/hour one at a time" in html
    assert "one-off costs ÷ 12 months" in html and "2 minutes of review each × ₹600/hour (default" in html
    lines = pricing_lines(report)
    assert lines[0].startswith("few_shot: throughput: 2,000 queries/hour at concurrency 8; one-off ₹60.00")
    assert "÷ 12 months" in lines[1] and lines[-1].startswith("Local arms: ₹4.00/hour (CPU box)")
    assert pricing_lines({"arms": arms}) == []  # a report from before this pricing: nothing to add


def test_bad_hardware_keys_are_named_when_the_config_loads():
    from tunewise.compare import load_compare_config
    from tunewise.errors import TunewiseError

    with pytest.raises(TunewiseError) as e:
        load_compare_config(data={"kind": "compare", "eval_file": "e.jsonl", "arms": [{"type": "prompt"}],
                                  "hardware": {"utilisation": 1.5, "always_on": "maybe", "min_machines": 0}})
    msg = str(e.value)
    for key in ("hardware.utilisation", "hardware.always_on", "hardware.min_machines"):
        assert key in msg


# --- equal costs, no volume, free hardware, old reports --------------------------------------


def _local_arm(name, kind, scores, qph, one_off_total, p50=1.0, q=100_000):
    lp = local_serving_price(4.0, 1.0, throughput_qph=qph, concurrency=8, utilisation=0.5, always_on=True,
                             monthly_queries=q)
    a = _arm(name, kind, scores, lp.cost_per_1k, one_off_total, q=q)
    a.update(pricing=lp.as_dict(), latency_p50_s=p50, monthly_running_cost=lp.running_monthly,
             monthly_cost=lp.running_monthly + one_off_total / 12)
    return a


def test_a_tie_between_arms_on_the_same_box_says_what_broke_it():
    scores = [1.0, 0.0] * 8
    rag = _local_arm("rag", "rag", scores, 3_000, 0.0, p50=1.1)
    prompt = _local_arm("prompt", "prompt", scores, 9_000, 0.0, p50=0.7)
    rec = recommend([rag, prompt], 0.05, "INR", primary_metric="checks")
    assert rec["decision"] == "tie" and rec["arm"] == "prompt"
    assert ("'prompt' and 'rag' cost the same (₹2,920 a month), so the lower p50 latency decided"
            in rec["statements"][1])
    # a fine-tuned arm with no recorded one-off costs ties at the same monthly bill: never "costs less"
    ft = _local_arm("ft", "finetuned", scores, 9_000, 0.0, p50=1.5)
    rec = recommend([rag, ft], 0.05, "INR", primary_metric="checks")
    assert rec["arm"] == "rag" and rec["finetuning_paid_off"] is False
    assert "'rag' costs the same (₹2,920 vs ₹2,920 a month" in rec["text"] and "costs less" not in rec["text"]
    # different bills: the cheapest, as before
    rec = recommend([rag, _local_arm("ft", "finetuned", scores, 9_000, 1200.0)], 0.05, "INR", primary_metric="checks")
    assert "so the cheapest (monthly, one-off costs included) is recommended." in rec["text"]
    assert "'rag' costs less (₹2,920 vs ₹3,020 a month" in rec["text"]


def test_no_monthly_volume_and_unbounded_rates_stay_explained_and_valid_json():
    none = local_serving_price(4.0, 1.0, throughput_qph=2000, concurrency=8, utilisation=0.5, always_on=True,
                               monthly_queries=0)
    assert none.running_monthly == pytest.approx(2920) and none.cost_per_1k == pytest.approx(4.0 / 1000 * 1000)
    assert "with no queries a month; the cost per 1,000 is billed by the hour" in none.basis
    instant = local_serving_price(4.0, 0.0, always_on=True, monthly_queries=1000)  # timed at 0 s a query
    assert instant.queries_per_hour is None and instant.queries_per_machine_month is None and instant.machines == 1
    json.dumps(instant.as_dict(), allow_nan=False)  # no Infinity in report.json
    assert how_priced({"pricing": instant.as_dict()}).startswith("sequential fallback: – queries/hour")
    usd = local_serving_price(0.045, 1.0, throughput_qph=2000, always_on=True, monthly_queries=1000, currency="USD")
    assert "(1 × 32.85 USD)" in usd.basis  # a cheap box's month is not rounded to whole dollars


def test_the_cost_by_volume_chart_needs_machines_and_something_to_draw():
    from tunewise.compare.charts import cost_by_volume, monthly_at

    arm = _local_arm("rag", "rag", [1.0, 0.0], 3_000, 120.0)
    assert cost_by_volume([arm], "INR", 100_000, "rag")[:4] == b"\x89PNG"
    assert monthly_at(arm, 2_000_000) == pytest.approx(2 * 2920 + 10.0)  # 1.095M a box: two at 2M
    old = {k: v for k, v in arm.items() if k != "pricing"}  # a report priced before machines were counted
    assert cost_by_volume([old], "INR", 100_000, "rag") is None
    hourly = dict(arm, pricing=local_serving_price(4.0, 1.0, throughput_qph=3000, utilisation=0.5).as_dict())
    assert monthly_at(hourly, 1_000_000) == pytest.approx(4.0 / 1500 * 1000 * 1000 + 10.0)
    assert cost_by_volume([hourly], "INR", 100_000, "rag")[:4] == b"\x89PNG"
    free = dict(arm, pricing=local_serving_price(0.0, 1.0, throughput_qph=3000, always_on=True,
                                                 monthly_queries=1).as_dict(), one_off={"monthly": 0.0})
    assert cost_by_volume([free], "INR", 100_000, "rag") is None
    api = {"name": "api", "kind": "api", "status": "ok", "cost_per_1k_queries": 0.0, "one_off": {"monthly": 0.0},
           "pricing": {"method": "api"}}
    assert cost_by_volume([arm, api], "INR", 100_000, "rag")[:4] == b"\x89PNG"  # a free arm on a symlog axis


def test_the_terminal_says_how_many_boxes_and_what_they_assume():
    arm = _local_arm("rag", "rag", [1.0, 0.0], 3_000, 120.0)
    assert how_priced(arm) == ("throughput: 3,000 queries/hour at concurrency 8; 1 machine on all month, "
                               "one serves 1,095,000 queries/month")
    report = {"currency": "INR", "usd_rate": 88.0, "arms": [arm], "pricing": pricing_assumptions(_cfg()),
              "hardware": {"name": "CPU box", "price_per_hour": 4.0, "always_on": True, "utilisation": 0.5,
                           "min_machines": 1}}
    text = pricing_lines(report)[-1]
    assert "Machines are rented for the whole month, as many as 50,000 queries need (at least 1)" in text
    assert "× 50% utilisation × 730 h" in text and "every local arm costs the same machine" in text
    report["hardware"]["always_on"] = False
    assert "Billed for the hours the load needs: ₹4.00/hour ÷ (queries per hour sustained × 50% utilisation)" in \
        pricing_lines(report)[-1]


# --- bench/reprice_report.py: a finished report under other assumptions ------------------------


def test_price_arm_says_when_the_eval_set_left_slots_empty():
    """Issue 15 item 4: throughput from 3 requests on 8 slots is not a busy server's; the arm says so."""
    cfg = _cfg()
    prompts = _prompts("Answer briefly.", ["What is the leave?", "Who approves travel?"])
    answers = [SimpleNamespace(ttft_s=0.2, input_tokens=40, output_tokens=10, seconds=1.0, extra={})] * 2
    few = _rep("prompt", throughput_qph=3600.0, throughput_concurrency=3, throughput_slots=8,
               throughput_queries=3, latency_samples=5)
    price_arm(few, None, Arm("prompt", "prompt", "m"), prompts, answers, cfg, rate=90.0)
    note = [n for n in few["notes"] if "request(s) at once" in n]
    assert len(note) == 1 and "only 3 request(s)" in note[0] and "decodes 8" in note[0]
    assert "13 or more eval examples" in note[0] and "overstates the local cost" in note[0]
    full = _rep("prompt", throughput_qph=3600.0, throughput_concurrency=8, throughput_slots=8,
                throughput_queries=20, latency_samples=5)
    price_arm(full, None, Arm("prompt", "prompt", "m"), prompts, answers, cfg, rate=90.0)
    assert not [n for n in full["notes"] if "request(s) at once" in n]


def _reprice_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "reprice_report.py"
    spec = importlib.util.spec_from_file_location("reprice_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reprice_report_applies_todays_rule_to_an_old_report(tmp_path, capsys):
    """A report priced by the hours used, where the fine-tuned arm's short prompts won a tie: with
    boxes kept on, both arms fit one box and the arm that needs no training wins the tie."""
    scores = [1.0, 0.0] * 8
    old = [_arm("rag", "rag", scores, 2.0, 0.0), _arm("ft", "finetuned", scores, 1.0, 1200.0)]
    for a, qph in zip(old, (2_000, 4_000)):
        a["pricing"] = local_serving_price(4.0, 1.0, throughput_qph=qph, concurrency=8).as_dict()
    # hours used at full load: ₹200 vs ₹100 + ₹100 a month; a tie the fine-tuned arm wins on latency
    old[1]["latency_p50_s"] = 0.5
    report = {"name": "r", "currency": "INR", "hardware": {"name": "box", "price_per_hour": 4.0},
              "monthly_queries": 100_000, "quality_tolerance": 0.05, "primary_metric": "checks",
              "pricing": {"amortise_months": 12}, "arms": old,
              "recommendation": recommend(old, 0.05, "INR", primary_metric="checks")}
    assert report["recommendation"]["arm"] == "ft"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    mod = _reprice_module()
    assert mod.main([str(path), "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))[0]
    assert out["before"]["arm"] == "ft" and out["after"]["arm"] == "rag"
    assert [r["machines"] for r in out["arms"]] == [1, 1]
    assert [r["monthly_cost"] for r in out["arms"]] == pytest.approx([2920.0, 3020.0])
    assert "pick: ft (tie) as written → rag (tie) re-priced" in capsys.readouterr().out
    # billed by the hours used at full load, the old pick stands
    assert mod.main([str(path), "--hourly", "--utilisation", "1", "--json", str(tmp_path / "h.json")]) == 0
    assert json.loads((tmp_path / "h.json").read_text(encoding="utf-8"))[0]["after"]["arm"] == "ft"
    # not a report: a clear error naming the file, no traceback
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert mod.main([str(bad)]) == 2
    assert f"error: {bad}: not a report.json written by `tunewise compare`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        mod.main([str(path), "--utilisation", "0"])
