"""What each arm of a comparison costs: serving per 1,000 queries (local arms from the throughput the
hardware sustained, API arms from tokens × prices, both with the shared prompt prefix cached), and
the monthly cost with the one-off costs — training and the labelled examples the arm needed —
spread over ``amortise_months``. The arithmetic is :mod:`tunewise.costs` (one pricing path); this
module gathers the measurements an arm left and writes the figures into its report dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tunewise.compare.arms import Arm
from tunewise.compare.config import CompareConfig
from tunewise.compare.speed import prefill_measure
from tunewise.costs import (
    API_MIN_CACHED_PREFIX_TOKENS,
    DEFAULT_REVIEWER_RATE,
    HOURS_PER_MONTH,
    OneOffCosts,
    api_cost_per_1k_usd,
    local_serving_price,
    shared_prefix_tokens,
)
from tunewise.formatting import money


def pricing_assumptions(cfg: CompareConfig) -> dict[str, Any]:
    """The stated assumptions behind every arm's monthly cost (report.json ``pricing``)."""
    rate = cfg.reviewer_hourly_rate if cfg.reviewer_hourly_rate is not None else DEFAULT_REVIEWER_RATE[cfg.currency]
    return {"monthly_queries": cfg.monthly_queries, "amortise_months": cfg.amortise_months,
            "review_minutes_per_example": cfg.review_minutes_per_example, "reviewer_hourly_rate": rate,
            "reviewer_rate_is_default": cfg.reviewer_hourly_rate is None,
            "prefix_cache_hours": cfg.prefix_cache_hours,
            "queries_per_cache": max(1.0, cfg.monthly_queries * cfg.prefix_cache_hours / HOURS_PER_MONTH)}


def labelled_examples(rep: dict[str, Any], runner: Arm) -> int | None:
    """Labelled examples the arm needed: its demonstrations (few-shot), the pool it retrieves
    demonstrations from (RAG with ``examples_k``), or the conversations its training run read
    (fine-tuned; ``None`` when the run did not record them in data_fingerprint.json)."""
    if rep["kind"] == "few_shot":
        return len(runner.demos)
    if rep["kind"] == "rag":
        return len(runner.pool) if runner.examples_k else 0
    if rep["kind"] == "finetuned":
        try:
            run_dir = Path(rep["training"]["run_dir"])
            fp = json.loads((run_dir / "data_fingerprint.json").read_text(encoding="utf-8"))
            return int(fp["train_conversations"]) + int(fp.get("eval_conversations") or 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return 0


def price_arm(rep: dict[str, Any], arm_cfg, runner: Arm, prompts: list[list[dict]], answers: Sequence[Any],
              cfg: CompareConfig, rate: float, alone: Sequence[int] | None = None) -> None:
    """Write an arm's costs into ``rep`` (which already holds its measurements).

    ``prompts`` are the messages the arm sent for each eval example (for the shared prefix),
    ``answers`` what came back, ``alone`` the indexes of the answers produced one at a time (their
    time to first token gives the prefill rate; default: all). Local arms read ``throughput_qph``
    and ``throughput_concurrency`` from ``rep`` and fall back, with a note, to
    ``seconds_per_query`` answered one after another.
    """
    assume = pricing_assumptions(cfg)
    prefix = shared_prefix_tokens(prompts, rep["mean_input_tokens"])
    if rep["kind"] == "api":
        usd, basis = api_cost_per_1k_usd(arm_cfg.model, arm_cfg.provider, rep["mean_input_tokens"],
                                         rep["mean_output_tokens"], arm_cfg.price_input_per_mtok_usd,
                                         arm_cfg.price_output_per_mtok_usd, shared_prefix_tokens=prefix)
        rep["pricing"] = {"method": "api", "shared_prefix_tokens": prefix, "basis": basis}
        c1k = usd * rate if usd is not None else None
        if usd is None:
            rep["notes"].append(basis)
    else:
        timed = [answers[i] for i in alone] if alone else list(answers)
        s_per_token, _ = prefill_measure(timed)
        _, cached = prefill_measure(answers)
        lp = local_serving_price(cfg.hardware.price_per_hour, rep["seconds_per_query"],
                                 throughput_qph=rep.get("throughput_qph"),
                                 concurrency=rep.get("throughput_concurrency"), shared_prefix_tokens=prefix,
                                 uncached_prefix_tokens=max(0.0, prefix - cached), prefill_s_per_token=s_per_token,
                                 queries_per_cache=assume["queries_per_cache"], hardware=cfg.hardware.name,
                                 currency=cfg.currency, utilisation=cfg.hardware.utilisation,
                                 always_on=cfg.hardware.always_on, min_machines=cfg.hardware.min_machines,
                                 monthly_queries=cfg.monthly_queries)
        rep["pricing"] = lp.as_dict()
        basis, c1k = lp.basis, lp.cost_per_1k
        if lp.note:
            rep["notes"].append(lp.note)
        slots, conc = rep.get("throughput_slots") or 1, rep.get("throughput_concurrency") or 1
        if rep.get("throughput_qph") and conc < slots:
            rep["notes"].append(
                f"throughput measured with only {conc} request(s) at once, though the engine decodes {slots} "
                f"together: the eval set left {rep.get('throughput_queries')} after the {rep.get('latency_samples', 0)} "
                f"answered alone. A busy server answers more per hour, so this overstates the local cost; "
                f"{slots + rep.get('latency_samples', 0)} or more eval examples (or fewer latency_samples) measure it fully")
    one_off = OneOffCosts((rep.get("training") or {}).get("cost") or 0.0, labelled_examples(rep, runner),
                          cfg.review_minutes_per_example, assume["reviewer_hourly_rate"], cfg.amortise_months)
    if one_off.labelled_examples is None:
        rep["notes"].append("the training run does not record how many examples it read (no data_fingerprint.json): "
                            "preparing them is not in the monthly cost")
    rep["cost_basis"] = basis
    rep["cost_per_1k_queries"] = c1k
    rep["cost_per_1k_queries_usd"] = c1k / rate if c1k is not None else None
    rep["one_off"] = one_off.as_dict()
    running = rep["pricing"].get("running_monthly")
    if running is None and c1k is not None:
        running = c1k * cfg.monthly_queries / 1000.0
    rep["monthly_running_cost"] = running
    rep["monthly_cost"] = running + one_off.monthly if running is not None else None
    rep["monthly_cost_usd"] = rep["monthly_cost"] / rate if c1k is not None else None


def billing_text(hw: dict[str, Any]) -> str:
    """How the local hardware is billed, to follow its hourly price (report header, demo summary)."""
    util = hw.get("utilisation", 1.0)
    if hw.get("always_on"):
        return f", kept on all month (as many as the volume needs, at {util:.0%} of the throughput each arm sustained)"
    if "always_on" in hw:
        return f", billed for the hours used at {util:.0%} of the throughput each arm sustained"
    return ""  # a report priced before the billing was stated


def _machines(pr: dict[str, Any]) -> str:
    """What the machines cost at the report's volume, for a local arm priced with them."""
    if not pr.get("always_on") or pr.get("machines") is None:
        return ""
    cap = pr.get("queries_per_machine_month")
    serves = f", one serves {cap:,.0f} queries/month" if cap else ""
    return f"; {pr['machines']} machine{'s' if pr['machines'] != 1 else ''} on all month{serves}"


def how_priced(a: dict[str, Any]) -> str:
    """One arm's pricing method in a few words (report.html, terminal, demo summary)."""
    pr = a.get("pricing") or {}
    method = pr.get("method")
    qph = "–" if pr.get("queries_per_hour") is None else f"{pr['queries_per_hour']:,.0f}"
    if method == "throughput":
        return f"throughput: {qph} queries/hour at concurrency {pr['concurrency']}" + _machines(pr)
    if method == "sequential":
        return f"sequential fallback: {qph} queries/hour one at a time" + _machines(pr)
    if method == "api":
        return "API: tokens × prices"
    return "–"


def assumptions_text(report: dict[str, Any]) -> str:
    """The formulas and stated assumptions behind report.json's costs, in one paragraph."""
    cur, pa = report["currency"], report["pricing"]
    rate = (f"{money(pa['reviewer_hourly_rate'], cur)}/hour"
            + (" (default; set reviewer_hourly_rate)" if pa.get("reviewer_rate_is_default") else ""))
    hw = report["hardware"]
    util = hw.get("utilisation", 1.0)
    if hw.get("always_on"):
        machines = (f"Machines are rented for the whole month, as many as {pa['monthly_queries']:,} queries need "
                    f"(at least {hw.get('min_machines', 1)}), each serving the queries per hour its arm sustained × "
                    f"{util:.0%} utilisation × {HOURS_PER_MONTH:g} h; cost per 1,000 = that bill ÷ the month's "
                    "queries × 1,000, so at a volume one machine serves, every local arm costs the same machine "
                    "(set hardware.always_on: false to bill only the hours the load needs). ")
    else:
        machines = (f"Billed for the hours the load needs: {money(hw['price_per_hour'], cur)}/hour ÷ (queries per "
                    f"hour sustained × {util:.0%} utilisation) × 1,000. ")
    return (f"Local arms: {money(hw['price_per_hour'], cur)}/hour ({hw['name']}); the queries per hour each "
            "sustained are measured throughput with concurrent requests decoded together where the arm has it, "
            "else queries answered one after another (an upper bound, noted); p50/p95 latency is what one user "
            f"waits. {machines}A prompt prefix every query shares (system prompt, fixed demonstrations) is "
            f"prefilled once per {pa['prefix_cache_hours']:g} h of queries ({pa['queries_per_cache']:,.0f} queries), "
            "as a serving engine's prompt cache does; API arms bill it at the provider's cached-input price when "
            f"genai-prices has one and it reaches {API_MIN_CACHED_PREFIX_TOKENS:,} tokens. Monthly cost = running "
            f"cost at {pa['monthly_queries']:,} queries + one-off costs ÷ {pa['amortise_months']:g} months. "
            "One-off costs: training (its measured time × the hourly price) and preparing the labelled examples the "
            "arm needs (fine-tuned: its training data; few-shot: its demonstrations; RAG: the pool it retrieves "
            f"demonstrations from) at {pa['review_minutes_per_example']:g} minutes of review each × {rate}; the eval "
            "set is the same for every arm and not counted.")


def pricing_lines(report: dict[str, Any]) -> list[str]:
    """How each arm was priced and the assumptions, as plain lines (terminal and demo summary);
    nothing for a report written before compare priced this way."""
    if not report.get("pricing"):
        return []
    cur = report["currency"]
    lines = []
    for a in report["arms"]:
        if a.get("status") != "ok" or not a.get("pricing"):
            continue
        one = a.get("one_off") or {}
        extra = ""
        if one.get("total"):
            extra = (f"; one-off {money(one['total'], cur)} (training {money(one.get('training') or 0, cur)}, "
                     f"{one.get('labelled_examples') or 0:,} examples reviewed {money(one['data_prep'], cur)}) "
                     f"÷ {one['months']:g} months")
        lines.append(f"{a['name']}: {how_priced(a)}{extra} → {money(a.get('monthly_cost'), cur)} a month")
    lines.append(assumptions_text(report))
    return lines
