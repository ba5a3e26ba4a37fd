"""Charts of a comparison as PNG bytes (matplotlib, Agg backend): quality vs cost, monthly cost by
volume, per-metric bars, latency, and training loss curves. Quality carries its 95% interval as error bars."""

from __future__ import annotations

import io
from typing import Any

COLORS = {"prompt": "#4C72B0", "few_shot": "#55A868", "rag": "#8172B2", "finetuned": "#C44E52", "api": "#CCB974"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def quality_vs_cost(arms: list[dict[str, Any]], currency: str, metric: str, pick: str | None) -> bytes:
    """Quality against cost: the monthly cost with one-off costs spread in when the arms carry it
    (what the recommendation ranks on), else the cost per 1,000 queries."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    placed: list[tuple[float, float]] = []
    priced = [a for a in arms if a.get("cost_per_1k_queries") is not None]
    key = "monthly_cost" if priced and all(a.get("one_off") and a.get("monthly_cost") is not None
                                           for a in priced) else "cost_per_1k_queries"
    xmax = max([a[key] for a in priced] or [1.0])
    for a in arms:
        if a.get("quality") is None or a.get(key) is None:
            continue
        x, y = a[key], a["quality"]
        # Stack labels of points that sit close together instead of printing them on top of each other.
        near = sum(1 for px, py in placed if abs(px - x) < 0.15 * xmax and abs(py - y) < 0.06)
        placed.append((x, y))
        iv = a.get("quality_interval")
        if iv:
            ax.errorbar([x], [y], yerr=[[max(0.0, y - iv["low"])], [max(0.0, iv["high"] - y)]], fmt="none",
                        ecolor=COLORS.get(a["kind"], "#777"), elinewidth=1.5, capsize=5, zorder=2)
        ax.scatter([x], [y], s=160 if a["name"] == pick else 80, color=COLORS.get(a["kind"], "#777"),
                   edgecolors="black" if a["name"] == pick else "none", linewidths=2, zorder=3)
        ax.annotate(a["name"] + ("  ← recommended" if a["name"] == pick else ""), (x, y),
                    textcoords="offset points", xytext=(8, 4 + 12 * near), fontsize=9)
    ax.set_xlabel(f"monthly cost, one-off costs spread in ({currency})" if key == "monthly_cost"
                  else f"cost per 1,000 queries ({currency})")
    ax.set_ylabel(f"quality ({metric})")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlim(0, xmax * 1.4 if xmax > 0 else 1.0)
    ax.grid(alpha=0.3)
    ax.set_title("Quality vs cost (up and left is better; bars: 95% interval)")
    return _png(fig)


def monthly_at(a: dict[str, Any], queries: float) -> float | None:
    """An arm's monthly cost at ``queries`` a month, one-off costs spread in: local arms step up by a
    machine at a time (or scale with the hours used), API arms scale with the queries."""
    from tunewise.costs import running_monthly_at

    pr = a.get("pricing") or {}
    one = (a.get("one_off") or {}).get("monthly") or 0.0
    if pr.get("method") in ("throughput", "sequential") and "machine_month" in pr:
        return running_monthly_at(pr, queries) + one
    if a.get("cost_per_1k_queries") is None:
        return None
    return a["cost_per_1k_queries"] * queries / 1000.0 + one


def cost_by_volume(arms: list[dict[str, Any]], currency: str, monthly_queries: int, pick: str | None) -> bytes | None:
    """Monthly cost (one-off costs spread in) against monthly query volume, every priced arm, with the
    report's volume marked: where the local arms' machines step up and where they cross the API arms."""
    import numpy as np

    from tunewise.costs import volume_axes

    ran = [a for a in arms if a.get("status") == "ok" and monthly_at(a, 1.0) is not None]
    if not ran or not any("machine_month" in (a.get("pricing") or {}) for a in ran):
        return None  # a report priced before machines were counted
    top = max(10 * max(monthly_queries, 1), 10_000_000)
    qs = np.logspace(3, np.log10(top), 600)
    lines = [(a, [monthly_at(a, q) for q in qs]) for a in ran]
    if all(y <= 0 for _, ys in lines for y in ys):
        return None  # everything free (hardware at 0/hour, no one-off costs): nothing to draw
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = ["-", "-.", ":", (0, (5, 1, 1, 1))]  # the volume marker is the only dashed line
    for i, (a, ys) in enumerate(lines):
        ax.plot(qs, ys, linestyle=styles[i % len(styles)], color=COLORS.get(a["kind"], "#777"),
                linewidth=2.6 if a["name"] == pick else 1.6,
                label=a["name"] + (" (recommended)" if a["name"] == pick else ""))
    volume_axes(ax, monthly_queries, f"this report: {monthly_queries:,}/month",
                f"monthly cost, one-off costs spread in ({currency})")
    if any(y <= 0 for _, ys in lines for y in ys):
        ax.set_yscale("symlog", linthresh=1.0)  # a free arm: zero has no place on a log scale
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    machines = any((a.get("pricing") or {}).get("always_on") for a in ran)
    ax.set_title("Monthly cost by volume" + (" (local arms: whole machines kept on)" if machines else ""))
    return _png(fig)


def metric_bars(arms: list[dict[str, Any]], metrics: list[str]) -> bytes:
    plt = _plt()
    ran = [a for a in arms if a.get("status") == "ok"]
    metrics = [m for m in metrics if any(m in a.get("metrics", {}) for a in ran)]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    width = 0.8 / max(len(ran), 1)
    for i, a in enumerate(ran):
        vals = [a["metrics"].get(m, 0.0) for m in metrics]
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(metrics))]
        ivs = [(a.get("metric_intervals") or {}).get(m) for m in metrics]
        err = [[max(0.0, v - iv["low"]) if iv else 0.0 for v, iv in zip(vals, ivs)],
               [max(0.0, iv["high"] - v) if iv else 0.0 for v, iv in zip(vals, ivs)]]
        ax.bar(xs, vals, width=width, label=a["name"], color=COLORS.get(a["kind"], None),
               yerr=err if any(ivs) else None, error_kw={"ecolor": "#333", "capsize": 3, "elinewidth": 1})
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels(metrics)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (0..1, higher is better)")
    ax.legend(fontsize=8, ncol=min(len(ran), 5))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Quality metrics per arm (bars: 95% interval)")
    return _png(fig)


def latency_bars(arms: list[dict[str, Any]]) -> bytes:
    plt = _plt()
    ran = [a for a in arms if a.get("status") == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    xs = range(len(ran))
    ax.bar([x - 0.2 for x in xs], [a["latency_p50_s"] for a in ran], width=0.4, label="p50", color="#4C72B0")
    ax.bar([x + 0.2 for x in xs], [a["latency_p95_s"] for a in ran], width=0.4, label="p95", color="#DD8452")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([a["name"] for a in ran])
    ax.set_ylabel("seconds per query")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Latency per query")
    return _png(fig)


def loss_curve(curve: list[dict[str, Any]], title: str) -> bytes | None:
    train = [(r["step"], r["loss"]) for r in curve if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in curve if r.get("eval_loss") is not None]
    if not train and not evals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train:
        ax.plot(*zip(*train), label="training loss", color="#C44E52")
    if evals:
        ax.plot(*zip(*evals), "o--", label="held-out loss", color="#4C72B0")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _png(fig)
