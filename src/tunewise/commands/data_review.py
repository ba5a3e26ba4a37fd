"""`tunewise data review`: the local review page, and export of what the reviewer kept.

Registered on ``data_app`` by the import at the end of ``commands/data.py`` (this module has no
``register``: it is a ``data`` sub-command, not a top-level verb).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tunewise.commands.data import _FORMAT_HELP, _MAP_HELP, console, data_app


@data_app.command("review")
def review_cmd(
    dataset: Path = typer.Argument(..., help="Dataset file to review (any format tunewise reads; never modified)."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free port)."),
    log: Optional[Path] = typer.Option(None, "--log", help="Review log (default: DATASET-stem.review.jsonl beside it)."),
    docs: Optional[Path] = typer.Option(None, "--docs", help="Folder of the source documents, for pairs whose provenance has no chunk_text."),
    export: Optional[Path] = typer.Option(None, "--export", help="Write the accepted, edited and hand-written examples here (.jsonl or .json) and exit."),
    to: Optional[str] = typer.Option(None, "--to", help="Export format: openai, alpaca, sharegpt or messages (default: the dataset's)."),
    force: bool = typer.Option(False, "--force", help="Replace the --export file if it exists (never the dataset)."),
    format: str = typer.Option("auto", "--format", help=_FORMAT_HELP),
    mapping: Optional[list[str]] = typer.Option(None, "--map", help=_MAP_HELP),
    open_browser: bool = typer.Option(False, "--open", help="Also open the page in the default browser."),
    as_json: bool = typer.Option(False, "--json", help="With --export: print a machine-readable result."),
) -> None:
    """Review a dataset in a local web page: accept, edit or reject each example.

    Write new ones by hand, see a synth pair's source chunk with the supporting sentences
    highlighted. Every decision is
    saved to a review log as it is made; reopening resumes at the first undecided example.
    With --export, write what was kept in a training format instead of serving.

    Example: [bold]tunewise data review pairs.jsonl[/]  then  [bold]tunewise data review pairs.jsonl --export accepted.jsonl --to openai[/]
    """
    from tunewise.data.formats import parse_mapping
    from tunewise.data.review import ReviewSession, export_reviewed, serve

    session = ReviewSession(dataset, log=log, format=format, mapping=parse_mapping(mapping), docs=docs)
    c = session.counts()
    if export is not None:
        res = export_reviewed(session, export, to, force=force)
        if as_json:
            print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
            return
        console.print(f"[green]✓[/] wrote {res.rows:,} examples to [bold]{res.output}[/] ({res.to}): {c['accept']:,} accepted, "
                      f"{c['edit']:,} edited, {c['gold']:,} written by hand · left out: {c['reject']:,} rejected, "
                      f"{c['examples'] - c['decided']:,} undecided", highlight=False, soft_wrap=True)
        by_what: dict[str, list[str]] = {}
        for source, what in res.dropped:
            by_what.setdefault(what, []).append(source)
        for what, sources in by_what.items():
            where = ", ".join(sources[:3]) + (" …" if len(sources) > 3 else "")
            console.print(f"  [yellow]not carried over[/] ({len(sources):,} × {what}) [dim]{where}[/]", highlight=False, soft_wrap=True)
        return
    if as_json or to is not None or force:
        from tunewise.errors import TunewiseError

        raise TunewiseError("--to, --force and --json go with --export", "add --export accepted.jsonl, or drop them")

    def ready(server) -> None:
        console.print(f"Reviewing [bold]{dataset}[/]: {c['examples']:,} examples, {c['decided']:,} decided "
                      f"({c['accept']:,} accepted, {c['edit']:,} edited, {c['reject']:,} rejected), "
                      f"{c['gold']:,} written by hand", highlight=False, soft_wrap=True)
        if session.dataset.unreadable:
            console.print(f"[yellow]{len(session.dataset.unreadable):,} unreadable row(s) not shown[/] "
                          f"(first: {session.dataset.unreadable[0]}); tunewise data check lists them", highlight=False, soft_wrap=True)
        console.print(f"Decisions are saved as you make them in [bold]{session.log.path}[/]", highlight=False, soft_wrap=True)
        console.print(f"Open [bold]{server.url}[/]", highlight=False, soft_wrap=True)
        console.print("[dim]Ctrl+C stops the server; nothing is lost.[/]", highlight=False)
        console.file.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(server.url)

    serve(session, port=port, on_ready=ready)
