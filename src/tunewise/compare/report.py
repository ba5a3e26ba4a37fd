"""report.html: one self-contained page (inline CSS, charts embedded as base64 PNG) that reads
offline, built from the same dict as report.json."""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from tunewise.compare.pricing import assumptions_text, billing_text, how_priced
from tunewise.formatting import money

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em} .sub{color:#666;margin-top:0}
.rec{border-left:6px solid #2e7d32;background:#eef7ee;padding:1em 1.2em;margin:1.2em 0;font-size:1.05em}
.rec.bad{border-color:#c62828;background:#fbeeee}
table{border-collapse:collapse;width:100%;margin:1em 0;font-size:.92em}
th,td{border:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.pick td{background:#f3fbf3;font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:1em} .charts figure{margin:0;flex:1 1 480px}
.charts img{max-width:100%;border:1px solid #eee}
figcaption{color:#666;font-size:.85em}
pre{white-space:pre-wrap;margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
.note{color:#8a6d3b} .wide{overflow-x:auto} small{color:#777}
.caveat{border-left:6px solid #b26a00;background:#fff6e5;padding:.8em 1.2em;margin:1.2em 0}
.ci{color:#666;font-size:.85em;white-space:nowrap} .tie{color:#b26a00;font-weight:600} .clear{color:#2e7d32;font-weight:600}
"""


def _img(png: bytes | None, alt: str, ident: str) -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{ident}"><img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(alt)}</figcaption></figure>")


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    return "–" if x is None else fmt.format(x)


def _ci(iv: dict | list | None) -> str:
    """A 95% interval as a small bracket after the figure."""
    if not iv:
        return ""
    lo, hi = (iv["low"], iv["high"]) if isinstance(iv, dict) else iv
    return f" <span class='ci'>[{lo:.2f}–{hi:.2f}]</span>"


def _versus(a: dict[str, Any], rec: dict[str, Any]) -> str:
    """The arm's paired difference to the recommended arm, its interval and what it means."""
    if a["name"] == rec.get("arm"):
        return "recommended"
    c = (rec.get("comparisons") or {}).get(a["name"])
    if not c or "diff" not in c:
        return "–"
    need = f"; ~{c['examples_needed']:,} examples to separate" if c.get("examples_needed") else ""
    return (f"{c['diff']:+.3f} <span class='ci'>[{c['low']:+.3f} to {c['high']:+.3f}], p = {c['p_value']:.2g}</span>"
            f"<br><small>{escape(c['status'])}{need}</small>")


def _one_off(a: dict[str, Any], cur: str) -> str:
    """The arm's one-off costs cell: total, then what it is made of."""
    one = a.get("one_off")
    if not one:
        tr = a.get("training") or {}
        return money(tr.get("cost"), cur) if tr else "–"
    if not one["total"]:
        return money(0, cur)
    parts = []
    if one.get("training"):
        parts.append(f"training {money(one['training'], cur)}")
    if one.get("labelled_examples"):
        parts.append(f"{one['labelled_examples']:,} examples reviewed {money(one['data_prep'], cur)}")
    return f"{money(one['total'], cur)}<br><small>{escape(' + '.join(parts))}</small>"


def pricing_html(report: dict[str, Any]) -> str:
    """How each arm was priced and the assumptions of the monthly figure (section id='pricing')."""
    cur = report["currency"]
    pa = report.get("pricing")
    arms = [a for a in report["arms"] if a.get("status") == "ok"]
    h = ["<h3 id='pricing'>How each arm was priced</h3>"]
    if pa and any(a.get("pricing") for a in arms):
        h.append("<table id='pricing-arms'><tr><th>arm</th><th>serving priced from</th><th>shared prompt prefix</th>"
                 "<th>basis</th><th>one-off costs</th><th>monthly: running + one-off ÷ months</th></tr>")
        for a in arms:
            pr = a.get("pricing") or {}
            one = a.get("one_off") or {}
            run = a.get("monthly_running_cost")
            monthly = (f"{money(run, cur)} + {money(one.get('total'), cur)} ÷ {one.get('months', 0):g} = "
                       f"{money(a.get('monthly_cost'), cur)}" if run is not None and one else money(a.get("monthly_cost"), cur))
            h.append(f"<tr><td>{escape(a['name'])}</td><td>{escape(how_priced(a))}</td>"
                     f"<td class='num'>≈{pr.get('shared_prefix_tokens') or 0:,.0f} tokens</td>"
                     f"<td><small>{escape(a.get('cost_basis') or '')}</small></td><td class='num'>{_one_off(a, cur)}</td>"
                     f"<td class='num'>{monthly}</td></tr>")
        h.append("</table>")
        h.append(f"<p id='pricing-assumptions'><small>{escape(assumptions_text(report))} 1 USD = "
                 f"{report['usd_rate']:g} {escape(cur)}.</small></p>")
    else:
        h.append(f"<p><small>Cost of local arms = measured seconds per query × "
                 f"{money(report['hardware']['price_per_hour'], cur)}/hour ÷ 3600 (one query at a time). API arms: "
                 f"token counts × prices from genai-prices. 1 USD = {report['usd_rate']:g} {escape(cur)}.</small></p>")
    return "".join(h)


def _engine_section(report: dict[str, Any]) -> str:
    """Which engine answered each arm, at what precision, the parity gate's result per local model,
    and latency (alone) against throughput (at concurrency)."""
    eng = report.get("engine")
    if not eng:
        return ""
    h = [f"<section id='engine'><h3>Inference</h3><p>Local arms: <strong>{escape(str(eng['name']))} "
         f"{escape(str(eng['precision']))}</strong> (asked for: {escape(str(eng['requested']))})"]
    if eng.get("concurrency"):
        h.append(f", up to {eng['concurrency']} requests decoded together")
    h.append(".</p>")
    for ref, p in (eng.get("parity") or {}).items():
        ok = p.get("passed")
        h.append(f"<p class='{'clear' if ok else 'tie'}'>Parity {'passed' if ok else 'FAILED'}: {escape(ref)} — "
                 f"{p['fast']} vs {p['reference']} on {p['n']} eval prompts: {p['identical']:.0%} identical "
                 f"(min {p['tolerance']['min_identical']:.0%}), common prefix {p['mean_prefix']:.0%} "
                 f"(min {p['tolerance']['min_prefix']:.0%}).</p>")
    if eng.get("fell_back"):
        h.append("<p class='tie'>A fast engine failed its parity check: every local arm answered with the "
                 "reference engine instead.</p>")
    local = [a for a in report["arms"] if a.get("status") == "ok" and a.get("throughput_qph")]
    if local:
        h.append("<table id='throughput'><tr><th>arm</th><th>engine</th><th>latency p50 / p95 s "
                 "<small>(alone)</small></th><th>requests timed alone</th><th>throughput tokens/s</th>"
                 "<th>queries/hour</th><th>at concurrency</th></tr>")
        for a in local:
            h.append(f"<tr><td>{escape(a['name'])}</td><td>{escape(a['engine'])} {escape(a['precision'])}</td>"
                     f"<td class='num'>{a['latency_p50_s']:.2f} / {a['latency_p95_s']:.2f}</td>"
                     f"<td class='num'>{a['latency_samples']}</td>"
                     f"<td class='num'>{_num(a.get('throughput_tokens_per_s'), '{:,.1f}')}</td>"
                     f"<td class='num'>{a['throughput_qph']:,.0f}</td><td class='num'>{a['throughput_concurrency']}</td></tr>")
        h.append("</table><p><small>Latency: requests answered one at a time, alone on the engine (what one user "
                 "waits). Throughput: the other eval inputs submitted at once; generated tokens and answered "
                 "queries per second of wall time.</small></p>")
    h.append("</section>")
    return "".join(h)


def render_html(report: dict[str, Any], charts: dict[str, bytes | None]) -> str:
    cur = report["currency"]
    rec = report["recommendation"]
    arms = report["arms"]
    pm = report["primary_metric"]
    metric_names = report["metrics_shown"]
    bad = rec.get("arm") is None or any("not fit for use" in s for s in rec.get("statements", []))
    h: list[str] = []
    h.append("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>")
    h.append(f"<title>tunewise compare — {escape(report['name'])}</title><style>{CSS}</style></head><body>")
    h.append(f"<h1>{escape(report['name'])}</h1>")
    h.append(f"<p class='sub'>{report['n_examples']} eval examples from <code>{escape(report['eval_file'])}</code>"
             f" · base model <code>{escape(report['base_model'])}</code> · local arms priced on "
             f"{escape(report['hardware']['name'])} at {money(report['hardware']['price_per_hour'], cur)}/hour"
             + billing_text(report["hardware"])
             + f" · {report['monthly_queries']:,} queries/month · {escape(report['created'])}</p>")

    if report.get("caveat"):
        h.append(f"<section id='caveat' class='caveat'><strong>Caveat.</strong> {escape(report['caveat'])}</section>")
    h.append(f"<section id='recommendation' class='rec{' bad' if bad else ''}'><h2>Recommendation</h2>")
    if rec.get("decision") in ("clear", "tie"):
        status = ("<span class='clear'>Resolved</span>: the recommended arm beat every other arm"
                  if rec["decision"] == "clear" else
                  "<span class='tie'>Unresolved (a tie)</span>: the arms below could not be told apart on this eval set")
        h.append(f"<p id='decision'>{status}.</p>")
    for s in rec.get("statements", []):
        h.append(f"<p>{escape(s)}</p>")
    h.append(f"<p><small>Rule: {escape(rec['rule'])}.</small></p></section>")

    h.append("<h2>Results</h2><div class='wide'><table id='results'><tr><th>arm</th><th>kind</th>"
             f"<th>quality ({escape(pm)}) <small>[95% interval]</small></th><th>vs recommended <small>(paired)</small></th>")
    for m in metric_names:
        h.append(f"<th>{escape(m)}</th>")
    h.append("<th>p50 s</th><th>p95 s</th><th>tokens in / out</th><th>stopped</th>"
             f"<th>cost / 1k queries</th><th>monthly cost{' <small>(one-off costs spread in)</small>' if report.get('pricing') else ''}</th>"
             "<th>one-off costs</th></tr>")
    for a in arms:
        pick = " class='pick'" if a["name"] == rec.get("arm") else ""
        if a.get("status") != "ok":
            h.append(f"<tr><td>{escape(a['name'])}</td><td>{escape(a['kind'])}</td>"
                     f"<td colspan='{10 + len(metric_names)}' class='note'>not measured: "
                     f"{escape(a.get('skip_reason', ''))}</td></tr>")
            continue
        h.append(f"<tr{pick}><td>{escape(a['name'])}</td><td>{escape(a['kind'])}</td>"
                 f"<td class='num'>{_num(a['quality'])}{_ci(a.get('quality_interval'))}</td>"
                 f"<td class='num'>{_versus(a, rec)}</td>")
        for m in metric_names:
            h.append(f"<td class='num'>{_num(a['metrics'].get(m))}{_ci((a.get('metric_intervals') or {}).get(m))}</td>")
        h.append(f"<td class='num'>{a['latency_p50_s']:.2f}</td><td class='num'>{a['latency_p95_s']:.2f}</td>"
                 f"<td class='num'>{a['mean_input_tokens']:.0f} / {a['mean_output_tokens']:.0f}</td>"
                 f"<td class='num'>{a['stopped_rate'] * 100:.0f}%</td>"
                 f"<td class='num'>{money(a.get('cost_per_1k_queries'), cur)}</td>"
                 f"<td class='num'>{money(a.get('monthly_cost'), cur)}</td>"
                 f"<td class='num'>{_one_off(a, cur)}</td></tr>")
    h.append("</table></div>")
    h.append("<p><small>Intervals: 95%, per arm Wilson score (pass/fail scores) or Student t (graded scores); "
             "paired differences to the recommended arm use the same examples, an exact sign-flip test and the "
             "interval from inverting it. An arm beat another only when that interval excludes 0 and the "
             f"difference exceeds the tolerance of {report.get('quality_tolerance', 0):.2f}. See docs/compare.md."
             "</small></p>")
    h.append(pricing_html(report))

    h.append(_engine_section(report))

    checks = [a for a in arms if a.get("check_rates")]
    if checks:
        names = list(checks[0]["check_rates"])
        h.append("<h3>Task checks (pass rate)</h3><table id='checks'><tr><th>check</th>")
        h.extend(f"<th>{escape(a['name'])}</th>" for a in checks)
        h.append("</tr>")
        for n in names:
            h.append(f"<tr><td>{escape(n)}</td>")
            h.extend(f"<td class='num'>{a['check_rates'].get(n, 0) * 100:.0f}%"
                     f"{_ci((a.get('check_rate_intervals') or {}).get(n))}</td>" for a in checks)
            h.append("</tr>")
        h.append("</table>")

    h.append("<h2>Charts</h2><div class='charts'>")
    cost_axis = (f"monthly cost ({report['pricing']['monthly_queries']:,} queries, one-off costs spread over "
                 f"{report['pricing']['amortise_months']:g} months)" if report.get("pricing") else "cost per 1,000 queries")
    h.append(_img(charts.get("quality_vs_cost"), f"Quality vs {cost_axis} (error bars: 95% intervals)",
                  "chart-quality-cost"))
    steps = ("local arms pay whole machines kept on all month, so they step; " if report["hardware"].get("always_on")
             else "local arms billed by the hours used; ")
    h.append(_img(charts.get("cost_by_volume"), f"Monthly cost by queries per month, one-off costs spread in ({steps}"
                  "grey dashed line: this report's volume)", "chart-cost-volume"))
    h.append(_img(charts.get("metrics"), "Quality metrics per arm (error bars: 95% intervals)", "chart-metrics"))
    h.append(_img(charts.get("latency"), "Latency per query (p50, p95)", "chart-latency"))
    for name, png in charts.items():
        if name.startswith("loss:"):
            h.append(_img(png, f"Training loss — {name[5:]}", f"chart-loss-{name[5:]}"))
    h.append("</div>")

    notes = [(a["name"], n) for a in arms for n in a.get("notes", [])] + [("", n) for n in report.get("notes", [])]
    if notes:
        h.append("<h2>Notes</h2><ul>")
        h.extend(f"<li class='note'>{escape(arm + ': ' if arm else '')}{escape(n)}</li>" for arm, n in notes)
        h.append("</ul>")

    samples = report.get("samples", [])
    shown = [a for a in arms if a.get("status") == "ok"]
    if samples and shown:
        h.append("<h2>Sample outputs</h2><div class='wide'><table id='samples'><tr><th>question</th><th>reference</th>")
        h.extend(f"<th>{escape(a['name'])}</th>" for a in shown)
        h.append("</tr>")
        for s in samples:
            h.append(f"<tr><td><pre>{escape(s['question'])}</pre></td><td><pre>{escape(s.get('reference') or '')}</pre></td>")
            h.extend(f"<td><pre>{escape(s['outputs'].get(a['name'], ''))}</pre></td>" for a in shown)
            h.append("</tr>")
        h.append("</table></div>")
    h.append(f"<p><small>Generated by tunewise {escape(report.get('tunewise_version', ''))}. Per-example outputs: "
             f"<code>arms/&lt;arm&gt;/outputs.jsonl</code> beside this file.</small></p></body></html>")
    return "".join(h)
