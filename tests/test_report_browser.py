"""report.html renders in a real headless browser (Debian's chromium): the recommendation and the
charts are in the DOM and visible in a screenshot. Skipped only when chromium is not installed."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tunewise.compare import charts as ch
from tunewise.compare.recommend import recommend
from tunewise.compare.report import render_html
from tunewise.compare.stats import eval_size_check

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def sample_report(intervals: bool = True) -> tuple[dict, dict]:
    from tunewise.compare.stats import arm_uncertainty
    from tunewise.costs import local_serving_price

    class Result:  # what compare scores per example: the primary metric and each check
        def __init__(self, q):
            self.scores = {"checks": q, "rouge_l": q * 0.8, "chrf": q * 0.7}
            self.checks = {"contains 'Subject:'": q >= 0.5}

    def arm(name, kind, scores, cost, p50, training=None):
        q = sum(scores) / len(scores)
        a = {"name": name, "kind": kind, "status": "ok", "quality": q, "cost_per_1k_queries": cost,
             "cost_per_1k_queries_usd": cost / 88, "monthly_cost": cost * 100, "latency_p50_s": p50,
             "latency_p95_s": p50 * 1.4, "mean_input_tokens": 200, "mean_output_tokens": 150, "stopped_rate": 0.9,
             "metrics": {"checks": q, "rouge_l": q * 0.8, "chrf": q * 0.7}, "check_rates": {"contains 'Subject:'": q},
             "notes": [], "training": training,
             # a box kept on all month, serving what this arm sustained at 50 % (the monthly-cost-by-volume chart)
             "pricing": local_serving_price(4.0, p50, throughput_qph=4.0 / cost * 1000, concurrency=8, utilisation=0.5,
                                            always_on=True, monthly_queries=100_000).as_dict()}
        if intervals:
            a.update(arm_uncertainty([Result(x) for x in scores], "checks"))
        return a

    arms = [arm("prompt", "prompt", [0.2, 0.4, 0.3, 0.3, 0.2, 0.4, 0.3, 0.35], 2.1, 1.9),
            arm("few_shot", "few_shot", [0.5, 0.6, 0.55, 0.5, 0.6, 0.55, 0.5, 0.6], 3.9, 3.5),
            arm("finetuned-lora", "finetuned", [0.9, 1.0, 0.9, 0.95, 0.9, 1.0, 0.9, 0.9], 2.0, 1.8,
                {"cost": 0.2, "seconds": 180}),
            {"name": "api", "kind": "api", "status": "skipped", "skip_reason": "OPENAI_API_KEY is not set",
             "quality": None, "notes": []}]
    rec = recommend(arms, 0.05, "INR", primary_metric="checks")
    size = eval_size_check(8, 0.05)
    report = {"name": "Legal notices", "created": "2026-01-01 00:00 UTC", "tunewise_version": "0.1.0",
              "base_model": "smollm2-135m", "eval_file": "eval.jsonl", "n_examples": 8, "primary_metric": "checks",
              "metrics_shown": ["checks", "rouge_l", "chrf"], "currency": "INR", "usd_rate": 88.0,
              "hardware": {"name": "CPU box", "price_per_hour": 4.0}, "monthly_queries": 100000,
              "quality_tolerance": 0.05, "eval_size": size, "caveat": size["message"],
              "arms": arms, "recommendation": rec, "notes": [],
              "samples": [{"question": "Draft a notice for ₹45,000", "reference": "LEGAL NOTICE …",
                           "outputs": {"prompt": "Dear tenant", "few_shot": "NOTICE", "finetuned-lora": "LEGAL NOTICE"}}]}
    charts = {"quality_vs_cost": ch.quality_vs_cost(arms, "INR", "checks", rec["arm"]),
              "cost_by_volume": ch.cost_by_volume(arms, "INR", 100_000, rec["arm"]),
              "metrics": ch.metric_bars(arms, report["metrics_shown"]),
              "latency": ch.latency_bars(arms),
              "loss:finetuned-lora": ch.loss_curve([{"step": s, "loss": 3 / s} for s in range(1, 20)], "loss")}
    return report, charts


def chromium(args, tmp_path, timeout=90):
    profile = tmp_path / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_report_renders_in_headless_chromium(tmp_path):
    report, charts = sample_report()
    html = tmp_path / "report.html"
    html.write_text(render_html(report, charts), encoding="utf-8")
    url = html.resolve().as_uri()

    dom = chromium(["--dump-dom", url], tmp_path).stdout
    assert 'id="recommendation"' in dom
    assert "Use 'finetuned-lora' (finetuned)" in dom and "Fine-tuning paid off" in dom
    assert "'api' was not measured: OPENAI_API_KEY is not set" in dom
    # uncertainty: the caveat leads, the decision is resolved, every quality figure carries its interval
    assert dom.index('id="caveat"') < dom.index('id="recommendation"') and "Small eval set: 8 held-out" in dom
    assert 'id="decision"' in dom and "Resolved" in dom
    ft = report["arms"][2]
    lo, hi = ft["quality_interval"]["low"], ft["quality_interval"]["high"]
    assert f"{ft['quality']:.3f} <span class=\"ci\">[{lo:.2f}–{hi:.2f}]</span>" in dom
    c = report["recommendation"]["comparisons"]["few_shot"]
    assert f"{c['diff']:+.3f}" in dom and f"[{c['low']:+.3f} to {c['high']:+.3f}]" in dom and "worse" in dom
    assert dom.count('class="ci"') >= 3 * 4 + 2  # quality + 3 metrics for 3 arms, check rates, comparisons
    assert "Quality vs cost per 1,000 queries (error bars: 95% intervals)" in dom
    for ident in ("chart-quality-cost", "chart-cost-volume", "chart-metrics", "chart-latency",
                  "chart-loss-finetuned-lora"):
        assert f'id="{ident}"' in dom, ident
    assert dom.count('src="data:image/png;base64,') == 5
    assert "http://" not in dom.replace("http://www.w3.org", "") and "https://" not in dom  # nothing fetched online

    shot = tmp_path / "shot.png"
    chromium([f"--screenshot={shot}", "--window-size=1280,2600", url], tmp_path)
    assert shot.is_file() and shot.stat().st_size > 10_000
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    px = list(img.getdata())
    non_white = sum(1 for p in px if sum(p) < 720) / len(px)
    assert non_white > 0.05, "the page rendered (almost) blank"

    def near(rgb, tol=24):
        return sum(1 for p in px if all(abs(a - b) <= tol for a, b in zip(p, rgb)))

    assert near((0x2E, 0x7D, 0x32)) > 200  # the recommendation box's green border is visible
    assert near((0xC4, 0x4E, 0x52)) > 200  # the fine-tuned arm's red in the charts (images decoded)
    assert near((0xDD, 0x84, 0x52)) > 200  # the latency chart's p95 bars


def test_charts_draw_the_intervals_as_error_bars():
    """The same arms without intervals give different pixels: the error bars are drawn."""
    import io

    from PIL import Image

    with_bars, _ = sample_report(intervals=True)
    plain, _ = sample_report(intervals=False)
    for make in (lambda r: ch.quality_vs_cost(r["arms"], "INR", "checks", r["recommendation"]["arm"]),
                 lambda r: ch.metric_bars(r["arms"], r["metrics_shown"])):
        a = Image.open(io.BytesIO(make(with_bars))).convert("L")
        b = Image.open(io.BytesIO(make(plain))).convert("L")
        assert a.size == b.size
        changed = sum(1 for x, y in zip(a.getdata(), b.getdata()) if abs(x - y) > 60)
        assert changed > 150, changed
