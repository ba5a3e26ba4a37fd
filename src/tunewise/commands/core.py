"""Foundation verbs: `models`, `chat`, `config validate`, `config schema`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()

config_app = typer.Typer(help="Validate and inspect run configs.\n\nExample: [bold]tunewise config validate "
                         "examples/lora-smollm2.yaml[/]", no_args_is_help=True)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _human_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def models_cmd(
    clear: Optional[str] = typer.Option(None, "--clear", help="Delete one cached conversion (rebuilt on next use)."),
) -> None:
    """List known and cached models with parameter count and size on disk.

    Example: [bold]tunewise models[/]
    """
    from tunewise.models import clear_cached, list_models
    from tunewise.paths import models_dir

    if clear:
        path = clear_cached(clear)
        console.print(f"Deleted {path}")
        return
    table = Table(title=f"Models (cache: {models_dir()})")
    for col in ("name", "kind", "parameters", "size on disk", "status"):
        table.add_column(col)
    for m in list_models():
        status = f"cached at {m.path}" if m.cached else "converted on first use (from the GGUF package)"
        table.add_row(m.name, m.kind, _human_params(m.parameters), _human_bytes(m.size_bytes), status)
    console.print(table)


def chat_cmd(
    model: str = typer.Argument("smollm2-135m", help="Embedded name, HF directory, .gguf file or run directory."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer one prompt and exit."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest answer in tokens."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    quantization: Optional[str] = typer.Option(None, "--quantization", help="hf engine: load the weights in 4bit or 8bit."),
    engine: str = typer.Option("auto", "--engine", help="auto (llama.cpp when installed, else hf), hf, hf-batch or llama.cpp."),
    precision: str = typer.Option("auto", "--precision", help="llama.cpp: f16 (auto), f32, bf16, q8_0; hf: fp32, bf16."),
    speculative: str = typer.Option("ngram", "--speculative", help="llama.cpp: ngram (draft tokens from the "
                                    "conversation itself, checked by the model: same answers, faster) or off."),
) -> None:
    """Chat with a model, streaming tokens from the inference engine. Interactive unless --prompt is given.

    Example: [bold]tunewise chat smollm2-135m --prompt "What is the capital of France?"[/]
    """
    import sys

    from tunewise.errors import TunewiseError
    from tunewise.infer import Request, open_engine
    from tunewise.infer.run import resolve_engine

    from tunewise.infer.llamacpp import check_speculative

    name = resolve_engine(engine)
    check_speculative(speculative, "--speculative")
    if quantization:
        if engine == "llama.cpp":
            raise TunewiseError("--quantization loads weights for the hf engine, not llama.cpp",
                                "use --precision q8_0 with llama.cpp, or --engine hf with --quantization")
        from tunewise.infer.hf import HFEngine
        from tunewise.models import load_model, load_tokenizer

        eng = HFEngine.from_loaded(load_model(model, quantization=quantization), load_tokenizer(model), model)
    else:
        eng = open_engine(model, engine=name, precision=precision,
                          **({"n_parallel": 1, "speculative": speculative} if name == "llama.cpp" else {}))
    messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def turn(user: str) -> None:
        messages.append({"role": "user", "content": user})
        out = None
        for piece in eng.stream(Request(list(messages), max_tokens=max_new_tokens, temperature=temperature)):
            if isinstance(piece, str):
                sys.stdout.write(piece)
                sys.stdout.flush()
            else:
                out = piece
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": out.text})
        tps = out.output_tokens / out.seconds if out.seconds > 0 else 0.0
        note = "" if out.stopped else " (cut at --max-new-tokens)"
        Console(stderr=True).print(f"[dim]{out.output_tokens} tokens, {tps:.1f} tokens/s, "
                                   f"{eng.name} {eng.precision}{note}[/]")

    try:
        if prompt is not None:
            turn(prompt)
            return
        console.print("[dim]Chatting with[/] " + str(model) + f"[dim] ({eng.name} {eng.precision}) — empty line or "
                      "Ctrl-D to quit.[/]")
        while True:
            try:
                user = input(">>> ")
            except EOFError:
                break
            if not user.strip():
                break
            turn(user)
    finally:
        eng.close()


@config_app.command("validate")
def config_validate(
    files: list[Path] = typer.Argument(..., help="One or more YAML configs."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override a key: --set lora_r=8"),
) -> None:
    """Check configs and report every problem at once, with its key and the fix.

    Example: [bold]tunewise config validate examples/lora-smollm2.yaml --set lora_r=8[/]
    """
    from tunewise.config import apply_overrides, parse_overrides, read_yaml, schema_for, validate_config
    from tunewise.errors import TunewiseError

    failed = 0
    for f in files:
        try:
            data = apply_overrides(read_yaml(f), parse_overrides(set_))
            schema = schema_for(data)
        except TunewiseError as e:
            console.print(f"[red]✗[/] {e}", highlight=False, soft_wrap=True)
            failed += 1
            continue
        _, problems = validate_config(data, schema)
        if problems:
            failed += 1
            console.print(f"[red]✗ {f}[/]: {len(problems)} problem(s)", highlight=False, soft_wrap=True)
            for p in problems:
                console.print(f"  [bold]{p.key}[/]: {p.message} — [yellow]{p.fix}[/]", highlight=False, soft_wrap=True)
        else:
            console.print(f"[green]✓ {f}[/] is valid", highlight=False, soft_wrap=True)
            # the files it names are read relative to where `tunewise train` runs: say which are not there
            for key in ("datasets", "test_datasets"):
                for i, d in enumerate(data.get(key) or []):
                    path = d.get("path") if isinstance(d, dict) else None
                    if path and not Path(path).expanduser().exists():
                        console.print(f"  [yellow]warning[/] {key}[{i}].path: {path} does not exist from "
                                      f"{Path.cwd()} (paths are read from where train runs)",
                                      highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@config_app.command("schema")
def config_schema() -> None:
    """Print every key of the run config with its default and meaning.

    Example: [bold]tunewise config schema[/]
    """
    from tunewise.config import RunConfig

    table = Table(title="Run config keys")
    for col in ("key", "default", "meaning"):
        table.add_column(col)
    for name, field in RunConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        table.add_row(name, repr(default), field.description or "")
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("models")(models_cmd)
    app.command("chat")(chat_cmd)
    app.add_typer(config_app, name="config")
