"""The recommendation rule, derived only from the measurements (documented in docs/compare.md).

1. Consider the arms that ran and have a quality value (the primary metric, 0..1, per example).
2. Compare arms example by example (:func:`tunewise.compare.stats.paired`). Arm X *beat* arm Y
   when the 95% paired interval of X − Y lies above zero (the exact sign-flip test rejects "no
   difference") **and** the difference is larger than ``quality_tolerance``. Nothing else counts
   as one arm being better than another: a difference inside the noise, or inside the tolerance,
   is a tie.
3. An arm that another arm beat is out. The rest are indistinguishable from one another on this
   eval set; recommend the cheapest of them (the monthly cost with the one-off costs — training,
   labelled examples — spread over ``amortise_months`` where the report has it, else the cost per
   1,000 queries; then the lower median latency; then the simpler kind,
   prompt < few_shot < rag < finetuned < api). With more than one
   left the report says it was a tie, and how many held-out examples would separate the pick from
   each tied arm (:func:`tunewise.compare.stats.needed_for`). The comparison is *resolved* only
   when the pick beat every other arm itself: paired tests are not transitive, so an arm that lost
   to a third arm but not to the pick leaves it unresolved too (``unseparated_arms``).
4. Fine-tuning *paid off* only when the recommended arm is a fine-tuned one and it beat every arm
   that needs no training. A fine-tuned pick tied with such an arm leaves the question
   *unresolved* (``finetuning_paid_off`` None): it was picked on cost, not shown to be better. When the pick needs no training, fine-tuning did not pay off on this eval set.
5. With ``min_quality`` set and the best quality below it, the report says no arm is fit for use.
"""

from __future__ import annotations

import math
from typing import Any

from tunewise.compare.stats import Paired, needed_for, paired
from tunewise.formatting import money

SIMPLICITY = {"prompt": 0, "few_shot": 1, "rag": 2, "finetuned": 3, "api": 4}
INF = float("inf")


def _cost(a: dict[str, Any]) -> float | None:
    """Cost per 1,000 queries in the report's currency (USD in a hand-written evidence file)."""
    return a["cost_per_1k_queries"] if a.get("cost_per_1k_queries") is not None else a.get("cost_per_1k_queries_usd")


def _all_in(a: dict[str, Any]) -> bool:
    """Whether the arm carries a monthly cost with its one-off costs spread in (compare's pricing)."""
    return a.get("monthly_cost") is not None and a.get("one_off") is not None


def _cost_order(a: dict[str, Any], monthly: bool) -> tuple:
    """Cheapest first: with ``monthly``, the monthly cost with one-off costs (training, labelled
    examples) spread in; else the cost per 1,000 queries."""
    cost = a["monthly_cost"] if monthly and _all_in(a) else _cost(a)
    return (cost if cost is not None else INF, a.get("latency_p50_s") or INF, SIMPLICITY.get(a["kind"], 9))


def _same_cost(a: dict[str, Any], b: dict[str, Any], monthly: bool) -> bool:
    """Whether two arms cost the same to the paisa/cent (e.g. local arms that each fit one box kept on)."""
    x, y = _cost_order(a, monthly)[0], _cost_order(b, monthly)[0]
    return x != INF and y != INF and math.isclose(x, y, rel_tol=1e-9, abs_tol=0.005)


def _tie_break_text(pick: dict[str, Any], tied: list[dict[str, Any]], monthly: bool, currency: str) -> str:
    """How the pick was chosen among tied arms: the cheapest, or at equal cost what broke the tie."""
    cheapest = "the cheapest" + (" (monthly, one-off costs included)" if _all_in(pick) else "") + " is recommended"
    same = [a for a in tied[1:] if _same_cost(a, pick, monthly)]
    if not same:
        return f"so {cheapest}."
    amount = pick["monthly_cost"] if monthly and _all_in(pick) else _cost(pick)
    names = ", ".join(f"'{a['name']}'" for a in same)
    lat = pick.get("latency_p50_s")
    by = ("the lower p50 latency decided" if any((a.get("latency_p50_s") or INF) != (lat or INF) for a in same)
          else "the simpler approach decided")
    return (f"so {cheapest}; '{pick['name']}' and {names} cost the same "
            f"({money(amount, currency)}{' a month' if monthly and _all_in(pick) else ' per 1,000 queries'}), so {by}.")


def cost_text(a: dict[str, Any], currency: str) -> str:
    """``₹9.67 per 1,000 queries, ₹1,067 a month with ₹1,203 of one-off costs spread over 12 months``."""
    text = f"{money(_cost(a), currency)} per 1,000 queries"
    if _all_in(a):
        one = a["one_off"]
        text += f", {money(a['monthly_cost'], currency)} a month" + (
            f" with {money(one['total'], currency)} of one-off costs spread over {one['months']:g} months"
            if one.get("total") else "")
    return text


def compare_arms(a: dict[str, Any], b: dict[str, Any]) -> Paired | None:
    """Arm ``a`` minus arm ``b`` on the examples both were scored on (None without per-example scores)."""
    if a.get("scores") is None or b.get("scores") is None:
        return None
    return paired(a["scores"], b["scores"])


def interval_text(a: dict[str, Any]) -> str:
    iv = a.get("quality_interval")
    return f" (95% interval {iv['low']:.2f}–{iv['high']:.2f})" if iv else ""


def paired_text(p: Paired) -> str:
    return (f"{p.diff:+.3f} (95% interval {p.low:+.3f} to {p.high:+.3f}, sign-flip p = {p.p_value:.2g}, "
            f"{p.n} paired examples)")


def tie_text(x: str, y: str, p: Paired | None, tolerance: float) -> str:
    """One sentence on why ``x`` and ``y`` count as equally good, and what would separate them."""
    if p is None:
        return f"'{x}' and '{y}' cannot be compared example by example (no per-example scores)."
    if p.significant:
        return (f"'{x}' vs '{y}': {paired_text(p)} — a real difference, but within the tolerance of "
                f"{tolerance:.2f}.")
    need = needed_for(p, tolerance)
    if need is None:
        return f"'{x}' vs '{y}': identical on all {p.n} examples."
    return (f"'{x}' vs '{y}': {paired_text(p)} — indistinguishable at n={p.n}; about {need:,} examples "
            "needed to separate them.")


def recommend(arms: list[dict[str, Any]], tolerance: float, currency: str,
              min_quality: float | None = None, primary_metric: str = "quality") -> dict[str, Any]:
    """Apply the rule above to measured arms (dicts as in report.json, with per-example ``scores``)."""
    ran = [a for a in arms if a.get("status") == "ok" and a.get("quality") is not None]
    # every priced arm has a monthly cost with its one-off costs (a compare report): rank on it
    monthly = bool(ran) and all(_all_in(a) or _cost(a) is None for a in ran)
    cost = "monthly cost, one-off costs spread in" if monthly else "cost per 1,000 queries"
    rule = (f"cheapest arm ({cost}) among those no other arm beat; X beat Y when the 95% "
            f"paired interval of X − Y excludes 0 and the difference exceeds the tolerance of {tolerance:.2f}; "
            "ties: lower p50 latency, then the simpler approach")
    if not ran:
        text = "No arm produced results, so there is nothing to recommend."
        return {"arm": None, "kind": None, "rule": rule, "decision": "none", "resolved": False,
                "finetuning_paid_off": None, "finetuning_verdict": None, "statements": [text], "text": text,
                "tied_arms": [], "unseparated_arms": [], "comparisons": {}}
    pairs: dict[tuple[str, str], Paired | None] = {}

    def cmp(a: dict, b: dict) -> Paired | None:
        key, mirror = (a["name"], b["name"]), (b["name"], a["name"])
        if key not in pairs:
            pairs[key] = pairs[mirror].flipped() if pairs.get(mirror) else compare_arms(a, b)
        return pairs[key]

    def beaten_by(a: dict) -> list[dict]:
        return [b for b in ran if b is not a and (p := cmp(b, a)) is not None and p.beats(tolerance)]

    best = max(ran, key=lambda a: a["quality"])
    best_q = best["quality"]
    tied = sorted([a for a in ran if not beaten_by(a)], key=lambda a: _cost_order(a, monthly))
    pick = tied[0]
    # paired tests are not transitive: an arm beaten by another may still not be beaten by the pick
    # itself, so "resolved" means the pick beat every other arm directly
    unseparated = [a for a in ran if a is not pick and not ((p := cmp(pick, a)) is not None and p.beats(tolerance))]
    resolved = not unseparated
    st: list[str] = []
    lat = pick.get("latency_p50_s")
    # "Use X" only for an arm fit for use; otherwise the same figures, said for what they are
    fit = best_q > 0.0 and (min_quality is None or best_q >= min_quality)
    lead = "Use" if fit else "Best so far, not fit for use yet (see below):"
    st.append(f"{lead} '{pick['name']}' ({pick['kind']}): {primary_metric} {pick['quality']:.3f}{interval_text(pick)}, "
              f"{cost_text(pick, currency)}"
              + (f", p50 latency {lat:.2f} s." if lat is not None else "."))
    others = [a for a in ran if a is not pick]
    if resolved and others:
        runner_up = max(others, key=lambda a: a["quality"])
        p = cmp(pick, runner_up)
        st.append(f"It beat every other arm; the closest, '{runner_up['name']}'"
                  + (f": {paired_text(p)}." if p else "."))
    elif len(tied) == 1:  # unbeaten alone, yet not separated from every arm directly
        names = ", ".join(f"'{a['name']}'" for a in unseparated)
        st.append(f"Not resolved: no arm beat '{pick['name']}', but it did not beat {names} directly either "
                  f"(each lost to another arm).")
        for a in unseparated:
            st.append(tie_text(a["name"], pick["name"], cmp(a, pick), tolerance))
    else:
        quoted = [f"'{a['name']}'" for a in tied]
        names = ", ".join(quoted[:-1]) + " and " + quoted[-1]  # 'a' and 'b'; 'a', 'b' and 'c'
        st.append(f"Tie: {names} are indistinguishable on this eval set (no arm beat "
                  f"another by more than the noise and the tolerance of {tolerance:.2f}), "
                  + _tie_break_text(pick, tied, monthly, currency))
        for a in sorted(tied[1:], key=lambda a: -a["quality"]):
            st.append(tie_text(a["name"], pick["name"], cmp(a, pick), tolerance))

    paid, verdict = _finetuning(ran, pick, tied, tolerance, currency, cmp, st, unseparated)
    best_iv = best.get("quality_interval")
    if best_q <= 0.0:
        st.append(f"No arm produced a single acceptable answer ({primary_metric} 0 everywhere), so the "
                  "choice above rests on cost alone. Try a larger base model or more training.")
    elif min_quality is not None and best_q < min_quality:
        sure = (" (even the top of its 95% interval is)" if best_iv and best_iv["high"] < min_quality else "")
        st.append(f"No arm is fit for use yet: the best {primary_metric} {best_q:.3f}{interval_text(best)} is below "
                  f"the required {min_quality:.2f}{sure}. Try a larger base model, more training data or a longer "
                  "training run.")
    for a in arms:
        if a.get("status") != "ok":
            st.append(f"'{a['name']}' was not measured: {a.get('skip_reason', 'skipped')}.")
    comparisons = {}
    for a in others:
        p = cmp(a, pick)
        if p is None:
            comparisons[a["name"]] = {"status": "not comparable"}
            continue
        status = "better" if p.beats(tolerance) else "worse" if p.loses(tolerance) else "indistinguishable"
        comparisons[a["name"]] = {**p.as_dict(), "status": status,
                                  "examples_needed": needed_for(p, tolerance) if status == "indistinguishable" else None}
    return {"arm": pick["name"], "kind": pick["kind"], "rule": rule,
            "decision": "clear" if resolved else "tie", "resolved": resolved,
            "finetuning_paid_off": paid, "finetuning_verdict": verdict,
            "best_quality": best_q, "best_arm": best["name"], "tied_arms": [a["name"] for a in tied],
            "unseparated_arms": [a["name"] for a in unseparated],
            "comparisons": comparisons, "statements": st, "text": " ".join(st)}


def _finetuning(ran, pick, tied, tolerance, currency, cmp, st, unseparated=()) -> tuple[bool | None, str | None]:
    """Whether fine-tuning paid off (True / False / None when unresolved), with its statement;
    ``unseparated``: the arms the pick did not beat itself."""
    ft = [a for a in ran if a["kind"] == "finetuned"]
    plain = [a for a in ran if a["kind"] != "finetuned"]  # arms that need no training
    if not ft:
        return None, None
    if not plain:
        st.append("Whether fine-tuning paid off cannot be judged: no arm without training ran.")
        return None, None
    if pick["kind"] == "finetuned":
        best_plain = max(plain, key=lambda a: a["quality"])
        if all((p := cmp(pick, a)) is not None and p.beats(tolerance) for a in plain):
            st.append(f"Fine-tuning paid off: '{pick['name']}' beat every arm that needs no training; the best of "
                      f"them, '{best_plain['name']}', by {paired_text(cmp(pick, best_plain))}.")
            return True, "paid_off"
        rival = max([a for a in unseparated if a["kind"] != "finetuned"] or plain, key=lambda a: a["quality"])
        p = cmp(pick, rival)
        if p is None:
            how = "cannot be compared example by example"
        elif not p.significant and (need := needed_for(p, tolerance)) is not None:
            how = (f"{p.diff:+.3f}, p = {p.p_value:.2g}: indistinguishable at n={p.n}; about {need:,} examples "
                   "needed to tell them apart")
        else:
            how = f"{p.diff:+.3f}: not more than the tolerance of {tolerance:.2f}"
        if _all_in(pick):
            why = (f"'{pick['name']}' is recommended only as the cheapest of arms that tie, with its training and data "
                   f"preparation ({money(pick['one_off']['total'], currency)}) spread over "
                   f"{pick['one_off']['months']:g} months.")
        else:
            why = (f"'{pick['name']}' is recommended only as the cheapest per query of arms that tie; its training "
                   "and data preparation are not in that cost.")
        st.append(f"Fine-tuning has not been shown to pay off: '{pick['name']}' vs '{rival['name']}' {how}. {why}")
        return None, "unresolved"
    best_ft = max(ft, key=lambda a: a["quality"])
    best = max(ran, key=lambda a: a["quality"])
    if best_ft not in tied:
        gap = best["quality"] - best_ft["quality"]
        p = cmp(best_ft, best)
        st.append(f"Fine-tuning did not pay off: '{best_ft['name']}' reached {best_ft['quality']:.3f}, {gap:.3f} "
                  f"below the best arm '{best['name']}'" + (f" ({paired_text(p)})." if p else "."))
        return False, "did_not_pay_off"
    p = cmp(best_ft, pick)
    same = _same_cost(pick, best_ft, _all_in(pick) and _all_in(best_ft))
    st.append(f"Fine-tuning did not pay off on this eval set: '{best_ft['name']}' ties with '{pick['name']}'"
              + (f" ({paired_text(p)})" if p else "")
              + f", and '{pick['name']}' {'costs the same' if same else 'costs less'} ("
              + (f"{money(pick['monthly_cost'], currency)} vs {money(best_ft['monthly_cost'], currency)} a month, "
                 "one-off costs included" if _all_in(pick) and _all_in(best_ft) else
                 f"{money(_cost(pick), currency)} vs {money(_cost(best_ft), currency)} per 1,000 queries")
              + ") and needs no training.")
    return False, "did_not_pay_off"
