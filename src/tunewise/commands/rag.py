"""RAG verbs: `rag index`, `rag query`, `rag eval` — thin wrappers over tunewise.rag."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
rag_app = typer.Typer(help="Index a documents folder and retrieve from it (dense + BM25 hybrid).\n\nExample: "
                      "[bold]tunewise rag index docs/[/]", no_args_is_help=True)


def _open_or_build(index: Optional[Path], docs: Optional[Path], progress: bool = True):
    from tunewise.errors import TunewiseError
    from tunewise.rag import RagIndex

    if docs is not None:
        return RagIndex.build(docs, index_dir=index, progress=progress)
    if index is not None:
        return RagIndex.open(index)
    raise TunewiseError("no index given", "pass --docs DOCS_DIR (built or reused) or --index INDEX_DIR")


def _skipped_lines(report) -> list[str]:
    return [f"  skipped {s.path}: {s.reason}" for s in report.skipped]


@rag_app.command("index")
def index_cmd(
    docs_dir: Path = typer.Argument(..., help="Folder of Markdown (.md), HTML (.html) and text (.txt) documents."),
    index: Optional[Path] = typer.Option(None, "--index", help="Where to write the index (default: under the tunewise home)."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", help="Largest chunk, in words and punctuation marks."),
    overlap: int = typer.Option(32, "--overlap", help="Tokens repeated between consecutive chunks of a section."),
    as_json: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
) -> None:
    """Index a documents folder for retrieval; reuses the index when no document changed.

    Example: [bold]tunewise rag index docs/policies[/]
    """
    from dataclasses import asdict

    from tunewise.rag import RagIndex

    idx = RagIndex.build(docs_dir, index_dir=index, chunk_tokens=chunk_tokens, overlap=overlap, progress=not as_json)
    r = idx.report
    if as_json:
        print(json.dumps({"index_dir": str(idx.index_dir), "embedder": idx.manifest["embedder"], **asdict(r)}, indent=2))
        return
    what = "Built" if r.rebuilt else "Reused (no document changed)"
    console.print(
        f"[green]{what}[/] {idx.index_dir}: {r.files} files, {r.chunks} chunks "
        f"({r.embedded} embedded, {r.reused} reused) in {r.seconds:.1f}s",
        highlight=False,
    )
    for line in _skipped_lines(r):
        console.print(f"[yellow]{line}[/]", highlight=False)


@rag_app.command("query")
def query_cmd(
    question: str = typer.Argument(..., help="The question to retrieve passages for."),
    index: Optional[Path] = typer.Option(None, "--index", help="An index folder written by `tunewise rag index`."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="A documents folder (indexed now, or its index reused)."),
    k: int = typer.Option(4, "-k", "--top-k", min=1, help="How many chunks to return."),
    mode: str = typer.Option("hybrid", "--mode", help="hybrid (dense + BM25, reciprocal rank), dense or bm25."),
    as_json: bool = typer.Option(False, "--json", help="Print the chunks as JSON."),
) -> None:
    """Print the chunks most relevant to a question, with source file and heading.

    Example: [bold]tunewise rag query "How many casual leave days do I get?" --docs docs/policies[/]
    """
    from dataclasses import asdict

    idx = _open_or_build(index, docs, progress=not as_json)
    chunks = idx.query(question, k=k, mode=mode)
    if as_json:
        print(json.dumps([asdict(c) for c in chunks], indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{mode} retrieval from {idx.index_dir}", show_lines=True)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("source · heading")
    table.add_column("text")
    for n, c in enumerate(chunks, 1):
        text = c.text if len(c.text) <= 400 else c.text[:400] + "…"
        table.add_row(str(n), f"{c.score:.4f}", f"[bold]{c.source}[/]\n[dim]{c.heading or '-'}[/]", text)
    console.print(table)


@rag_app.command("eval")
def eval_cmd(
    questions: Path = typer.Argument(..., help='JSONL of {"question": ..., "source": FILE} (FILE relative to the docs folder).'),
    index: Optional[Path] = typer.Option(None, "--index", help="An index folder written by `tunewise rag index`."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="A documents folder (indexed now, or its index reused)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Measure retrieval quality (recall@k, MRR) of bm25, dense and hybrid on labelled questions.

    Example: [bold]tunewise rag eval questions.jsonl --docs docs/policies[/]
    """
    from tunewise.rag import evaluate_retrieval, read_labelled

    labelled = read_labelled(questions)
    idx = _open_or_build(index, docs, progress=not as_json)
    result = evaluate_retrieval(idx, labelled)
    if as_json:
        print(json.dumps({"questions": len(labelled), **result}, indent=2))
        return
    metrics = list(next(iter(result.values())))
    table = Table(title=f"Retrieval quality on {len(labelled)} questions ({questions.name})")
    table.add_column("mode")
    for m in metrics:
        table.add_column(m, justify="right")
    for mode, row in result.items():
        table.add_row(mode, *(f"{row[m]:.3f}" for m in metrics))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(rag_app, name="rag")
