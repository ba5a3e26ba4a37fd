"""`tunewise demo`: for each scenario write its data (generated here, deterministic), check it,
then compare prompting, few-shot, RAG and a LoRA fine-tune trained on the spot, and report.

Budgets are sized so both scenarios finish in under 15 minutes on a 2-core CPU with the embedded
model; ``quick`` shrinks everything to a smoke test whose numbers mean nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunewise.errors import TunewiseError
from tunewise.paths import atomic_write_text

SCENARIOS = ("format", "knowledge")
TITLES = {"format": "Format & voice: legal notices for unpaid rent",
          "knowledge": "Knowledge: Kestrel Loom Textiles policy questions"}

# Held-out notices of the format scenario (the knowledge scenario holds out all 32 of its facts):
# at least 30 per scenario, so that a paired difference of a few checks can be resolved.
EVAL_EXAMPLES = 30

# CPU box price for the local arms: a 2 vCPU cloud VM in an Indian region is about US$0.045/hour.
DEMO_HARDWARE = {"name": "CPU box (2 vCPU, like this machine)", "price_per_hour": 4.0}


@dataclass
class DemoResult:
    scenario: str
    title: str
    report: dict[str, Any]
    html_path: Path
    json_path: Path
    seconds: float


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _train_section(quick: bool, steps: int, lr: float) -> dict[str, Any]:
    if quick:
        return {"sequence_len": 256, "max_steps": 2, "micro_batch_size": 1, "gradient_accumulation_steps": 1,
                "lora_r": 4, "lora_alpha": 8, "learning_rate": 1e-3, "logging_steps": 1, "warmup_ratio": 0.0}
    return {"sequence_len": 512, "max_steps": steps, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
            "lora_r": 16, "lora_alpha": 32, "learning_rate": lr, "lr_scheduler": "cosine",
            "warmup_ratio": 0.1, "logging_steps": 1, "packing": True}


def write_scenario(name: str, root: Path, quick: bool, model: str, engine: str = "auto",
                   precision: str = "auto") -> Path:
    """Write the scenario's data and its compare config under ``root``; returns the config path.
    ``engine`` and ``precision`` go into the config as they are (compare's own defaults: "auto")."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "kind": "compare", "base_model": model, "train_file": str(data / "train.jsonl"),
        "eval_file": str(data / "eval.jsonl"), "primary_metric": "checks", "currency": "INR",
        "hardware": DEMO_HARDWARE, "monthly_queries": 100_000, "quality_tolerance": 0.05, "min_quality": 0.6,
        "output_dir": str(root / "report"), "sample_outputs": 4 if quick else 6,
        # 3 answers per arm timed alone (latency at concurrency 1) instead of compare's default 5:
        # each is a whole answer decoded without batching, the slowest part of an arm on 2 cores.
        # 16 slots instead of 8 gained nothing here (+15 % and -8 % on the few-shot prompts in two
        # runs), so the engine keeps its default.
        "latency_samples": 3,
        "engine": engine, "precision": precision,
    }
    if name == "format":
        from tunewise.demo import notices

        n_train, n_eval = (8, 3) if quick else (60, EVAL_EXAMPLES)
        atomic_write_text(data / "train.jsonl", _jsonl(notices.conversations(n_train, seed=1)))
        atomic_write_text(data / "eval.jsonl", _jsonl(notices.conversations(n_eval, seed=2)))
        cfg = {**common, "name": TITLES[name], "system_prompt": notices.SYSTEM_PROMPT,
               "max_new_tokens": 24 if quick else 200, "checks": notices.CHECKS,
               "arms": [
                   {"type": "prompt"},
                   {"type": "few_shot", "k": 2},
                   {"type": "rag", "name": "rag-examples", "examples_k": 2},
                   # 16 steps (64 notices, ~1 epoch): checks 0.995 at 14 steps, 1.000 at 18 and 30
                   {"type": "finetuned", "name": "finetuned-lora", "train": _train_section(quick, 16, 1e-3)},
               ]}
    elif name == "knowledge":
        from tunewise.demo import knowledge

        docs = root / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        for fname, text in knowledge.DOCS.items():
            atomic_write_text(docs / fname, text)
        train = knowledge.train_rows()
        atomic_write_text(data / "train.jsonl", _jsonl(train[:8] if quick else train))
        atomic_write_text(data / "eval.jsonl", _jsonl(knowledge.eval_rows(3 if quick else None)))  # all 32
        cfg = {**common, "name": TITLES[name], "system_prompt": knowledge.SYSTEM_PROMPT,
               "max_new_tokens": 24 if quick else 64,
               "arms": [
                   {"type": "prompt"},
                   {"type": "few_shot", "k": 3},
                   {"type": "rag", "docs": str(docs), "k": 3},
                   # 20 steps = 10 passes over the 8 packed rows of facts: at 10 or 14 steps the
                   # fine-tune answered 1 of 32 (0.031) against 6 of 32 at 20, too weak to be a fair arm
                   {"type": "finetuned", "name": "finetuned-lora", "train": _train_section(quick, 20, 1e-3)},
               ]}
    else:
        raise TunewiseError(f"unknown scenario '{name}'", f"use one of: {', '.join(SCENARIOS)} or all")
    path = root / "compare.yaml"
    atomic_write_text(path, "# Written by `tunewise demo`; rerun with `tunewise compare` on this file.\n"
                      + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    return path


def check_data(root: Path, model: str, sequence_len: int, console, tolerance: float | None = None) -> None:
    """`tunewise data check` on the scenario's training file (and its eval set, judged at the
    comparison's own ``tolerance``); errors stop the demo."""
    from tunewise.data.check import check_dataset

    rep = check_dataset(root / "data" / "train.jsonl", model=model, sequence_len=sequence_len,
                        eval_path=root / "data" / "eval.jsonl", tolerance=tolerance)
    console.print(f"  data check: {rep.examples} training examples, {rep.n_errors} errors, "
                  f"{rep.n_warnings} warnings", highlight=False)
    for issue in rep.issues[:5]:
        console.print(f"    [yellow]{issue.level}[/] {issue.source}: {issue.message}", highlight=False)
    if not rep.ok:
        raise TunewiseError(f"the generated data in {root / 'data'} failed its check", "report this as a bug")


def summary_markdown(results: list[DemoResult], total_seconds: float | None = None) -> str:
    """The demo's measured tables and recommendations as Markdown (what docs/compare.md quotes)."""
    from tunewise.compare.pricing import billing_text
    from tunewise.formatting import money

    lines: list[str] = []
    if total_seconds is not None:
        lines.append(f"Whole demo: {total_seconds / 60:.1f} minutes wall time.\n")
    for r in results:
        rep = r.report
        cur = rep["currency"]
        lines.append(f"### {r.title}\n")
        lines.append(f"{rep['n_examples']} held-out examples; quality = `{rep['primary_metric']}`; local arms priced at "
                     f"{money(rep['hardware']['price_per_hour'], cur)}/hour ({rep['hardware']['name']}){billing_text(rep['hardware'])}; "
                     f"scenario wall time {r.seconds / 60:.1f} min.\n")
        if rep.get("caveat"):
            lines.append(f"**Caveat.** {rep['caveat']}\n")
        lines.append(f"| arm | quality [95% interval] | p50 s | p95 s | tokens in / out | queries/month one box serves | "
                     f"cost / 1k queries | monthly ({rep['monthly_queries']:,} queries) | training |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for a in rep["arms"]:
            if a.get("status") != "ok":
                lines.append(f"| {a['name']} | not measured: {a.get('skip_reason', '')} | | | | | | | |")
                continue
            cap = (a.get("pricing") or {}).get("queries_per_machine_month")
            tr = a.get("training") or {}
            train = (f"{tr['seconds']:.0f} s, {money(tr.get('cost'), cur)}" if tr.get("seconds") else "–")
            iv = a.get("quality_interval")
            q = "–" if a["quality"] is None else f"{a['quality']:.3f}" + (f" [{iv['low']:.2f}–{iv['high']:.2f}]" if iv else "")
            lines.append(f"| {a['name']} | {q} | {a['latency_p50_s']:.2f} | {a['latency_p95_s']:.2f} | "
                         f"{a['mean_input_tokens']:.0f} / {a['mean_output_tokens']:.0f} | "
                         f"{f'{cap:,.0f}' if cap else '–'} | {money(a.get('cost_per_1k_queries'), cur)} | {money(a.get('monthly_cost'), cur)} | {train} |")
        lines.append("")
        for st in rep["recommendation"]["statements"]:
            lines.append(f"> {st}")
        lines.append("")
    return "\n".join(lines)


def run_demo(out: str | Path, scenario: str = "all", quick: bool = False, model: str | None = None,
             quiet: bool = False, engine: str = "auto", precision: str = "auto") -> list[DemoResult]:
    """Run the demo scenarios into ``out``; returns each scenario's report. ``engine`` and
    ``precision`` are every local arm's (compare's): e.g. "hf" and "fp32" rerun it on the exact
    reference, to check its figures with bench/engine_agreement.py."""
    from rich.console import Console

    from tunewise.compare import load_compare_config, run_compare

    names = SCENARIOS if scenario == "all" else (scenario,)
    if scenario != "all" and scenario not in SCENARIOS:
        raise TunewiseError(f"unknown scenario '{scenario}'", f"use one of: {', '.join(SCENARIOS)} or all")
    model = model or "smollm2-135m"
    console = Console(stderr=True, quiet=quiet)
    out = Path(out)
    results = []
    demo_start = time.perf_counter()
    for i, name in enumerate(names, 1):
        start = time.perf_counter()
        root = out / name
        console.rule(f"[bold]{TITLES[name]}[/] (scenario {i}/{len(names)})")
        cfg_path = write_scenario(name, root, quick, model, engine, precision)
        console.print(f"  data and config written to {root} ({cfg_path.name})", highlight=False)
        cfg = load_compare_config(cfg_path)
        check_data(root, model, 256 if quick else 512, console, cfg.quality_tolerance)
        res = run_compare(cfg, quiet=quiet)
        results.append(DemoResult(name, TITLES[name], res.report, res.html_path, res.json_path,
                                  time.perf_counter() - start))
        console.print(f"  {name} done in {time.perf_counter() - start:.0f} s (scenario {i}/{len(names)}; demo "
                      f"{time.perf_counter() - demo_start:.0f} s so far)", highlight=False)
    atomic_write_text(out / "summary.md", summary_markdown(results, time.perf_counter() - demo_start))
    return results
