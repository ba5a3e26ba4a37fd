"""`tunewise data`: check, show, convert, split, dedupe and fill dataset files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

data_app = typer.Typer(help="Check, show, convert, split, dedupe and fill dataset files; synthesise pairs from "
                       "documents and review them.\n\nExample: [bold]tunewise data check train.jsonl --goal task[/]",
                       no_args_is_help=True)

_FORMAT_HELP = "Row format: auto, alpaca, sharegpt, openai, messages, text."
_MAP_HELP = "Rename columns: --map instruction=question,output=answer (CSV/Parquet or unusual keys)."
_MODEL_HELP = "Model whose tokenizer and chat template count tokens (embedded name, HF dir, run dir)."


def _template_arg(value: Optional[str]) -> Optional[str]:
    """--chat-template: a name (chatml) or a file holding a Jinja template."""
    if value is None or value == "chatml":
        return value
    p = Path(value)
    if p.is_file():
        return p.read_text(encoding="utf-8")
    from tunewise.errors import TunewiseError

    raise TunewiseError(f"--chat-template {value!r} is neither 'chatml' nor a file", "pass chatml or a .jinja file")


def _tokenizer(model: str):
    from tunewise.models import load_tokenizer

    return load_tokenizer(model)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def _progress():
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rows]:,} rows · {task.fields[rate]:,.0f} rows/s"),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=True)


@data_app.command("check")
def check_cmd(
    file: Path = typer.Argument(..., help="Dataset file (.json, .jsonl, .txt, .csv, .parquet)."),
    goal: Optional[str] = typer.Option(None, "--goal", help="style, task or domain: compare the size with the guide's minimum."),
    model: str = typer.Option("smollm2-135m", "--model", help=_MODEL_HELP),
    sequence_len: int = typer.Option(2048, "--sequence-len", min=1, help="Training sequence length in tokens."),
    target: str = typer.Option("local", "--target", help="local, or openai for OpenAI's fine-tuning checks and cost."),
    eval_file: Optional[Path] = typer.Option(None, "--eval", help="Eval file: warn about examples also in training, "
                                             "and when it is too small to measure differences of --tolerance."),
    tolerance: float = typer.Option(0.02, "--tolerance", min=0.001, max=1.0,
                                    help="With --eval: smallest quality difference that matters (compare's quality_tolerance)."),
    train_on: str = typer.Option("assistant", "--train-on", help="assistant, last_assistant or all."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="chatml or a Jinja file (default: the model's)."),
    price_per_mtok: float = typer.Option(3.0, "--price-per-mtok", help="USD per million training tokens (default: gpt-4o-mini)."),
    show: int = typer.Option(10, "--show", min=0, help="Issues listed per kind (all are in --json)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable report."),
) -> None:
    """Find every problem in a dataset (with file and line) and count its tokens as training will.

    Exit status 1 when there are errors.

    Example: [bold]tunewise data check train.jsonl --goal task --sequence-len 2048[/]
    """
    import time

    from tunewise.data.check import check_dataset
    from tunewise.data.formats import parse_mapping

    tok = _tokenizer(model)
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"checking {file.name}", total=1.0, rows=0, rate=0.0)

        def on_progress(fraction: float, rows: int) -> None:
            rate = rows / max(1e-9, time.perf_counter() - start)
            progress.update(task, completed=fraction, rows=rows, rate=rate)

        report = check_dataset(file, model=model, tokenizer=tok, sequence_len=sequence_len, train_on=train_on,
                               goal=goal, target=target, eval_path=eval_file, format=format,
                               mapping=parse_mapping(mapping), chat_template=_template_arg(chat_template),
                               price_per_mtok=price_per_mtok, progress=on_progress, tolerance=tolerance)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report, show)
    if not report.ok:
        raise typer.Exit(1)


def print_report(report, show: int = 10) -> None:
    s = report.stats
    if report.eval_size and report.eval_size["small"]:  # the caveat leads
        console.print(f"[bold yellow]Caveat:[/] {report.eval_size['message']}", highlight=False, soft_wrap=True)
    console.print(f"[bold]{report.file}[/] · format [cyan]{report.format or '?'}[/] · {report.rows:,} row{'s' if report.rows != 1 else ''}, "
                  f"{report.examples:,} parsed"
                  + (f", {report.error_examples:,} with errors" if report.error_examples else "")
                  + f" · tokens by [cyan]{report.model}[/] · sequence_len {report.sequence_len}",
                  highlight=False, soft_wrap=True)
    for level, colour in (("error", "red"), ("warning", "yellow")):
        codes = [k.split(":", 1)[1] for k in report.issue_counts if k.startswith(level + ":")]
        for code in codes:
            count = report.issue_counts[f"{level}:{code}"]
            console.print(f"[bold {colour}]{level}[/] [{colour}]{code}[/]: {count:,} example{'s' if count != 1 else ''}", highlight=False)
            listed = [i for i in report.issues if i.level == level and i.code == code][:show]
            for i in listed:
                console.print(f"  {i.source}: {i.message}", highlight=False, soft_wrap=True)
            if count > len(listed):
                console.print(f"  [dim]… and {count - len(listed):,} more (--show N or --json)[/]", highlight=False)
    table = Table(title="Tokens", title_justify="left")
    for col in ("", "p50", "p95", "max", "total"):
        table.add_column(col, justify="right" if col else "left")

    def row(name: str, d: dict) -> None:
        if d.get("n"):
            table.add_row(name, _fmt(d["p50"]), _fmt(d["p95"]), _fmt(d["max"]), _fmt(d["total"]))

    row("per example", s.get("tokens_per_example", {}))
    row("trainable per example", s.get("trainable_tokens_per_example", {}))
    for role, d in s.get("tokens_per_role", {}).items():
        row(f"  {role} content", d)
    console.print(table)
    over = s.get("over_sequence_len", {})
    dups = s.get("duplicates", {})
    console.print(f"tokens per epoch: [bold]{s.get('tokens_per_epoch', 0):,}[/] "
                  f"({s.get('trainable_tokens_per_epoch', 0):,} trained) · over sequence_len: {over.get('examples', 0):,} "
                  f"({over.get('tokens_lost', 0):,} tokens cut) · duplicates: {dups.get('exact', 0):,} exact, "
                  f"{dups.get('near', 0):,} near" + (f" · eval overlap: {dups.get('eval_overlap', 0):,}" if report.eval_file else "")
                  + (f" · training skips: {s['skipped_by_training']:,}" if s.get("skipped_by_training") else ""),
                  highlight=False, soft_wrap=True)
    if report.goal_assessment:
        g = report.goal_assessment
        colour = {"below": "yellow", "within": "green", "above": "green"}[g["verdict"]]
        console.print(f"[{colour}]size:[/] {g['message']}", highlight=False, soft_wrap=True)
    if report.openai:
        o = report.openai
        console.print(
            f"[bold]OpenAI:[/] {o['examples']:,} examples · format errors: {o['format_errors'] or 'none'} · "
            f"no system message: {o['n_missing_system']:,} · no user message: {o['n_missing_user']:,} · "
            f"messages p50 {_fmt(o['messages_per_example']['p50'])} · tokens p50/p95/max "
            f"{_fmt(o['tokens_per_example']['p50'])}/{_fmt(o['tokens_per_example']['p95'])}/{_fmt(o['tokens_per_example']['max'])} · "
            f"over {o['token_limit']:,} tokens: {o['n_over_token_limit']:,}", highlight=False, soft_wrap=True)
        console.print(
            f"  billing: {o['epochs']} epochs × {o['billable_tokens_per_epoch']:,} tokens = {o['charged_tokens']:,} "
            f"charged tokens ≈ [bold]${o['estimated_cost_usd']:,.2f}[/] at ${o['price_per_mtok_usd']}/M "
            f"[dim](counted with the {report.model} tokenizer)[/]", highlight=False, soft_wrap=True)
    verdict = "[green]✓ no errors[/]" if report.ok else f"[red]✗ {report.n_errors:,} error(s)[/]"
    console.print(f"{verdict}, {report.n_warnings:,} warning(s) · {report.seconds:.1f}s", highlight=False)


@data_app.command("show")
def show_cmd(
    file: Path = typer.Argument(..., help="Dataset file."),
    model: str = typer.Option("smollm2-135m", "--model", help=_MODEL_HELP),
    n: int = typer.Option(3, "-n", min=1, help="Number of examples."),
    start: int = typer.Option(0, "--start", min=0, help="Skip this many examples first."),
    sequence_len: int = typer.Option(2048, "--sequence-len", min=1, help="Tokens past this are shown as cut."),
    train_on: str = typer.Option("assistant", "--train-on", help="assistant, last_assistant or all."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    chat_template: Optional[str] = typer.Option(None, "--chat-template", help="chatml or a Jinja file."),
) -> None:
    """Show examples exactly as training sees them.

    Trained tokens green, masked ones dim, special tokens (the end-of-turn token) in reverse video,
    tokens cut by sequence_len struck through.

    Example: [bold]tunewise data show train.jsonl --model smollm2-135m -n 2[/]
    """
    from tunewise.data.formats import parse_mapping
    from tunewise.data.show import show_examples

    tok = _tokenizer(model)
    examples = show_examples(file, tok, n=n, sequence_len=sequence_len, train_on=train_on,
                             chat_template=_template_arg(chat_template), format=format,
                             mapping=parse_mapping(mapping), start=start)
    legend = Text.assemble(("trained", "bold green"), " · ", ("masked", "dim"), " · ",
                           ("<special>", "reverse bold green"), " trained special · ", ("<special>", "reverse dim"),
                           " masked special · ", ("cut", "strike red"), " past sequence_len")
    console.print(legend)
    for ex in examples:
        cut = " · [red]truncated[/]" if ex.truncated else ""
        console.rule(f"{ex.source} · {ex.tokens} tokens, {ex.trainable} trained{cut}")
        text = Text()
        for seg in ex.segments:
            style = "bold green" if seg.trained else "dim"
            if seg.special:
                style = "reverse " + style
            if seg.cut:
                style = "strike red"
            text.append(seg.text, style=style)
        console.print(text, highlight=False, soft_wrap=True)


@data_app.command("convert")
def convert_cmd(
    inp: Path = typer.Argument(..., help="Input dataset file."),
    out: Path = typer.Argument(..., help="Output file: .jsonl (one row per line) or .json (array)."),
    to: str = typer.Option(..., "--to", help="alpaca, sharegpt, openai or messages (LLaMA-Factory v1)."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (never the input)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Convert between formats; lists exactly what the target format cannot hold.

    Example: [bold]tunewise data convert alpaca.json train.openai.jsonl --to openai[/]
    """
    from tunewise.data.convert import convert_file
    from tunewise.data.formats import parse_mapping

    res = convert_file(inp, out, to, format=format, mapping=parse_mapping(mapping), force=force)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(f"[green]✓[/] wrote {res.rows_out:,} of {res.rows_in:,} examples to [bold]{res.output}[/] ({to})",
                  highlight=False, soft_wrap=True)
    if res.dropped:
        kinds: dict[str, int] = {}
        for _, what in res.dropped:
            kinds[what] = kinds.get(what, 0) + 1
        console.print(f"[yellow]not carried over ({len(res.dropped):,}):[/]", highlight=False)
        for what, count in kinds.items():
            sources = [s for s, w in res.dropped if w == what]
            shown = ", ".join(sources[:5]) + (" …" if len(sources) > 5 else "")
            console.print(f"  {count:,} × {what} [dim]({shown})[/]", highlight=False, soft_wrap=True)
    else:
        console.print("nothing dropped: the conversion is lossless", highlight=False)


@data_app.command("split")
def split_cmd(
    inp: Path = typer.Argument(..., help="Dataset file."),
    eval: float = typer.Option(0.1, "--eval", help="Eval share (0.1 = 10%) or row count (e.g. 200)."),
    seed: int = typer.Option(0, "--seed", help="Same file + seed = same split."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Where to write (default: next to IN)."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    force: bool = typer.Option(False, "--force", help="Replace existing split files."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Split into IN-stem.train.jsonl and IN-stem.eval.jsonl, deterministically.

    Duplicates (exact and near) always land on the same side.

    Example: [bold]tunewise data split train.jsonl --eval 0.1 --seed 0[/]
    """
    from tunewise.data.formats import parse_mapping
    from tunewise.data.ops import split_file

    res = split_file(inp, eval=eval, seed=seed, out_dir=out_dir, format=format, mapping=parse_mapping(mapping), force=force)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2))
        return
    def rows(n: int) -> str:
        return f"{n:,} row{'' if n == 1 else 's'}"

    console.print(f"[green]✓[/] {rows(res.train_rows)} → [bold]{res.train_path}[/]\n"
                  f"[green]✓[/] {rows(res.eval_rows)} → [bold]{res.eval_path}[/]\n"
                  f"{res.duplicate_groups:,} duplicate group(s) kept on one side", highlight=False, soft_wrap=True)


@data_app.command("dedupe")
def dedupe_cmd(
    inp: Path = typer.Argument(..., help="Dataset file."),
    out: Path = typer.Argument(..., help="Output file (.jsonl or .json)."),
    threshold: float = typer.Option(0.8, "--threshold", min=0.0, max=1.0, help="Near-duplicate similarity (Jaccard of word 3-grams)."),
    exact_only: bool = typer.Option(False, "--exact-only", help="Remove only exact duplicates."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (never the input)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Remove exact and near duplicates, keeping the first of each group.

    Example: [bold]tunewise data dedupe train.jsonl train.dedup.jsonl[/]
    """
    from tunewise.data.formats import parse_mapping
    from tunewise.data.ops import dedupe_file

    res = dedupe_file(inp, out, threshold=threshold, exact_only=exact_only, format=format,
                      mapping=parse_mapping(mapping), force=force)
    if as_json:
        print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
        return
    console.print(f"[green]✓[/] kept {res.rows_out:,} of {res.rows_in:,} rows → [bold]{res.output}[/]", highlight=False, soft_wrap=True)
    for r in res.removed[:20]:
        console.print(f"  removed {r['source']} ({r['kind']} duplicate of {r['duplicate_of']})", highlight=False)
    if len(res.removed) > 20:
        console.print(f"  [dim]… and {len(res.removed) - 20:,} more (--json lists all)[/]", highlight=False)


@data_app.command("fill")
def fill_cmd(
    inp: Path = typer.Argument(..., help="Dataset file with {{placeholders}}."),
    out: Path = typer.Argument(..., help="Output file (.jsonl or .json)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="A value: --set name=Tara --set author='Acme Labs'."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Write even if some placeholders have no value."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists (never the input)."),
) -> None:
    """Fill {{placeholders}} such as {{name}} and {{author}} in every row.

    Example: [bold]tunewise data fill identity.json my_identity.json --set name=Tara --set author="Acme Labs"[/]
    """
    from tunewise.data.ops import fill_file, parse_values

    res = fill_file(inp, out, parse_values(set_), force=force, allow_missing=allow_missing)
    done = ", ".join(f"{{{{{k}}}}} × {v:,}" for k, v in res.replaced.items()) or "nothing"
    console.print(f"[green]✓[/] filled {done} in {res.rows:,} rows → [bold]{res.output}[/]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


import tunewise.commands.data_review  # noqa: E402,F401  (registers `data review`)
from tunewise.commands.data_synth import add_synth_command  # noqa: E402  (adds `data synth`)

add_synth_command(data_app)
