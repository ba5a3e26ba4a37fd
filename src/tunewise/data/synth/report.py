"""The funnel of a synth run: how many candidate pairs reached each stage, how many each stage
dropped and why, and the coverage of chunks and documents by kept pairs."""

from __future__ import annotations

from collections import Counter

STAGES = ("generated", "parsed", "grounded", "answerable", "unique", "judged")
STAGE_HELP = {
    "generated": "a reply came back (not: request failed, budget reached)",
    "parsed": "questions and answer read from the replies (one re-ask allowed)",
    "grounded": "every answer sentence supported by its chunk",
    "answerable": "the question retrieves its chunk from the RAG index (top k)",
    "unique": "not a near-duplicate of a kept pair",
    "judged": "the judge (which sees the chunk) passed it",
}


class Funnel:
    def __init__(self, chunks, documents: list[str], skipped: list[str], judge: bool):
        self.chunks = chunks
        self.documents = documents
        self.skipped = skipped
        self.judge = judge
        self.candidates = 0
        self.drops: Counter = Counter()  # (stage, reason) -> count
        self.kept = 0
        self.kept_chunks: set[str] = set()
        self.kept_docs: Counter = Counter()
        self.extra: dict = {}

    def add(self, cand) -> None:
        self.candidates += 1
        if cand.stage:
            self.drops[(cand.stage, cand.reason)] += 1

    def keep(self, cand) -> None:
        self.kept += 1
        self.kept_chunks.add(cand.chunk.chunk_id)
        self.kept_docs[cand.chunk.source] += 1

    def finish(self, **extra) -> None:
        self.extra = extra

    def stages(self) -> list[dict]:
        rows, count = [], self.candidates
        for stage in STAGES:
            if stage == "judged" and not self.judge:
                continue
            reasons = {r: n for (s, r), n in sorted(self.drops.items()) if s == stage}
            dropped = sum(reasons.values())
            count -= dropped
            rows.append({"stage": stage, "count": count, "dropped": dropped, "reasons": reasons, "meaning": STAGE_HELP[stage]})
        return rows

    def coverage(self) -> dict:
        n_chunks, n_docs = len(self.chunks), len(self.documents)
        return {
            "chunks": n_chunks, "chunks_with_pairs": len(self.kept_chunks),
            "chunk_share": round(len(self.kept_chunks) / n_chunks, 4) if n_chunks else 0.0,
            "documents": n_docs, "documents_with_pairs": len(self.kept_docs),
            "document_share": round(len(self.kept_docs) / n_docs, 4) if n_docs else 0.0,
            "documents_without_pairs": [d for d in self.documents if d not in self.kept_docs],
            "pairs_per_document": dict(sorted(self.kept_docs.items())),
            "skipped_files": self.skipped,
        }

    def to_dict(self) -> dict:
        return {"chunks": len(self.chunks), "candidates": self.candidates, "stages": self.stages(), "kept": self.kept,
                "coverage": self.coverage(), **self.extra}


def print_funnel(funnel: Funnel, console) -> None:
    """The funnel as a table, the reasons under each stage, then coverage and cost."""
    from rich.table import Table

    d = funnel.to_dict()
    table = Table(title=f"synth funnel · {d['chunks']:,} chunks → {d['candidates']:,} candidate pairs", title_justify="left")
    for col, just in (("stage", "left"), ("pairs", "right"), ("dropped", "right"), ("why", "left")):
        table.add_column(col, justify=just)
    table.add_row("candidates", f"{d['candidates']:,}", "", "chunks × kinds × --per-chunk")
    for row in d["stages"]:
        why = ", ".join(f"{r} {n:,}" for r, n in row["reasons"].items())
        table.add_row(row["stage"], f"{row['count']:,}", f"{row['dropped']:,}" if row["dropped"] else "", why)
    table.add_row("[bold]kept[/]", f"[bold]{d['kept']:,}[/]", "", "")
    console.print(table)
    cov = d["coverage"]
    console.print(f"coverage: {cov['chunks_with_pairs']:,}/{cov['chunks']:,} chunks ({cov['chunk_share']:.0%}), "
                  f"{cov['documents_with_pairs']:,}/{cov['documents']:,} documents ({cov['document_share']:.0%}) have a kept pair",
                  highlight=False, soft_wrap=True)
    if cov["documents_without_pairs"]:
        shown = ", ".join(cov["documents_without_pairs"][:8]) + (" …" if len(cov["documents_without_pairs"]) > 8 else "")
        console.print(f"[yellow]no kept pair from:[/] {shown}", highlight=False, soft_wrap=True)
    if cov["skipped_files"]:
        console.print(f"[yellow]skipped files:[/] {'; '.join(cov['skipped_files'][:5])}", highlight=False, soft_wrap=True)
    calls, cost = d.get("calls", {}), d.get("cost", {})
    if calls:
        console.print(f"requests: {calls['calls']:,} sent ({calls['retries']:,} retries, {calls['rate_limited']:,} rate-limited, "
                      f"waited {calls['waited_s']:.1f}s), {calls['cached']:,} from the cache, {calls['failed']:,} failed",
                      highlight=False, soft_wrap=True)
    if cost:
        t = cost["tokens_this_run"]
        price = f"${cost['spent_usd_this_run']:.4f}" if cost["pricing"]["input_usd_per_mtok"] is not None else "price unknown"
        limit = f" of ${cost['max_usd']:.2f} budget" if cost.get("max_usd") is not None else ""
        console.print(f"cost this run: {price}{limit} · {t['input']:,} input + {t['output']:,} output tokens "
                      f"[dim]({cost['pricing']['source']})[/]", highlight=False, soft_wrap=True)
