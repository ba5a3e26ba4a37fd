"""Decision verbs: `advise` (prompting, RAG or fine-tuning?), `cost` (what each costs at your volume)
and `estimate` (memory, time and cost of fine-tuning a model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunewise.errors import TunewiseError

console = Console()


# ---------------------------------------------------------------------------------------------
# advise
# ---------------------------------------------------------------------------------------------


def _ask_answers(gpu_names: list[str]) -> dict[str, Any]:
    """The questionnaire (Rich prompts); re-asks until each answer is valid."""
    from rich.prompt import Confirm, FloatPrompt, IntPrompt, Prompt

    from tunewise.advise import GOALS

    console.print("[bold]tunewise advise[/] — a few questions (Enter keeps the default).")
    for key, desc in GOALS.items():
        console.print(f"  [cyan]{key:<10}[/] {desc}")
    try:
        goal = Prompt.ask("What do you need the model to do?", choices=list(GOALS), default="task", show_choices=False)

        def non_negative_int(q: str, default: int) -> int:
            while True:
                v = IntPrompt.ask(q, default=default)
                if v >= 0:
                    return v
                console.print("[red]Please enter 0 or more.[/]")

        examples = non_negative_int("How many labelled examples do you have?", 0)
        queries = non_negative_int("Queries per month?", 10_000)
        latency = non_negative_int("Median latency target in ms (0 = none)?", 0)
        on_prem = Confirm.ask("Must data stay on premise (no external APIs)?", default=False)
        gpu = Prompt.ask(f"GPU you have ({', '.join(gpu_names)}, or none)", default="none")
        count = 1
        if gpu.strip().lower() != "none":
            count = max(1, IntPrompt.ask("How many of them?", default=1))
        currency = Prompt.ask("Currency", choices=["USD", "INR"], default="USD")
        budget = FloatPrompt.ask(f"Monthly budget in {currency} (0 = no limit)", default=0.0)
    except EOFError:
        raise TunewiseError(
            "no answers given and no terminal to ask them on",
            "pass --answers answers.yaml or flags such as --goal style --examples 800 --queries 2000000",
        ) from None
    return {
        "goal": goal, "labelled_examples": examples, "queries_per_month": queries,
        "latency_target_ms": latency or None, "on_premise": on_prem, "gpu": gpu, "gpu_count": count,
        "currency": currency, "budget_per_month": budget or None,
    }


def advise_cmd(
    answers_file: Optional[Path] = typer.Option(None, "--answers", "-a", help="YAML file with the answers (keys: see docs/advise.md)."),
    goal: Optional[str] = typer.Option(None, "--goal", help="style | vocabulary | task | knowledge | general"),
    examples: Optional[int] = typer.Option(None, "--examples", help="Labelled examples you have."),
    queries: Optional[int] = typer.Option(None, "--queries", help="Queries per month."),
    latency_ms: Optional[int] = typer.Option(None, "--latency-ms", help="Median latency target in ms."),
    on_premise: Optional[bool] = typer.Option(None, "--on-premise/--cloud-ok", help="Data must stay on premise."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU you have (e.g. rtx-4090, a100-80gb) or none."),
    gpu_count: Optional[int] = typer.Option(None, "--gpu-count", help="How many of that GPU."),
    gpu_vram: Optional[float] = typer.Option(None, "--gpu-vram", help="VRAM per GPU in GB (GPU not in the table)."),
    budget: Optional[float] = typer.Option(None, "--budget", help="Monthly budget in --currency."),
    currency: Optional[str] = typer.Option(None, "--currency", help="USD or INR."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model to fine-tune: 1b, 3b, 8b, 70b or a model dir."),
    evidence: Optional[Path] = typer.Option(None, "--evidence", help="A `tunewise compare` report.json: measurements win over rules."),
    inr_rate: Optional[float] = typer.Option(None, "--inr-rate", help="INR per USD (default: shipped rate)."),
    gpus_file: Optional[Path] = typer.Option(None, "--gpus", help="YAML overriding the GPU table."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Ask the questions even if some flags are given."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Prompting, RAG, fine-tuning or RAG + fine-tuning? Reasons, costs, and how.

    Asks a few questions, or takes the answers as flags or a YAML file.

    Example: [bold]tunewise advise --goal style --examples 800 --queries 2000000 --on-premise --gpu rtx-4090[/]
    """
    from tunewise.advise import advise, load_answers
    from tunewise.tables import load_gpus

    if inr_rate is not None and inr_rate <= 0:
        raise TunewiseError(f"--inr-rate {inr_rate} must be positive", "e.g. --inr-rate 88")
    gpus = load_gpus(gpus_file)
    flags = {
        "goal": goal, "labelled_examples": examples, "queries_per_month": queries, "latency_target_ms": latency_ms,
        "on_premise": on_premise, "gpu": gpu, "gpu_count": gpu_count, "gpu_vram_gb": gpu_vram,
        "budget_per_month": budget, "currency": currency, "base_model": base_model,
    }
    if interactive or (answers_file is None and goal is None):
        asked = _ask_answers(list(gpus))
        flags = {**asked, **{k: v for k, v in flags.items() if v is not None}}
    answers = load_answers(answers_file, flags)
    result = advise(answers, evidence=evidence, gpus=gpus, inr_per_usd=inr_rate)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, default=str))
        return
    _print_advice(result)


def _print_advice(result) -> None:
    from tunewise.formatting import money

    cur = result.currency
    ev = result.evidence
    by = ("the guide's criteria" if not (ev and ev.option) else "measured evidence" if ev.resolved else
          "measured evidence, unresolved: the cheapest of arms that tie")
    console.print(f"\n[bold green]Recommendation: {result.label}[/] [dim](decided by {by})[/]")
    table = Table(title=f"Options ranked (costs at {result.answers.queries_per_month:,} queries/month, {cur})")
    for col in ("#", "option", "score", "setup", "per month", "per query", "priced as"):
        table.add_column(col)
    for i, o in enumerate(result.ranked, 1):
        table.add_row(str(i), o.label, str(o.score), money(o.setup, cur), money(o.monthly, cur),
                      money(o.per_query, cur), o.cost_option)
    console.print(table)
    for o in result.ranked:
        if not o.reasons:
            continue
        console.print(f"[bold]{o.label}[/]")
        for r in o.reasons:
            sign = "+" if r.points > 0 else ("−" if r.points < 0 else "•")
            console.print(f"  {sign} {escape(str(r))}", highlight=False)
    if result.plan:
        p = result.plan
        console.print("\n[bold]How to fine-tune[/]")
        from tunewise.advise import method_label

        console.print(f"  method: [bold]{method_label(p.method)}[/] of {p.base_model} — about {p.memory_gb:.1f} GB "
                      f"(full {p.fits['full']:.0f} GB, LoRA {p.fits['lora']:.1f} GB, QLoRA {p.fits['qlora']:.1f} GB)", highlight=False)
        console.print(f"  hardware: {p.hardware}", highlight=False)
        console.print(f"  tool: {p.tool}", highlight=False)
        if p.training_hours is not None:
            cost = f", about {money(p.training_cost, cur)}" if p.training_cost is not None else ""
            console.print(f"  training: about {p.training_hours:.1f} h for {result.answers.labelled_examples:,} examples × 512 tokens × 3 epochs{cost}", highlight=False)
        for w in p.why:
            console.print(f"  · {escape(w)}", highlight=False)
    for n in result.notes:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
    console.print("\n[bold]Next[/]")
    for c in result.next_commands:
        console.print(f"  {c}", highlight=False, markup=False)


# ---------------------------------------------------------------------------------------------
# cost
# ---------------------------------------------------------------------------------------------


def cost_cmd(
    queries: Optional[float] = typer.Option(None, "--queries", "-q", help="Queries per month."),
    currency: Optional[str] = typer.Option(None, "--currency", help="USD or INR."),
    inr_rate: Optional[float] = typer.Option(None, "--inr-rate", help="INR per USD (default: shipped, dated rate)."),
    assumptions: Optional[Path] = typer.Option(None, "--assumptions", help="YAML of assumptions (keys: docs/advise.md)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override one assumption: --set output_tokens=500"),
    gpus_file: Optional[Path] = typer.Option(None, "--gpus", help="YAML overriding GPU prices/specs."),
    chart: Path = typer.Option(Path("cost-vs-volume.png"), "--chart", help="Where to write the PNG chart."),
    no_chart: bool = typer.Option(False, "--no-chart", help="Skip the chart."),
    show_all: bool = typer.Option(False, "--all", help="Also show prompting alone and the on-premise RAG/prompting options."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Cost of RAG vs fine-tuning at your volume, with break-even points and a chart.

    Example: [bold]tunewise cost --queries 1000000 --currency INR[/]
    """
    from tunewise.config import parse_overrides
    from tunewise.costs import GUIDE_OPTIONS, compare_costs, load_assumptions, plot_costs
    from tunewise.tables import load_gpus

    ov = parse_overrides(set_)
    if queries is not None:
        ov["queries_per_month"] = queries
    if currency is not None:
        ov["currency"] = currency.strip().upper()
    if inr_rate is not None:
        ov["inr_per_usd"] = inr_rate
    a = load_assumptions(assumptions, ov)
    comp = compare_costs(a, load_gpus(gpus_file))
    png = None if no_chart else plot_costs(comp, chart)
    if as_json:
        d = comp.as_dict()
        d["chart"] = str(png) if png else None
        print(json.dumps(d, indent=2, default=str))
        return
    _print_costs(comp, show_all, GUIDE_OPTIONS)
    if png:
        console.print(f"chart: {png}", highlight=False)


def _print_costs(comp, show_all: bool, guide: tuple[str, ...]) -> None:
    from tunewise.formatting import money, short

    a = comp.assumptions
    cur = comp.currency
    q = a.queries_per_month
    table = Table(title=f"Cost at {q:,.0f} queries/month ({cur})")
    for col in ("approach", "setup", "per query", "per month", "per month incl. setup", "GPU needed"):
        table.add_column(col)
    d = comp.as_dict()
    for o, od in zip(comp.options, d["options"]):
        if not show_all and o.key not in guide:
            continue
        gpu = o.gpu + (f" ×{od['gpus_at_volume']}" if od["gpus_at_volume"] > 1 else "")
        table.add_row(o.label, money(od["setup"], cur), money(od["per_query"], cur),
                      money(od["monthly_running"], cur), money(od["monthly_with_setup"], cur), gpu)
    console.print(table)
    for o in comp.options:
        if show_all or o.key in guide:
            console.print(f"  [dim]{o.label}: {'; '.join(o.notes)}[/]", highlight=False)
    console.print("\n[bold]Break-even volumes[/] (monthly cost incl. setup spread over "
                  f"{a.amortise_months:g} months)")
    labels = {o.key: o.label for o in comp.options}
    if not comp.break_evens:
        console.print("  none between 100 and 1B queries/month")
    for b in sorted(comp.break_evens, key=lambda b: b.queries_per_month):
        console.print(f"  {labels[b.a]} = {labels[b.b]} at {short(b.queries_per_month)}/month; "
                      f"above it {labels[b.cheaper_above]} is cheaper", highlight=False)
    console.print("\n[bold]The guide's rules of thumb, checked with these numbers[/]")
    for r in comp.rules:
        color = "green" if r.verdict == "reproduced" else "red"
        console.print(f"  [{color}]{r.verdict}[/]: {r.rule} — {r.evidence}", highlight=False)
    console.print("\n[dim]Assumptions (override with --set KEY=VALUE or --assumptions FILE): "
                  f"{a.prompt_tokens} prompt + {a.retrieved_context_tokens} retrieved tokens in, {a.output_tokens} out; "
                  f"local GPU {a.local_gpu} at {a.local_utilisation:.0%}; {a.model_size_b:g}B open model; "
                  f"setup {a.rag_setup_hours:g} h (RAG) / {a.finetune_setup_hours:g} h (fine-tune) × "
                  f"{money(a.engineering_usd_per_hour * comp.rate, comp.currency)}/h; {a.train_examples:,} examples × {a.tokens_per_example} tokens × "
                  f"{a.epochs:g} epochs.[/]", highlight=False)
    for k, v in comp.sources.items():
        console.print(f"[dim]{k}: {v}[/]", highlight=False)


# ---------------------------------------------------------------------------------------------
# estimate
# ---------------------------------------------------------------------------------------------


def estimate_cmd(
    model: str = typer.Argument(..., help="A size (1b, 3b, 7b, 8b, 13b, 33b, 65b, 70b, 405b), a run config YAML, "
                                          "a model directory or an embedded model name."),
    method: Optional[str] = typer.Option(None, "--method", help="full, lora or qlora (default: all three, "
                                                                  "or the run config's method)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", min=16, help="Sequence length (default 2048 or the run config's)."),
    micro_batch: Optional[int] = typer.Option(None, "--micro-batch", min=1, help="Micro-batch size (default 1 or the run config's)."),
    micro_batch_tokens: Optional[int] = typer.Option(None, "--micro-batch-tokens", min=64,
                                                     help="Most tokens per forward/backward pass (default: the run config's)."),
    checkpointing: Optional[bool] = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                 help="Recompute activations (default on, or the run config's)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", min=1, help="LoRA rank (default 16 or the run config's)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, bf16, fp16 or fp32 (default auto, or the "
                                            "run config's; auto = bf16 on GPUs and on CPUs with native bf16, else fp32)."),
    longest_example: Optional[int] = typer.Option(None, "--longest-example", min=1,
                                                  help="Tokens of the longest example (`tunewise data check` shows it); "
                                                       "default: the sequence length."),
    pure_bf16: bool = typer.Option(False, "--pure-bf16", help="Full fine-tuning with bf16 weights and optimizer states."),
    examples: Optional[int] = typer.Option(None, "--examples", min=1, help="Training examples (default 10,000, or "
                                           "the rows of the run config's datasets)."),
    tokens_per_example: int = typer.Option(512, "--tokens-per-example", min=1, help="Average tokens per example "
                                           "(also the span attention covers)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", min=0.01, help="Epochs (default 3, or the run config's "
                                           "num_epochs, capped by its max_steps)."),
    utilisation: float = typer.Option(0.35, "--utilisation", help="Assumed fraction of GPU peak FLOPS achieved."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="Only show this GPU."),
    gpus_file: Optional[Path] = typer.Option(None, "--gpus", help="YAML overriding the GPU table."),
    currency: str = typer.Option("USD", "--currency", help="USD or INR."),
    inr_rate: Optional[float] = typer.Option(None, "--inr-rate", help="INR per USD."),
    this_machine: bool = typer.Option(False, "--this-machine", help="Also estimate training here, on this "
                                      "machine's CPU (measures its matmul peak for ~2 s)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Memory, GPUs that fit, training time and rental cost for full, LoRA and QLoRA fine-tuning.

    A run config is estimated as `tunewise train` runs it (every setting it has); flags override it.

    Example: [bold]tunewise estimate 8b --examples 5000 --seq-len 1024[/]
    """
    from tunewise.estimate import GB, cpu_estimates, estimate, load_shape, setup_from
    from tunewise.tables import check_currency, find_gpu, load_gpus, usd_rate

    cur = check_currency(currency)
    rate = usd_rate(cur, inr_rate if cur == "INR" else None)
    flags = {
        "method": method, "sequence_len": seq_len, "micro_batch_size": micro_batch,
        "micro_batch_tokens": micro_batch_tokens, "gradient_checkpointing": checkpointing, "lora_r": lora_r,
        "precision": precision, "longest_example": longest_example, "example_tokens": tokens_per_example,
        "full_weight_dtype": "bf16" if pure_bf16 else None,
    }
    setup = setup_from(model, **flags)
    examples, epochs, plan_notes = training_plan(model, examples, epochs)
    gpus = load_gpus(gpus_file)
    if gpu is not None:
        key = find_gpu(gpu, gpus)
        gpus = {key: gpus[key]}
    est = estimate(model, setup, training_tokens=examples * tokens_per_example * epochs, utilisation=utilisation,
                   gpus=gpus)
    here = []
    if this_machine:  # as `tunewise train` would run here (a run config already is)
        here = cpu_estimates(load_shape(model), setup_from(model, tunewise_train=True, **flags), est.training_tokens,
                             methods=tuple(m.method for m in est.methods))
    if as_json:
        d = est.as_dict()
        d["currency"], d["rate_per_usd"] = cur, rate
        d["examples"], d["tokens_per_example"], d["epochs"] = examples, tokens_per_example, epochs
        d["notes"] = plan_notes + d["notes"]
        if here:
            d["this_machine"] = {c.method: c.as_dict() for c in here}
        print(json.dumps(d, indent=2, default=str))
        return
    from tunewise.formatting import money

    console.print(f"[bold]{est.model}[/]: {est.parameters / 1e9:.2f}B parameters; "
                  f"{est.training_tokens / 1e6:.1f}M training tokens ({examples:,} × {tokens_per_example} × {epochs:.3g}); "
                  f"{setup.describe()}", highlight=False)
    mem = Table(title="Peak training memory (GB)")
    for col in ("method", "weights", "adapters", "gradients", "optimizer", "activations", "logits", "overhead", "total"):
        mem.add_column(col, justify="right")
    for m in est.methods:
        b = m.memory
        mem.add_row(m.method, *(f"{x / GB:.2f}" for x in (b.weights, b.adapters, b.gradients, b.optimizer, b.activations,
                                                            b.logits, b.overhead)), f"[bold]{b.total / GB:.1f}[/]")
    console.print(mem)
    for m in est.methods:
        t = Table(title=f"{m.method}: {m.flops_per_token / 1e9:.1f} GFLOPs/token, "
                        f"{m.memory.trainable_params / 1e6:,.1f}M trainable parameters")
        for col in ("GPU", "VRAM", "fits on one", "GPUs needed", "hours", "cost"):
            t.add_column(col)
        for f in m.fits:
            t.add_row(f.name, f"{f.vram_gb:g} GB", "yes" if f.fits else "no",
                      str(f.gpus_needed) if f.gpus_needed else "—",
                      f"{f.hours:.1f}" if f.hours is not None else "—",
                      money(f.usd * rate, cur) if f.usd is not None else "—")
        console.print(t)
    if here:
        c0 = here[0]
        t = Table(title=f"This machine: {c0.threads} CPU threads, {c0.dtype} matmul peak {c0.peak_flops / 1e9:.0f} "
                        f"GFLOP/s (measured now), utilisation {c0.utilisation:.0%} assumed")
        for col in ("method", "tokens/s", "hours", "peak memory", "this machine's RAM"):
            t.add_column(col, justify="right")
        for c in here:
            fits = "" if c.memory <= c.ram else " [red](does not fit)[/]"
            t.add_row(c.method, f"{c.tokens_per_second:,.1f}", f"{c.hours:,.1f}", f"{c.memory / GB:.1f} GB{fits}",
                      f"{c.ram / GB:.0f} GB")
        console.print(t)
        console.print(f"[dim]Peak memory here: the whole training process in {c0.dtype} ({c0.baseline / GB:.2f} GB of it "
                      f"Python, torch, transformers and PEFT before the model loads; {c0.heap_slack / GB:.2f} GB what the "
                      "allocator keeps of freed temporaries).[/]", highlight=False)
        for c in here:
            if c.memory_examples_fit is not None:
                console.print(f"[dim]{c.method}: {c.memory_examples_fit / GB:.1f} GB if no example is longer than "
                              f"micro_batch_tokens ({setup.micro_batch_tokens}).[/]", highlight=False)
    for n in plan_notes + est.notes:
        console.print(f"[dim]{n}[/]", highlight=False)


def training_plan(model: str, examples: int | None, epochs: float | None) -> tuple[int, float, list[str]]:
    """How many examples and epochs to estimate: the flags; else, for a run config, its datasets'
    rows (less the validation split) and its num_epochs (capped by max_steps); else 10,000 and 3.
    The notes say where each figure came from when it is not the flag's."""
    from tunewise.config import RunConfig, load_config
    from tunewise.errors import TunewiseError

    p = Path(model).expanduser()
    if not (p.is_file() and p.suffix.lower() in (".yaml", ".yml")):
        return examples or 10_000, epochs or 3.0, []
    cfg = load_config(p, schema=RunConfig)
    notes: list[str] = []
    if examples is None:
        from tunewise.data.formats import iter_rows

        try:
            rows = sum(sum(1 for _ in iter_rows(d.path, d.mapping or None)) for d in cfg.datasets)
        except TunewiseError as e:
            rows = 0
            notes.append(f"the run config's data could not be counted ({e.message}): 10,000 examples assumed; "
                         "pass --examples")
        if rows:
            held = 0 if cfg.test_datasets else round(rows * cfg.val_set_size)  # val_set_size is a fraction
            examples = max(1, rows - held)
            notes.append(f"{examples:,} training examples: the rows of the run config's datasets"
                         + (f", less its validation split ({held:,})" if held else ""))
        else:
            if not cfg.datasets:
                notes.append("the run config names no datasets: 10,000 examples assumed; pass --examples")
            examples = 10_000
    if epochs is None:
        epochs = cfg.num_epochs
        if cfg.max_steps:
            per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps
            capped = cfg.max_steps * per_step / examples
            if capped < epochs:
                notes.append(f"max_steps {cfg.max_steps} × {per_step} rows a step ends the run after ≈{capped:.2g} "
                             f"of its {cfg.num_epochs:g} epochs (rows counted as examples; packing puts more in a row)")
                epochs = capped
    return examples, epochs, notes


def register(app: typer.Typer) -> None:
    app.command("advise")(advise_cmd)
    app.command("cost")(cost_cmd)
    app.command("estimate")(estimate_cmd)
