"""`tunewise train`: fine-tune from a YAML config (LoRA, QLoRA or full), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console()


def print_summary(result, console: Console = console) -> None:
    """The final summary: the numbers, then where every output is."""
    from rich.table import Table

    out = result.output_dir
    table = Table(title="Training finished", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", str(result.steps))
    table.add_row("final train loss", f"{result.final_loss:.4f}")
    if result.eval_loss is not None:
        table.add_row("eval loss", f"{result.eval_loss:.4f}")
    table.add_row("throughput", f"{result.tokens_per_second:,.0f} tokens/s ({result.trained_tokens:,} tokens)")
    table.add_row("time", f"{result.seconds:.1f} s")
    if getattr(result, "peak_gpu_allocated_bytes", None):
        table.add_row("peak GPU memory", f"{result.peak_gpu_allocated_bytes / 1e9:.2f} GB allocated, "
                                         f"{result.peak_gpu_reserved_bytes / 1e9:.2f} GB reserved by torch")
    if getattr(result, "skipped_examples", 0):
        n = result.skipped_examples
        table.add_row("skipped", f"{n:,} example{'s' if n != 1 else ''} with no token to learn from "
                                 "(sources in summary.json)")
    if result.adapter_dir:
        table.add_row("adapter", f"{result.adapter_dir}  (PEFT adapter + tokenizer)")
    if result.model_dir:
        table.add_row("model", f"{result.model_dir}  (full weights + tokenizer)")
    for name, what in (("loss.png", "loss curve"), ("metrics.jsonl", "metrics per step"),
                       ("config.yaml", "resolved config"), ("data_fingerprint.json", "data hashes + counts"),
                       ("versions.json", "package versions"), ("summary.json", "this summary"),
                       ("checkpoints", "resumable checkpoints")):
        if (out / name).exists():
            table.add_row(what, str(out / name))
    console.print(table)
    console.print(f"Try it: [bold]tunewise chat {out}[/]", highlight=False)


def train_cmd(
    config: Path = typer.Argument(..., help="Run config YAML (see examples/ and `tunewise config schema`)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a key: --set lora_r=8 (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest complete checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output_dir."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON (no progress bar)."),
    num_processes: int = typer.Option(
        1, "--num-processes", min=1,
        help="Data-parallel processes (one per GPU, or CPU processes over gloo); launched with torchrun.",
    ),
) -> None:
    """Fine-tune a model with LoRA, QLoRA or full weights; outputs go to output_dir.

    Example: [bold]tunewise train examples/lora-smollm2.yaml --set max_steps=20[/]
    """
    if num_processes > 1:
        from tunewise.config import load_config
        from tunewise.train import distributed

        load_config(config, set_)  # a bad config fails here once, not once per process
        args = ["train", str(config), *[f"--set={s}" for s in set_ or []]]
        args += ["--resume"] * resume + ["--overwrite"] * overwrite + ["--json"] * json_out
        distributed.launch(args, num_processes)
        return
    run_training(config, set_, resume=resume, overwrite=overwrite, json_out=json_out)


def run_training(config: Path, overrides: list[str] | None, resume: bool, overwrite: bool, json_out: bool):
    """Load the config and train in this process (``--num-processes`` launches this per process)."""
    import json

    from tunewise.config import load_config
    from tunewise.train import train

    cfg = load_config(config, overrides)
    result = train(cfg, resume=resume, progress=not json_out, overwrite=overwrite)
    from tunewise.train.distributed import is_main_process

    if not is_main_process():  # one summary per run, from rank 0
        return result
    if json_out:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print_summary(result)
    return result


def register(app: typer.Typer) -> None:
    app.command("train")(train_cmd)
