"""`tunewise compare`: run every arm on the same eval set with the same metrics, price each one,
recommend by the documented rule, and write report.json + a self-contained report.html."""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.compare import charts as ch
from tunewise.compare.arms import ApiArm as ApiRunner, Arm, check_run_dir, demos_from_examples
from tunewise.compare.config import ARM_TYPES, CompareConfig
from tunewise.compare.recommend import recommend
from tunewise.compare.report import render_html
from tunewise.compare.pricing import price_arm, pricing_assumptions
from tunewise.compare.speed import OtherLoad, decode_parity, load_warnings
from tunewise.compare.stats import arm_uncertainty, eval_size_check
from tunewise.costs import local_cost_per_1k
from tunewise.errors import TunewiseError
from tunewise.evaluate import (
    EvalExample,
    build_report,
    default_metrics,
    load_eval_set,
    response_loss,
    score_answers,
    tokens_per_second_text,
    write_outputs,
)
from tunewise.formatting import money
from tunewise.paths import atomic_write_bytes, atomic_write_text
from tunewise.tables import usd_rate
from tunewise.train.run_dir import is_finished, read_summary


@dataclass
class CompareResult:
    report: dict[str, Any]
    output_dir: Path
    json_path: Path
    html_path: Path


def load_compare_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                        data: dict | None = None) -> CompareConfig:
    """Read and validate a compare config; an unknown arm type is named with the allowed ones."""
    from tunewise.config import apply_overrides, parse_overrides, read_yaml, validate_config

    raw = data if data is not None else read_yaml(path) if path else {}
    where = str(path) if path else "compare config"
    if isinstance(overrides, list):
        raw = apply_overrides(raw, parse_overrides(overrides))
    elif overrides:
        raw = apply_overrides(raw, overrides)
    if raw.get("kind") != "compare":
        raise TunewiseError(f"{where}: kind must be 'compare' (got {raw.get('kind')!r})",
                            "add `kind: compare` at the top of the file")
    for i, arm in enumerate(raw.get("arms") or []):
        t = arm.get("type") if isinstance(arm, dict) else None
        if t not in ARM_TYPES:
            raise TunewiseError(f"{where}: arms[{i}].type {t!r} is not an arm type",
                                f"use one of: {', '.join(ARM_TYPES)}")
    cfg, problems = validate_config(raw, CompareConfig)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TunewiseError(f"{where} has {len(problems)} problem(s):\n{lines}", "fix the keys above")
    return cfg


def _primary(cfg: CompareConfig, metrics: list[str]) -> str:
    if cfg.primary_metric != "auto":
        return cfg.primary_metric
    if "checks" in metrics:
        return "checks"
    for m in ("rouge_l", "chrf", "judge", "exact_match"):
        if m in metrics:
            return m
    raise TunewiseError("no quality metric to compare arms on",
                        "give the eval file reference answers, declare checks, or configure a judge")


def _console(quiet: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet)


class _Models:
    """Loads each model reference once and frees it when asked."""

    def __init__(self):
        self.cache: dict[str, tuple[Any, Any]] = {}

    def get(self, ref: str):
        if ref not in self.cache:
            from tunewise.models import load_model, load_tokenizer

            # A fine-tuned run is served as it would be deployed: adapter merged into the weights
            # (same outputs up to rounding, no per-token adapter matmuls).
            self.cache[ref] = (load_model(ref, merge_adapter=True), load_tokenizer(ref))
        return self.cache[ref]

    def drop(self, ref: str) -> None:
        self.cache.pop(ref, None)
        gc.collect()


def _train_arm(cfg: CompareConfig, arm, out: Path, con) -> Path:
    """Train the arm's run config (datasets default to train_file); reuse a finished run."""
    from tunewise.config import DatasetSpec

    rc = arm.train
    updates: dict[str, Any] = {}
    if not rc.datasets:
        if not cfg.train_file:
            raise TunewiseError(f"arm '{arm.name}': its train section has no datasets and there is no train_file",
                                "set train_file at the top level or datasets in the train section")
        updates["datasets"] = [DatasetSpec(path=cfg.train_file, format=cfg.train_format)]
    if "output_dir" not in rc.model_fields_set:
        updates["output_dir"] = str(out / f"train-{arm.name}")
    if "base_model" not in rc.model_fields_set:
        updates["base_model"] = cfg.base_model
    rc = rc.model_copy(update=updates)
    run_dir = Path(rc.output_dir)
    if is_finished(run_dir):  # LoRA, QLoRA or full: the same test `tunewise train` passes
        con.print(f"[dim]{arm.name}: reusing the finished run in {run_dir}[/]")
        return run_dir
    from tunewise.train import train

    con.print(f"[bold]{arm.name}[/]: training {rc.method} on {', '.join(d.path for d in rc.datasets)} → {run_dir}")
    inside = out.resolve() in run_dir.resolve().parents
    res = train(rc, progress=not con.quiet, overwrite=inside)
    return Path(res.output_dir)


def _prepare(cfg: CompareConfig, out: Path, con) -> tuple[list[EvalExample], dict[str, list], dict[str, str]]:
    """Check every input before anything slow runs: eval file, example files, run dirs, docs."""
    examples = load_eval_set(cfg.eval_file, cfg.eval_format, cfg.eval_mapping, cfg.limit)
    if not any(e.reference is not None for e in examples) and cfg.checks.is_empty() and cfg.judge is None:
        raise TunewiseError(f"eval file {cfg.eval_file}: no example has a reference answer",
                            "end each eval conversation with the expected assistant answer, or declare checks")
    pools: dict[str, list] = {}
    skips: dict[str, str] = {}
    for i, arm in enumerate(cfg.arms):
        where = f"arms[{i}] ({arm.name})"
        if arm.type in ("few_shot", "rag"):
            src = getattr(arm, "examples_file", None) or cfg.train_file
            needs = arm.type == "few_shot" or arm.examples_k > 0
            if needs:
                if not src:
                    raise TunewiseError(f"{where}: needs training examples but neither examples_file nor train_file is set",
                                        "set train_file at the top level (or examples_file on the arm)")
                if src not in pools:
                    label = "examples_file" if getattr(arm, "examples_file", None) else "train_file"
                    pools[src] = demos_from_examples(load_eval_set(src, cfg.train_format, what=label))
                if not pools[src]:
                    raise TunewiseError(f"{src}: no example has an assistant answer to demonstrate",
                                        "use a file of complete conversations")
        if arm.type == "rag" and arm.docs and not Path(arm.docs).is_dir():
            raise TunewiseError(f"{where}: docs folder {arm.docs} does not exist", "check the path")
        if arm.type == "finetuned" and arm.run is not None:
            check_run_dir(arm.run, where)
        if arm.type == "finetuned" and arm.train is not None:
            paths = [d.path for d in arm.train.datasets] or ([cfg.train_file] if cfg.train_file else [])
            if not paths:
                raise TunewiseError(f"{where}: its train section has no datasets and there is no train_file",
                                    "set train_file at the top level or datasets in the train section")
            for path in paths:
                if not Path(path).is_file():
                    raise TunewiseError(f"{where}: training data {path} does not exist", "check the path")
        if arm.type == "api" and not os.environ.get(arm.api_key_env):
            skips[arm.name] = f"environment variable {arm.api_key_env} is not set (no API calls made)"
    return examples, pools, skips


def run_compare(config: CompareConfig | str | Path, overrides: list[str] | None = None,
                quiet: bool = False) -> CompareResult:
    """Run the comparison described by ``config`` and write the reports into its output_dir."""
    cfg = config if isinstance(config, CompareConfig) else load_compare_config(config, overrides)
    con = _console(quiet)
    if not quiet:
        from tunewise.progress import check_settings

        check_settings()  # a bad TUNEWISE_PROGRESS* value fails now, not after the first arm
    out = Path(cfg.output_dir)
    examples, pools, skips = _prepare(cfg, out, con)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(cfg.metrics) if cfg.metrics else default_metrics(examples, cfg.checks, cfg.judge)
    primary = _primary(cfg, metrics)
    rate = usd_rate(cfg.currency, cfg.usd_rate)
    models = _Models()
    arm_reports: list[dict[str, Any]] = []
    all_results: dict[str, list] = {}
    loss_curves: dict[str, list] = {}
    losses: dict[str, dict | None] = {}

    for arm_no, arm_cfg in enumerate(cfg.arms, 1):
        name, kind = arm_cfg.name, arm_cfg.type
        step = f"arm {arm_no}/{len(cfg.arms)}"
        rep: dict[str, Any] = {"name": name, "kind": kind, "status": "ok", "notes": [], "training": None}
        if name in skips:
            rep.update(status="skipped", skip_reason=skips[name], quality=None, model=getattr(arm_cfg, "model", None))
            con.print(f"[yellow]{name} ({step}): skipped — {skips[name]}[/]")
            arm_reports.append(rep)
            continue
        system = arm_cfg.system_prompt if arm_cfg.system_prompt is not None else (
            None if kind == "finetuned" else cfg.system_prompt)
        if kind == "api":
            runner: Arm = ApiRunner(name=name, kind=kind, model_ref=arm_cfg.model, system_prompt=system,
                                    base_url=arm_cfg.base_url, api_key_env=arm_cfg.api_key_env,
                                    timeout_s=arm_cfg.timeout_s, max_new_tokens=cfg.max_new_tokens)
        else:
            ref = cfg.base_model
            if kind == "finetuned":
                run_dir = Path(arm_cfg.run) if arm_cfg.run else _train_arm(cfg, arm_cfg, out, con)
                ref = str(run_dir)
                info = read_summary(run_dir)
                loss_curves[name] = info["loss_curve"]
                s = info.get("summary") or {}
                secs = s.get("seconds")
                rep["training"] = {
                    "run_dir": str(run_dir), "seconds": secs, "steps": s.get("steps"),
                    "final_loss": s.get("final_loss"), "eval_loss": s.get("eval_loss"),
                    "cost": local_cost_per_1k(secs, cfg.hardware.price_per_hour) / 1000.0 if secs else None,
                }
            runner = Arm(name=name, kind=kind, model_ref=ref, system_prompt=system)
            if kind == "few_shot":
                src = arm_cfg.examples_file or cfg.train_file
                runner.demos = pools[src][: arm_cfg.k]
            if kind == "rag":
                runner.k, runner.mode, runner.examples_k = arm_cfg.k, arm_cfg.mode, arm_cfg.examples_k
                if arm_cfg.examples_k:
                    runner.pool = pools[arm_cfg.examples_file or cfg.train_file]
                if arm_cfg.docs:
                    from tunewise.rag import RagIndex

                    idx_dir = Path(arm_cfg.index_dir) if arm_cfg.index_dir else out / f"index-{name}"
                    runner.index = RagIndex.build(arm_cfg.docs, index_dir=idx_dir, progress=not con.quiet)
        rep["model"] = runner.model_ref
        con.print(f"[bold]{name}[/] ({kind}, {step}): answering {len(examples)} questions with {runner.model_ref}")
        with OtherLoad() as load:
            answers, extra_lat, extras = _answer_all(runner, examples, cfg, models, con)
        if kind != "api":
            # what load_warnings and decode_parity read: other processes' CPU while the arm answered,
            # the model's size and its decoding rate (after the first token)
            rep["other_cpu_load"] = load.cores
            mdl, _ = models.get(runner.model_ref)
            rep["model_params"] = sum(p.numel() for p in mdl.parameters())
            rates = [r for r in (getattr(a, "decode_tokens_per_s", None) for a in answers) if r]
            rep["decode_tokens_per_s"] = statistics.median(rates) if rates else None
        results, summary, rates, notes = score_answers(examples, answers, metrics, cfg.checks, cfg.judge, extra_lat)
        for r, x in zip(results, extras):
            r.extra = x
        if "loss" in metrics and kind != "api":
            # Loss is a property of the model on the eval conversations (not of the prompt), so the
            # arms sharing the base model share one computation.
            if runner.model_ref not in losses:
                mdl, tok = models.get(runner.model_ref)
                losses[runner.model_ref] = response_loss(mdl, tok, examples)
            if losses[runner.model_ref]:
                summary.update(losses[runner.model_ref])
        if kind == "finetuned":
            models.drop(runner.model_ref)
        er = build_report(runner.model_ref, results, summary, rates, notes)
        arm_dir = out / "arms" / name
        write_outputs(results, arm_dir / "outputs.jsonl")
        all_results[name] = results
        spq = er.mean_latency_s
        rep.update({
            "quality": summary.get(primary),
            "metrics": {k: v for k, v in summary.items()},
            "check_rates": rates,
            "latency_p50_s": er.latency_p50_s, "latency_p95_s": er.latency_p95_s,
            "seconds_per_query": spq,
            "mean_input_tokens": er.mean_input_tokens, "mean_output_tokens": er.mean_output_tokens,
            "stopped_rate": er.stopped_rate,
            "outputs_file": str((arm_dir / "outputs.jsonl").relative_to(out)),
        })
        rep.update(arm_uncertainty(results, primary))  # per-example scores and 95% intervals
        rep["notes"].extend(notes)
        price_arm(rep, arm_cfg, runner, [runner.build(ex)[0] for ex in examples], answers, cfg, rate)
        c1k = rep["cost_per_1k_queries"]
        q, iv = rep["quality"], rep["quality_interval"]
        ci = f" [95% {iv['low']:.2f}–{iv['high']:.2f}]" if iv else ""
        con.print(f"  {primary} {q:.3f}{ci} · p50 {er.latency_p50_s:.2f} s · "
                  f"{money(c1k, cfg.currency)} per 1k queries" if q is not None else f"  no {primary} measured")
        arm_reports.append(rep)

    speed_notes = load_warnings(arm_reports) + decode_parity(arm_reports)
    for note in speed_notes:
        con.print(f"[yellow]warning: {note}[/]")
    size = eval_size_check(len(examples), cfg.quality_tolerance)  # the caveat report.json/html lead with
    rec = recommend(arm_reports, cfg.quality_tolerance, cfg.currency, cfg.min_quality, primary)
    shown = [m for m in ("checks", "checks_all", "rouge_l", "chrf", "exact_match", "judge")
             if any(m in a.get("metrics", {}) for a in arm_reports)]
    report = {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "tunewise_version": _version(),
        "base_model": cfg.base_model,
        "eval_file": cfg.eval_file,
        "n_examples": len(examples),
        "primary_metric": primary,
        "metrics": metrics,
        "metrics_shown": shown,
        "currency": cfg.currency,
        "usd_rate": rate,
        "hardware": cfg.hardware.model_dump(),
        "monthly_queries": cfg.monthly_queries,
        "pricing": pricing_assumptions(cfg),
        "quality_tolerance": cfg.quality_tolerance,
        "eval_size": size,
        "caveat": size["message"],
        "arms": arm_reports,
        "recommendation": rec,
        "samples": _samples(examples, all_results, cfg.sample_outputs),
        "notes": speed_notes,
        "config": cfg.model_dump(mode="json"),
    }
    charts = {
        "quality_vs_cost": ch.quality_vs_cost(arm_reports, cfg.currency, primary, rec.get("arm")),
        "metrics": ch.metric_bars(arm_reports, shown) if shown else None,
        "latency": ch.latency_bars(arm_reports) if any(a["status"] == "ok" for a in arm_reports) else None,
    }
    for name, curve in loss_curves.items():
        charts[f"loss:{name}"] = ch.loss_curve(curve, f"Training loss — {name}")
    for key, png in charts.items():
        if png:
            atomic_write_bytes(out / "charts" / (key.replace(":", "-") + ".png"), png)
    json_path, html_path = out / "report.json", out / "report.html"
    atomic_write_text(json_path, json.dumps(report, indent=2, ensure_ascii=False))
    atomic_write_text(html_path, render_html(report, charts))
    return CompareResult(report, out, json_path, html_path)


def _answer_all(runner: Arm, examples: list[EvalExample], cfg: CompareConfig, models: _Models, con):
    answers, extra_lat, extras = [], [], []
    mdl = tok = None
    if not isinstance(runner, ApiRunner):
        mdl, tok = models.get(runner.model_ref)
    from tunewise.generate import generate

    # Warm-up outside the timing: the first call loads the embedder / embeds the example pool and
    # runs the model's first forward and decoding passes, which a served model has long done.
    first, _ = runner.build(examples[0])
    if mdl is not None:
        generate(mdl, tok, first, max_new_tokens=8)
    from tunewise.progress import progress

    with progress(f"  {runner.name}", len(examples), unit="question", console=con,
                  transient=True) as prog:
        produced, spent = 0, 0.0
        for ex in examples:
            t0 = time.perf_counter()
            messages, extra = runner.build(ex)
            build_s = time.perf_counter() - t0
            if isinstance(runner, ApiRunner):
                ans = runner.call(messages)
            else:
                ans = generate(mdl, tok, messages, max_new_tokens=cfg.max_new_tokens)
            answers.append(ans)
            extra_lat.append(build_s)
            extras.append(extra)
            produced += ans.output_tokens
            spent += ans.seconds
            prog.update(advance=1, tps=tokens_per_second_text(produced, spent))
    return answers, extra_lat, extras


def _samples(examples: list[EvalExample], results: dict[str, list], n: int) -> list[dict]:
    out = []
    for i, ex in enumerate(examples[:n]):
        out.append({"question": ex.question, "reference": ex.reference,
                    "outputs": {name: rs[i].output for name, rs in results.items() if i < len(rs)}})
    return out


def _version() -> str:
    try:
        from tunewise import __version__

        return __version__
    except ImportError:
        return ""
