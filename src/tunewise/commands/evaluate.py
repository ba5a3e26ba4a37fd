"""Measurement verbs: `eval` (one model on held-out data), `compare` (prompting vs few-shot vs RAG
vs fine-tuning vs an API model, with costs and a recommendation) and `demo` (the main job)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def eval_cmd(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedded name, HF dir, .gguf or run directory."),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Held-out conversations (any training format)."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma list: loss,exact_match,rouge_l,chrf,checks,judge."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Eval config (kind: eval) with checks/judge."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a config key: --set max_new_tokens=64"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", min=1, help="Longest generated answer."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N examples."),
    outputs: Optional[Path] = typer.Option(None, "--outputs", "-o", help="Per-example JSONL (default: eval-outputs.jsonl)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="auto (llama.cpp when installed), hf, hf-batch or llama.cpp."),
    precision: Optional[str] = typer.Option(None, "--precision", help="llama.cpp: f16 (auto), f32, bf16, q8_0; hf: fp32, bf16."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Evaluate a model: loss/perplexity, exact match, ROUGE-L, chrF, task checks, judge, latency.

    Example: [bold]tunewise eval --model runs/notices --data eval.jsonl --metrics rouge_l,chrf,loss[/]
    """
    from tunewise.config import load_config
    from tunewise.errors import TunewiseError
    from tunewise.evaluate import EvalConfig, evaluate

    cfg = load_config(config, set_, schema=EvalConfig) if config else load_config(None, set_, schema=EvalConfig)
    model = model or cfg.model or "smollm2-135m"
    data_path = data or (Path(cfg.eval_file) if cfg.eval_file else None)
    if data_path is None:
        raise TunewiseError("no eval data given", "pass --data EVAL_FILE or set eval_file in --config")
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else cfg.metrics
    out = outputs or Path("eval-outputs.jsonl")
    replaced = out.is_file()  # an earlier run's outputs: said, not silently lost
    rep = evaluate(model, data_path, metrics=chosen, checks=cfg.checks, judge=cfg.judge,
                   system_prompt=cfg.system_prompt, max_new_tokens=max_new_tokens or cfg.max_new_tokens,
                   sequence_len=cfg.sequence_len, limit=limit or cfg.limit, outputs_path=out,
                   data_format=cfg.eval_format, mapping=cfg.mapping, progress=True,  # on stderr: --json's stdout stays JSON
                   engine=engine or cfg.engine, precision=precision or cfg.precision, n_parallel=cfg.n_parallel,
                   latency_samples=cfg.latency_samples, parity_prompts=cfg.parity_prompts,
                   on_parity_failure=cfg.on_parity_failure)
    if as_json:
        print(json.dumps(rep.summary(), indent=2, ensure_ascii=False))
        return
    t = Table(title=f"{model} on {data_path} ({rep.n_examples} examples)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in rep.metrics.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in rep.check_rates.items():
        t.add_row(f"check: {k}", f"{v * 100:.0f}%")
    th = rep.throughput
    t.add_row("engine", rep.engine)
    t.add_row(f"latency p50 / p95 (alone, {th['latency_samples']} requests)",
              f"{rep.latency_p50_s:.2f} s / {rep.latency_p95_s:.2f} s")
    if th.get("throughput_qph"):
        t.add_row(f"throughput ({th['throughput_concurrency']} at once)",
                  f"{th['throughput_tokens_per_s']:.1f} tokens/s · {th['throughput_qph']:,.0f} queries/hour")
    t.add_row("tokens in / out (mean)", f"{rep.mean_input_tokens:.0f} / {rep.mean_output_tokens:.0f}")
    t.add_row("stopped by itself", f"{rep.stopped_rate * 100:.0f}%")
    console.print(t)
    for n in rep.notes:
        loud = "PARITY FAILED" in n
        console.print(f"[{'bold red' if loud else 'yellow'}]note:[/] {n}", highlight=False, soft_wrap=True)
    console.print(f"Per-example outputs: {rep.outputs_path}"
                  + (" (replaced the earlier file there; --outputs names another)" if replaced else ""),
                  highlight=False, soft_wrap=True)


def compare_cmd(
    config: Path = typer.Argument(..., help="Compare config (kind: compare)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a key: --set limit=5"),
    as_json: bool = typer.Option(False, "--json", help="Print report.json's arms and recommendation."),
) -> None:
    """Run prompt / few-shot / RAG / fine-tuned / API arms on one eval set; price them; recommend one.

    Example: [bold]tunewise compare examples/compare-notices.yaml[/]
    """
    from tunewise.compare import run_compare

    res = run_compare(config, set_)  # its console and progress are on stderr: --json's stdout stays JSON
    if as_json:
        r = res.report
        print(json.dumps({"arms": r["arms"], "recommendation": r["recommendation"],
                          "report_html": str(res.html_path)}, indent=2, ensure_ascii=False))
        return
    print_compare_summary(res.report, res.html_path)


def print_compare_summary(report: dict, html_path: Path) -> None:
    from tunewise.formatting import money

    cur = report["currency"]
    rec = report["recommendation"]
    if report.get("caveat"):
        console.print(f"[bold yellow]Caveat:[/] {report['caveat']}", highlight=False)
    t = Table(title=f"{report['name']} — {report['n_examples']} eval examples, quality = {report['primary_metric']}")
    for col in ("arm", "quality [95%]", "vs recommended (paired)", "p50 s", "tokens in/out", "cost / 1k queries",
                "monthly (one-off costs in)" if report.get("pricing") else "monthly"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    pick = rec.get("arm")
    for a in report["arms"]:
        if a.get("status") != "ok":
            t.add_row(a["name"], "skipped", "", "", "", "", a.get("skip_reason", ""))
            continue
        style = "bold green" if a["name"] == pick else None
        iv = a.get("quality_interval")
        q = "–" if a["quality"] is None else f"{a['quality']:.3f}" + (f" [{iv['low']:.2f}–{iv['high']:.2f}]" if iv else "")
        c = (rec.get("comparisons") or {}).get(a["name"]) or {}
        vs = ("recommended" if a["name"] == pick else
              f"{c['diff']:+.3f} [{c['low']:+.2f}, {c['high']:+.2f}] "
              f"{'tie' if c['status'] == 'indistinguishable' else c['status']}" if "diff" in c else "–")
        t.add_row(a["name"], q, vs, f"{a['latency_p50_s']:.2f}", f"{a['mean_input_tokens']:.0f}/{a['mean_output_tokens']:.0f}",
                  money(a.get("cost_per_1k_queries"), cur), money(a.get("monthly_cost"), cur), style=style)
    console.print(t)
    print_engine_lines(report)
    from tunewise.compare.pricing import pricing_lines

    for line in pricing_lines(report):  # how each arm was priced, then the formulas and assumptions
        console.print(f"[dim]cost:[/] {line}", highlight=False, soft_wrap=True)
    if rec.get("decision") in ("clear", "tie"):
        console.print("[green]Resolved:[/] the recommended arm beat every other arm." if rec["decision"] == "clear"
                      else "[yellow]Unresolved (a tie):[/] the tied arms could not be told apart on this eval set.")
    for s in rec["statements"]:
        console.print(f"[bold]→[/] {s}", highlight=False)
    console.print(f"Report: {html_path}", highlight=False, soft_wrap=True)


def print_engine_lines(report: dict) -> None:
    """The engine of the local arms, the parity gate per model, latency alone vs throughput."""
    eng = report.get("engine")
    if not eng:
        return
    conc = f", {eng['concurrency']} at once" if (eng.get("concurrency") or 1) > 1 else ""
    built = f" (compiled for {eng['built_for']})" if eng.get("built_for") else ""
    console.print(f"Engine of the local arms: [bold]{eng['name']} {eng['precision']}[/]{conc}{built}", highlight=False)
    if eng.get("built_for"):
        from tunewise.infer.llamacpp import native_build_hint

        hint = native_build_hint(built_for=eng["built_for"])
        if hint:
            console.print(f"  [dim]{hint}[/]", highlight=False, soft_wrap=True)
    for ref, p in (eng.get("parity") or {}).items():
        style = "green" if p["passed"] else "bold red"
        console.print(f"  [{style}]parity {'passed' if p['passed'] else 'FAILED'}[/]: {ref}: {p['identical']:.0%} "
                      f"identical (min {p['tolerance']['min_identical']:.0%}), common prefix {p['mean_prefix']:.0%} "
                      f"on {p['n']} eval prompts", highlight=False, soft_wrap=True)
    if eng.get("fell_back"):
        console.print("  [bold red]a fast engine failed its parity check: every local arm answered with the "
                      "reference engine[/]", highlight=False)
    for a in report["arms"]:
        if a.get("status") == "ok" and a.get("throughput_qph"):
            console.print(f"  {a['name']}: p50 {a['latency_p50_s']:.2f} s alone ({a['latency_samples']} timed) · "
                          f"{a['throughput_tokens_per_s']:,.1f} tokens/s, {a['throughput_qph']:,.0f} queries/hour at "
                          f"{a['throughput_concurrency']} at once", highlight=False)


def demo_cmd(
    out: Path = typer.Option(Path("tunewise-demo"), "--out", "-o", help="Where data, runs and reports go."),
    scenario: str = typer.Option("all", "--scenario", help="format, knowledge or all."),
    quick: bool = typer.Option(False, "--quick", help="Tiny budget (smoke test; numbers are not meaningful)."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the embedded smollm2-135m)."),
    engine: str = typer.Option("auto", "--engine", help="Every local arm's engine: auto (llama.cpp when installed), "
                               "hf (the exact reference), hf-batch or llama.cpp."),
    precision: str = typer.Option("auto", "--precision", help="Every local arm's precision: llama.cpp f16 (auto), "
                                  "f32, bf16, q8_0; hf auto, fp32, bf16."),
) -> None:
    """The main job: two scenarios (legal notices, company policy Q&A), each trained, compared, reported.

    Example: [bold]tunewise demo --out demo-out[/]   (on the exact reference: [bold]tunewise demo --engine hf --precision fp32 --out demo-ref[/])
    """
    from tunewise.demo import run_demo

    results = run_demo(out, scenario=scenario, quick=quick, model=model, engine=engine, precision=precision)
    for r in results:
        console.rule(f"[bold]{r.title}")
        print_compare_summary(r.report, r.html_path)
    console.rule("[bold]Recommendations")
    for r in results:
        console.print(f"[bold]{r.title}[/]: {r.report['recommendation']['statements'][0]}", highlight=False)
        for s in r.report["recommendation"]["statements"][1:]:
            console.print(f"   {s}", highlight=False)
        console.print(f"   report: {r.html_path}", highlight=False, soft_wrap=True)
    console.print(f"Measured tables of every scenario: {out / 'summary.md'}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)
    app.command("demo")(demo_cmd)
