"""`tunewise data synth`: training pairs from a documents folder, through any OpenAI-compatible
endpoint. Added to ``data_app`` by the line at the end of ``commands/data.py`` (a ``data``
sub-command, so this module has no ``register``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def add_synth_command(data_app: typer.Typer) -> None:
    data_app.command("synth")(synth_cmd)


def synth_cmd(
    docs_dir: Path = typer.Argument(..., help="Folder of documents (.md, .html, .txt), chunked as `tunewise rag index` does."),
    out: Path = typer.Option(..., "--out", help="Output pairs (.jsonl, OpenAI messages with provenance); an interrupted run resumes it."),
    endpoint: str = typer.Option(..., "--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."),
    model: str = typer.Option(..., "--model", help="Teacher model name at that endpoint."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Environment variable holding the API key (never logged or recorded)."),
    per_chunk: int = typer.Option(3, "--per-chunk", min=1, help="Questions asked per chunk and kind (every chunk gets its quota)."),
    kinds: str = typer.Option("qa", "--kinds", help="qa, instruction, or both: qa,instruction."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print requests, estimated tokens and cost, then stop (no call)."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Hard budget in USD: no request is sent that could pass it."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, max=64, help="Requests in flight at once (chunks worked on together)."),
    judge: bool = typer.Option(False, "--judge", help="Also ask the teacher to judge each pair that passed the local checks (it sees the chunk)."),
    top_k: int = typer.Option(4, "--top-k", min=1, help="A question must retrieve its chunk within this many RAG results."),
    price_per_mtok: Optional[str] = typer.Option(None, "--price-per-mtok", help="INPUT,OUTPUT USD per million tokens (default: genai-prices; local endpoints 0)."),
    usd_per_hour: float = typer.Option(0.0, "--usd-per-hour", min=0.0, help="Cost of the endpoint per hour of running (a rented GPU)."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", help="Largest chunk, in words and punctuation marks."),
    overlap: int = typer.Option(32, "--overlap", help="Tokens repeated between consecutive chunks."),
    index: Optional[Path] = typer.Option(None, "--index", help="RAG index folder for the answerability check (default: under the tunewise home)."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed sent with every request."),
    force: bool = typer.Option(False, "--force", help="Write OUT again from scratch (the reply cache is kept, so done work costs nothing)."),
    as_json: bool = typer.Option(False, "--json", help="Print the funnel (or the dry-run estimate) as JSON."),
) -> None:
    """Write instruction–response pairs from documents with an LLM, for a person to review.

    Questions first, then each answer from its chunk only; keep a pair only when it parses, is
    grounded in its chunk, retrieves its chunk and is not a duplicate. Prints the funnel (also written to OUT-stem.funnel.json) and exits 1 when nothing
    is kept, 3 when the run stopped early (budget, failed requests: rerun to resume).

    Example: [bold]tunewise data synth docs/ --out pairs.jsonl --endpoint http://127.0.0.1:8000/v1 --model smollm2-135m[/]
    """
    from rich.console import Console

    from tunewise.data.synth import SynthOptions, synthesize
    from tunewise.data.synth.pairs import estimate
    from tunewise.data.synth.report import print_funnel

    console = Console()
    opts = SynthOptions(
        docs_dir=docs_dir, out=out, endpoint=endpoint, model=model, api_key_env=api_key_env, per_chunk=per_chunk,
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), concurrency=concurrency, max_cost=max_cost,
        price_per_mtok=price_per_mtok, usd_per_hour=usd_per_hour, judge=judge, top_k=top_k, chunk_tokens=chunk_tokens,
        overlap=overlap, seed=seed, force=force, index_dir=index, progress=not as_json,
    )
    if dry_run:
        est = estimate(opts)
        if as_json:
            print(json.dumps(est.to_dict(), indent=2))
            return
        p = est.pricing

        def usd(x):
            return f"${x:,.4f}" if x is not None else "unknown (give --price-per-mtok IN,OUT)"

        from tunewise.data.synth.client import public_endpoint

        console.print(f"dry run: [bold]{est.requests:,}[/] requests to {model} at {public_endpoint(endpoint)}",
                      highlight=False, soft_wrap=True)
        console.print(f"  input ≈ {est.input_tokens:,} tokens · output ≈ {est.output_tokens_expected:,} tokens expected, "
                      f"at most {est.output_tokens_max:,} (max_tokens)", highlight=False, soft_wrap=True)
        if p.usd_per_hour and not est.usd_max:  # a local endpoint: the machine's hours are the whole cost
            console.print(f"  cost: [bold]${p.usd_per_hour:,.2f} per hour[/] the run takes (the tokens themselves "
                          f"are free here) [dim]({p.source})[/]", highlight=False, soft_wrap=True)
        else:
            console.print(f"  cost ≈ [bold]{usd(est.usd_expected)}[/] expected, at most {usd(est.usd_max)} [dim]({p.source})[/]",
                          highlight=False, soft_wrap=True)
            if p.usd_per_hour:
                console.print(f"  plus ${p.usd_per_hour:,.2f} per hour the run takes", highlight=False)
        console.print("  [dim]nothing was sent; drop --dry-run to run (add --max-cost for a hard budget)[/]")
        return
    result = synthesize(opts)
    if as_json:
        print(json.dumps(result.funnel.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_funnel(result.funnel, console)
        console.print(f"pairs → [bold]{result.out}[/] · funnel → {result.files['funnel']} · "
                      f"dropped pairs and reasons → {result.files['rejected']}", highlight=False, soft_wrap=True)
    if result.kept == 0:
        Console(stderr=True).print("[bold red]error:[/] no pair was kept; the funnel above says which stage dropped them "
                                   f"(details in {result.files['rejected']})", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if not result.complete:
        Console(stderr=True).print("[yellow]incomplete:[/] the run stopped early (budget or failed requests); "
                                   "run the same command again to resume (done work comes from the cache)",
                                   highlight=False, soft_wrap=True)
        raise typer.Exit(3)
