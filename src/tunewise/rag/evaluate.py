"""Retrieval quality on a labelled question set: recall@k and mean reciprocal rank per mode."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunewise.errors import TunewiseError


@dataclass
class LabelledQuestion:
    """A question and the document (path relative to the docs folder) that answers it."""

    question: str
    source: str


def read_labelled(path: str | Path) -> list[LabelledQuestion]:
    """JSON Lines, one ``{"question": ..., "source": ...}`` per line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TunewiseError(f"cannot read {path}: {e.strerror or e}", "give a JSONL file of {question, source}") from e
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(LabelledQuestion(question=str(row["question"]), source=str(row["source"])))
        except (ValueError, KeyError, TypeError) as e:
            raise TunewiseError(f"{path}:{n}: expected {{\"question\": ..., \"source\": ...}} ({e})", "fix that line") from e
    if not out:
        raise TunewiseError(f"{path} has no questions", "add lines like {\"question\": \"...\", \"source\": \"leave.md\"}")
    return out


def recall_at_k(index, labelled: list[LabelledQuestion], k: int, mode: str = "hybrid") -> float:
    """Share of questions whose answering document is among the sources of the top ``k`` chunks."""
    hits = sum(any(c.source == q.source for c in index.query(q.question, k=k, mode=mode)) for q in labelled)
    return hits / len(labelled)


def evaluate_retrieval(index, labelled: list[LabelledQuestion], ks=(1, 3, 5), modes=("bm25", "dense", "hybrid")) -> dict:
    """``{mode: {"recall@1": .., "recall@3": .., "mrr@10": ..}}`` computed with one query per question."""
    depth = max(max(ks), 10)
    result = {}
    for mode in modes:
        ranks = []
        for q in labelled:
            sources = [c.source for c in index.query(q.question, k=depth, mode=mode)]
            ranks.append(sources.index(q.source) + 1 if q.source in sources else None)
        row = {f"recall@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in ks}
        row[f"mrr@{depth}"] = sum(1.0 / r for r in ranks if r is not None) / len(ranks)
        result[mode] = row
    return result
