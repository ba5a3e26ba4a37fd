"""Costs per query and the recommendation rule, both derived only from the measurements.

Rule (documented in docs/compare.md):

1. Consider the arms that ran and have a quality value (the primary metric, 0..1).
2. The *best* quality is the highest of those. Every arm within ``quality_tolerance`` of it
   (absolute) counts as equally good.
3. Among those, recommend the one with the lowest cost per 1,000 queries; ties go to the lower
   median latency, then to the simpler kind (prompt < few_shot < rag < finetuned < api).
4. Fine-tuning *paid off* only when the recommended arm is a fine-tuned one; otherwise the report
   says plainly that it did not, and by how much the fine-tuned arm trailed or cost more.
5. With ``min_quality`` set and the best quality below it, the report says no arm is fit for use.
"""

from __future__ import annotations

from typing import Any

SIMPLICITY = {"prompt": 0, "few_shot": 1, "rag": 2, "finetuned": 3, "api": 4}


def usd_rate_for(currency: str, override: float | None = None) -> float:
    """Units of ``currency`` per USD: the override, else the shipped fx table, else 1 for USD."""
    if override:
        return float(override)
    if currency == "USD":
        return 1.0
    try:
        from tunewise.tables import load_table

        return float(load_table("fx.yaml")["usd_to"][currency])
    except Exception:  # table missing in an old install: a stated fallback, shown in the report
        return 88.0


def local_cost_per_1k(seconds_per_query: float, price_per_hour: float) -> float:
    """Serving cost of 1,000 queries answered one after another on hardware rented by the hour."""
    return seconds_per_query * 1000.0 / 3600.0 * price_per_hour


def api_cost_per_1k_usd(model: str, provider: str | None, input_tokens: float, output_tokens: float,
                        price_in: float | None = None, price_out: float | None = None) -> tuple[float | None, str]:
    """USD for 1,000 queries of the given mean token counts, and where the price came from."""
    if price_in is not None and price_out is not None:
        usd = (input_tokens * price_in + output_tokens * price_out) * 1000.0 / 1e6
        return usd, "prices from the config"
    try:
        from tunewise import costs  # the advise helper's lookup, if present

        lookup = getattr(costs, "api_price_usd", None)
    except ImportError:
        lookup = None
    if lookup is not None:
        try:
            usd = float(lookup(model, int(round(input_tokens * 1000)), int(round(output_tokens * 1000)),
                               provider=provider))
            return usd, "genai-prices (via tunewise.costs)"
        except Exception:
            pass
    try:
        from genai_prices import Usage, calc_price

        usage = Usage(input_tokens=int(round(input_tokens * 1000)), output_tokens=int(round(output_tokens * 1000)))
        kw = {"provider_id": provider} if provider else {}
        price = calc_price(usage, model, **kw)
        return float(price.total_price), f"genai-prices ({price.provider.name} {price.model.name})"
    except Exception as e:
        return None, f"no price known for '{model}' ({type(e).__name__}); set price_input_per_mtok_usd/price_output_per_mtok_usd"


def _fmt_money(x: float | None, currency: str) -> str:
    if x is None:
        return "unknown"
    sym = {"INR": "₹", "USD": "$"}.get(currency, currency + " ")
    return f"{sym}{x:,.2f}" if x >= 1 else f"{sym}{x:,.4f}"


def recommend(arms: list[dict[str, Any]], tolerance: float, currency: str,
              min_quality: float | None = None, primary_metric: str = "quality") -> dict[str, Any]:
    """Apply the rule above to measured arms (dicts as in report.json)."""
    ran = [a for a in arms if a.get("status") == "ok" and a.get("quality") is not None]
    rule = (f"cheapest arm (cost per 1,000 queries) among those within {tolerance:.2f} of the best "
            f"{primary_metric}; ties: lower p50 latency, then the simpler approach")
    if not ran:
        return {"arm": None, "kind": None, "rule": rule, "finetuning_paid_off": None,
                "statements": ["No arm produced results, so there is nothing to recommend."],
                "text": "No arm produced results, so there is nothing to recommend."}
    best_q = max(a["quality"] for a in ran)
    best = [a for a in ran if a["quality"] == best_q][0]
    tied = [a for a in ran if a["quality"] >= best_q - tolerance - 1e-12]
    big = float("inf")
    tied.sort(key=lambda a: (a.get("cost_per_1k_queries") if a.get("cost_per_1k_queries") is not None else big,
                             a.get("latency_p50_s") or big, SIMPLICITY.get(a["kind"], 9)))
    pick = tied[0]
    st: list[str] = []
    cost = _fmt_money(pick.get("cost_per_1k_queries"), currency)
    vs_best = "the best" if pick["quality"] >= best_q else f"best {best_q:.3f} by '{best['name']}'"
    head = (f"Use '{pick['name']}' ({pick['kind']}): {primary_metric} {pick['quality']:.3f} "
            f"({vs_best}), {cost} per 1,000 queries, p50 latency {pick['latency_p50_s']:.2f} s.")
    st.append(head)
    if pick is not best and pick["quality"] < best_q:
        st.append(f"'{best['name']}' scored {best_q - pick['quality']:.3f} higher, within the tolerance of "
                  f"{tolerance:.2f}, but costs {_fmt_money(best.get('cost_per_1k_queries'), currency)} per 1,000 queries.")

    ft = [a for a in ran if a["kind"] == "finetuned"]
    paid: bool | None = None
    if ft:
        others = [a for a in ran if a["kind"] != "finetuned"]
        best_ft = max(ft, key=lambda a: a["quality"])
        if pick["kind"] == "finetuned":
            paid = True
            if others:
                bo = max(others, key=lambda a: a["quality"])
                gain = pick["quality"] - bo["quality"]
                if gain > tolerance:
                    st.append(f"Fine-tuning paid off: '{pick['name']}' beat the best other arm '{bo['name']}' "
                              f"by {gain:+.3f} {primary_metric}.")
                else:
                    st.append(f"Fine-tuning paid off on cost only: '{pick['name']}' is as good as '{bo['name']}' "
                              f"({gain:+.3f} {primary_metric}) and cheaper per query (a shorter prompt); "
                              "its training is a one-off cost.")
            else:
                st.append("Fine-tuning paid off (no other arm ran).")
        else:
            paid = False
            gap = best_q - best_ft["quality"]
            if gap > tolerance:
                st.append(f"Fine-tuning did not pay off: '{best_ft['name']}' reached {best_ft['quality']:.3f}, "
                          f"{gap:.3f} below the best arm '{best['name']}'.")
            else:
                st.append(f"Fine-tuning did not pay off: '{best_ft['name']}' matched the best quality "
                          f"({best_ft['quality']:.3f}) but '{pick['name']}' does as well for less "
                          f"({_fmt_money(best_ft.get('cost_per_1k_queries'), currency)} vs {cost} per 1,000 queries"
                          " — and it needs no training).")
    if best_q <= 0.0:
        st.append(f"No arm produced a single acceptable answer ({primary_metric} 0 everywhere), so the "
                  "choice above rests on cost alone. Try a larger base model or more training.")
    elif min_quality is not None and best_q < min_quality:
        st.append(f"No arm is fit for use yet: the best {primary_metric} {best_q:.3f} is below the required "
                  f"{min_quality:.2f}. Try a larger base model, more training data or a longer training run.")
    skipped = [a for a in arms if a.get("status") != "ok"]
    for a in skipped:
        st.append(f"'{a['name']}' was not measured: {a.get('skip_reason', 'skipped')}.")
    return {"arm": pick["name"], "kind": pick["kind"], "rule": rule, "finetuning_paid_off": paid,
            "best_quality": best_q, "best_arm": best["name"], "tied_arms": [a["name"] for a in tied],
            "statements": st, "text": " ".join(st)}
