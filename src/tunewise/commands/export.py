"""`tunewise export`: a run or model to merged weights, GGUF, Ollama or vLLM, every artifact verified."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(highlight=False)


def export_cmd(
    model: str = typer.Argument(..., help="A tunewise run directory, a PEFT adapter directory or a model."),
    to: str = typer.Option(..., "--to", help="merged | gguf | ollama | vllm"),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: RUN/export-TARGET)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Merged weights: bf16 | f16 | f32 (default: the base's)."),
    quant: str = typer.Option("f16", "--quant", help="GGUF type: f16 | q8_0 | bf16 | f32 (k-quants need llama-quantize)."),
    adapter: bool = typer.Option(False, "--adapter", help="vllm: hand off base + adapter (--enable-lora) instead of merged weights."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="vllm: GPUs to serve on (--tensor-parallel-size)."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name for ollama create / vLLM's --served-model-name."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Export a fine-tuned run (or any model) for Ollama, llama.cpp, vLLM or transformers, and verify it.

    Checks the merge changed the weights but not the answers, that the GGUF's vocabulary, template,
    BOS and end-of-turn tokens match training, that it answers like the merged model in llama.cpp
    and stops by itself, and that the Modelfile renders the same prompt. A failed check exits 1
    and moves the output aside to OUT.rejected.

    Example: [bold]tunewise export runs/identity --to ollama --name identity[/]
    """
    from tunewise.export import export

    export(model, to=to.lower(), out=out, dtype=dtype, quant=quant, adapter=adapter, overwrite=overwrite,
           gpus=gpus, name=name, echo=lambda s: console.print(s, markup=False))


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
