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
    write_outputs,
)
from tunewise.infer.parity import spread_prompts
from tunewise.infer.run import Checked, concurrency_of, ctx_for, open_checked, progress_callback, resolve_engine, run_all
from tunewise.infer.types import Request
from tunewise.formatting import money
from tunewise.paths import atomic_write_bytes, atomic_write_text
from tunewise.progress import progress
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


def _setup_arm(cfg: CompareConfig, arm_cfg, out: Path, con, pools: dict[str, list], rep: dict[str, Any],
               loss_curves: dict[str, list]) -> Arm:
    """The arm ready to build its prompts: its system prompt, demonstrations, index, trained run."""
    name, kind = arm_cfg.name, arm_cfg.type
    system = arm_cfg.system_prompt if arm_cfg.system_prompt is not None else (
        None if kind == "finetuned" else cfg.system_prompt)
    if kind == "api":
        return ApiRunner(name=name, kind=kind, model_ref=arm_cfg.model, system_prompt=system,
                         base_url=arm_cfg.base_url, api_key_env=arm_cfg.api_key_env, timeout_s=arm_cfg.timeout_s)
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
    return runner


@dataclass
class _Built:
    """An arm's prompts for every eval example, with the time building each took (retrieval)."""

    messages: list[list[dict]]
    seconds: list[float]
    extras: list[dict[str, Any]]


def _build_all(runner: Arm, examples: list[EvalExample]) -> _Built:
    # Warm-up outside the timing: the first call loads the embedder and embeds the example pool,
    # which a served RAG system has long done.
    runner.build(examples[0])
    built = _Built([], [], [])
    for ex in examples:
        t0 = time.perf_counter()
        messages, extra = runner.build(ex)
        built.seconds.append(time.perf_counter() - t0)
        built.messages.append(messages)
        built.extras.append(extra)
    return built


def plan_precision(cfg: CompareConfig) -> str:
    """The one precision every local arm will run at, settled before any training: the engine and
    the precision must fit each other, and a base model given as a GGUF (which runs as it is) must
    hold the weights every other local model is converted to. ``auto`` becomes that GGUF's type when
    a fine-tuned arm is converted beside it. Raises a TunewiseError naming the key otherwise."""
    from tunewise.infer.llamacpp import GGUF_TYPES, gguf_file_of, gguf_file_type, gguf_precision
    from tunewise.models import DTYPE_NAMES

    arms = [a for a in cfg.arms if a.type != "api"]
    name = resolve_engine(cfg.engine)
    requested = cfg.precision.lower()
    if not arms:
        return cfg.precision
    if name != "llama.cpp":  # hf, hf-batch: torch dtypes
        if requested != "auto" and requested not in DTYPE_NAMES:
            raise TunewiseError(
                f"precision: {cfg.precision} is a llama.cpp GGUF type, but the local arms run on engine {name}",
                f"use one of: auto, {', '.join(DTYPE_NAMES)} with engine {name}, or set engine: llama.cpp")
        return cfg.precision
    wanted = gguf_precision(requested)
    if wanted != "auto" and wanted not in GGUF_TYPES:
        raise TunewiseError(f"precision: {cfg.precision} is not a type llama.cpp runs here",
                            f"use one of: auto, {', '.join(GGUF_TYPES)} (or fp32, fp16, bf16)")
    file = gguf_file_of(cfg.base_model) if any(a.type != "finetuned" for a in arms) else None
    if file is None:
        return wanted
    kind = gguf_file_type(file)
    converted = any(a.type == "finetuned" for a in arms)  # its run is converted to GGUF beside the base
    if wanted != "auto" and wanted != kind:
        raise TunewiseError(
            f"base_model {file} holds {kind} weights, but precision: {cfg.precision} asks for {wanted}: a GGUF "
            f"runs as it is, so its arms would not run at the precision of the others",
            f"set precision: auto (or {kind}) to run every local arm at {kind}, or give base_model as the "
            f"HF model, which tunewise converts to {wanted}")
    if converted and kind not in GGUF_TYPES:
        raise TunewiseError(
            f"base_model {file} holds {kind} weights, which tunewise cannot convert the fine-tuned arm's model "
            f"to: the arms would run at different precisions (all arms of one comparison run at one)",
            f"give base_model as the HF model (every local model is then converted to one type, f16 by "
            f"default), or a GGUF of one of: {', '.join(GGUF_TYPES)}")
    return kind if converted else wanted


class _LocalEngines:
    """One engine per local model, every one of the same kind and precision (all llama.cpp f16, or
    all the HF reference), each fast one checked against the reference first (the parity gate).

    When any model fails the gate and ``on_parity_failure`` is "fallback", every local arm answers
    with the reference, so that no arm of the comparison runs on another engine than the others.
    """

    def __init__(self, cfg: CompareConfig, con, precision: str | None = None):
        self.cfg, self.con = cfg, con
        self.name = resolve_engine(cfg.engine)
        self.precision = precision or plan_precision(cfg)
        self.checked: dict[str, Checked] = {}
        self.refs: dict[str, Any] = {}
        self.params: dict[str, int] = {}
        self.losses: dict[str, dict | None] = {}
        self.notes: list[str] = []
        self.fell_back = False

    def _reference(self, ref: str):
        """The HF engine for ``ref``: the exact reference (fp32, adapter unmerged) beside a fast
        engine; as deployed (adapter merged, the configured precision) when hf answers itself."""
        from tunewise.infer.hf import HFEngine
        from tunewise.models import load_model, load_tokenizer, resolve_dtype

        if ref not in self.refs:
            if self.name == "hf":
                dtype = resolve_dtype(None if self.precision == "auto" else self.precision)
                self.refs[ref] = HFEngine.from_loaded(load_model(ref, dtype=dtype, merge_adapter=True),
                                                      load_tokenizer(ref), ref)
            else:
                self.refs[ref] = HFEngine(ref, precision="fp32")
        return self.refs[ref]

    def gate(self, models: dict[str, list[list[list[dict]]]], examples: list[EvalExample], metrics: list[str]) -> None:
        """Open every local model's engine; ``models`` maps each to the prompts of each arm that uses
        it (the parity check takes ``parity_prompts`` of them in turn from each arm,
        :func:`~tunewise.infer.parity.spread_prompts`). Loss is computed here by the reference."""
        cfg = self.cfg
        for ref, per_arm in models.items():
            prompts = [m for arm_prompts in per_arm for m in arm_prompts]
            checked_prompts = spread_prompts(per_arm, cfg.parity_prompts)
            hf = self._reference(ref)
            # the model's own size (a reference with its LoRA adapter unmerged also holds the adapter's)
            self.params[ref] = sum(p.numel() for n, p in hf.hf_model.named_parameters() if "lora_" not in n)
            if "loss" in metrics:  # a property of the model on the eval conversations, not of the prompt
                self.losses[ref] = response_loss(hf.hf_model, hf.tokenizer, examples)
            ctx = ctx_for(hf.tokenizer, prompts, cfg.max_new_tokens) if self.name != "hf" else None
            if self.name != "hf":
                arms = f" of its {len(per_arm)} arms" if len(per_arm) > 1 else ""
                self.con.print(f"[dim]parity check: {ref} on {self.name} against the HF reference "
                               f"({len(checked_prompts)} eval prompts{arms}, taken in turn)…[/]")
            checked = open_checked(ref, self.name, self.precision, hf,
                                   [Request(m, max_tokens=cfg.max_new_tokens) for m in checked_prompts],
                                   cfg.on_parity_failure, n_parallel=cfg.n_parallel, ctx_per_request=ctx)
            self.checked[ref] = checked
            for note in checked.notes:
                self.con.print(f"[bold red]{note}[/]" if checked.fell_back else f"  {note}", highlight=False)
            self.notes.extend(n for n in checked.notes if checked.parity is not None)
        self.fell_back = any(c.fell_back for c in self.checked.values())
        kinds = {ref: c.engine.precision for ref, c in self.checked.items()}
        if not self.fell_back and len(set(kinds.values())) > 1:  # plan_precision should have made this impossible
            for c in self.checked.values():
                c.engine.close()
            raise TunewiseError("the local arms' models would run at different precisions: " + ", ".join(
                f"{ref} {kind}" for ref, kind in kinds.items()),
                "set precision to one type every model can run at (all arms of one comparison run at one)")
        for ref, c in self.checked.items():
            if self.fell_back and c.engine is not self.refs[ref]:
                c.engine.close()
                c.engine = self.refs[ref]
            elif c.engine is not self.refs[ref]:
                self.refs.pop(ref).close()  # the fast engine answers: free the reference's memory
        if self.fell_back:
            note = ("every local arm answers with the reference engine (HF fp32), because a fast engine failed its "
                    "parity check: all arms of one comparison run on the same engine and precision")
            self.notes.append(note)
            self.con.print(f"[bold red]{note}[/]", highlight=False)

    def engine(self, ref: str):
        return self.checked[ref].engine

    def release(self, ref: str) -> None:
        """Close ``ref``'s engine (its last arm has answered)."""
        self.checked[ref].engine.close()
        self.refs.pop(ref, None)
        gc.collect()

    def summary(self) -> dict[str, Any]:
        """What report.json records about the engines."""
        first = next(iter(self.checked.values()), None)
        eng = first.engine if first else None
        built_for = None
        if eng is not None and eng.name == "llama.cpp":
            from tunewise.infer.llamacpp import build_isa

            built_for = build_isa()  # which vector instructions its kernels use (PyPI's wheel: AVX2)
        return {"requested": self.cfg.engine, "name": eng.name if eng else self.name, "built_for": built_for,
                "precision": eng.precision if eng else self.precision,
                "concurrency": concurrency_of(eng) if eng else None, "fell_back": self.fell_back,
                "parity": {ref: c.parity.to_dict() for ref, c in self.checked.items() if c.parity is not None},
                "on_parity_failure": self.cfg.on_parity_failure}


def run_compare(config: CompareConfig | str | Path, overrides: list[str] | None = None,
                quiet: bool = False) -> CompareResult:
    """Run the comparison described by ``config`` and write the reports into its output_dir."""
    cfg = config if isinstance(config, CompareConfig) else load_compare_config(config, overrides)
    con = _console(quiet)
    if not quiet:
        from tunewise.progress import check_settings

        check_settings()  # a bad TUNEWISE_PROGRESS* value fails now, not after the first arm
    out = Path(cfg.output_dir)
    precision = plan_precision(cfg)  # engine and precision fit, and every local arm runs at one: before any training
    examples, pools, skips = _prepare(cfg, out, con)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(cfg.metrics) if cfg.metrics else default_metrics(examples, cfg.checks, cfg.judge)
    primary = _primary(cfg, metrics)
    rate = usd_rate(cfg.currency, cfg.usd_rate)
    arm_reports: list[dict[str, Any]] = []
    all_results: dict[str, list] = {}
    loss_curves: dict[str, list] = {}

    # 1. every arm ready (fine-tuned ones trained) and its prompts built, before any engine opens
    runners: dict[str, Arm] = {}
    built: dict[str, _Built] = {}
    for arm_cfg in cfg.arms:
        rep: dict[str, Any] = {"name": arm_cfg.name, "kind": arm_cfg.type, "status": "ok", "notes": [],
                               "training": None}
        arm_reports.append(rep)
        if arm_cfg.name in skips:
            continue
        runners[arm_cfg.name] = _setup_arm(cfg, arm_cfg, out, con, pools, rep, loss_curves)
        built[arm_cfg.name] = _build_all(runners[arm_cfg.name], examples)

    # 2. one engine per local model, all of one kind and precision, checked against the reference
    local_models: dict[str, list[list[list[dict]]]] = {}  # model -> its arms' prompts
    for name, runner in runners.items():
        if runner.kind != "api":
            local_models.setdefault(runner.model_ref, []).append(built[name].messages)
    engines = _LocalEngines(cfg, con, precision)
    engines.gate(local_models, examples, metrics)
    last_use = {runner.model_ref: name for name, runner in runners.items() if runner.kind != "api"}

    # 3. each arm answers every eval input at once, then is scored and priced
    for arm_no, (arm_cfg, rep) in enumerate(zip(cfg.arms, arm_reports), 1):
        name, kind = arm_cfg.name, arm_cfg.type
        step = f"arm {arm_no}/{len(cfg.arms)}"
        if name in skips:
            rep.update(status="skipped", skip_reason=skips[name], quality=None, model=getattr(arm_cfg, "model", None))
            con.print(f"[yellow]{name} ({step}): skipped — {skips[name]}[/]")
            continue
        runner, b = runners[name], built[name]
        rep["model"] = runner.model_ref
        requests = [Request(m, max_tokens=cfg.max_new_tokens) for m in b.messages]
        if kind == "api":
            from tunewise.infer.openai import OpenAIEngine

            engine = OpenAIEngine(arm_cfg.model, base_url=arm_cfg.base_url, api_key_env=arm_cfg.api_key_env,
                                  timeout_s=arm_cfg.timeout_s)
        else:
            engine = engines.engine(runner.model_ref)
        rep.update(engine=engine.name, precision=engine.precision)
        con.print(f"[bold]{name}[/] ({kind}, {step}): answering {len(examples)} questions with {runner.model_ref} "
                  f"({engine.name} {engine.precision})")
        try:
            with OtherLoad() as load, progress(f"  {name}", len(examples), unit="question", console=con,
                                               transient=True) as prog:
                answers, stats = run_all(engine, requests, cfg.latency_samples if kind != "api" else 0,
                                         on_result=progress_callback(prog))
        finally:
            if kind == "api":
                engine.close()
            elif last_use[runner.model_ref] == name:
                engines.release(runner.model_ref)
        if kind != "api":
            # what load_warnings and decode_parity read: other processes' CPU while the arm answered,
            # the model's size and its decoding rate (after the first token, answered alone)
            rep["other_cpu_load"] = load.cores
            rep["model_params"] = engines.params[runner.model_ref]
            rates = [r for r in (answers[i].decode_tokens_per_s for i in stats.sequential) if r]
            rep["decode_tokens_per_s"] = statistics.median(rates) if rates else None
            rep.update(stats.to_dict())
        results, summary, rates, notes = score_answers(examples, answers, metrics, cfg.checks, cfg.judge, b.seconds)
        for r, x in zip(results, b.extras):
            r.extra = x
        if "loss" in metrics and kind != "api" and engines.losses.get(runner.model_ref):
            summary.update(engines.losses[runner.model_ref])
        er = build_report(runner.model_ref, results, summary, rates, notes,
                          latency_of=stats.sequential if kind != "api" else None)
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
        price_arm(rep, arm_cfg, runner, b.messages, answers, cfg, rate, alone=stats.sequential)
        q, iv = rep["quality"], rep["quality_interval"]
        ci = f" [95% {iv['low']:.2f}–{iv['high']:.2f}]" if iv else ""
        speed = (f" · {rep['throughput_qph']:,.0f} queries/hour at {rep['throughput_concurrency']} at once"
                 if rep.get("throughput_qph") else "")
        con.print(f"  {primary} {q:.3f}{ci} · p50 {er.latency_p50_s:.2f} s{speed} · "
                  f"{money(rep['cost_per_1k_queries'], cfg.currency)} per 1k queries" if q is not None else f"  no {primary} measured")

    speed_notes = engines.notes + load_warnings(arm_reports) + decode_parity(arm_reports)
    for note in speed_notes[len(engines.notes):]:
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
        "engine": engines.summary(),
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
        "cost_by_volume": ch.cost_by_volume(arm_reports, cfg.currency, cfg.monthly_queries, rec.get("arm")),
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
