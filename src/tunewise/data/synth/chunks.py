"""The chunks a synth run writes pairs from: the documents folder cut exactly as `tunewise rag
index` cuts it (same reader, same chunker, same settings), each with a stable id, its SHA-256 and
its character span in the document."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from tunewise.errors import TunewiseError
from tunewise.rag.chunking import SUPPORTED_SUFFIXES, chunk_text, kind_of, list_documents, read_document


@dataclass
class DocChunk:
    index: int  # position over the whole folder
    chunk_id: str  # "<document>#<n>": the n-th chunk of that document
    source: str  # document path relative to the folder
    heading: str
    text: str
    sha256: str
    char_span: tuple[int, int] | None  # in the document's text; None where the text was extracted (HTML)


def locate(doc_text: str, chunk: str, start: int = 0) -> tuple[int, int] | None:
    """The span of ``doc_text`` holding ``chunk``'s words in order, white space aside."""
    words = chunk.split()
    if not words:
        return None
    m = re.compile(r"\s+".join(map(re.escape, words))).search(doc_text, start)
    if m is None and start:
        m = re.compile(r"\s+".join(map(re.escape, words))).search(doc_text)
    return (m.start(), m.end()) if m else None


def load_chunks(docs_dir: Path, chunk_tokens: int = 256, overlap: int = 32) -> tuple[list[DocChunk], list[str], dict[str, str]]:
    """(chunks, skipped "path: reason" lines, {document: sha256}) for a documents folder."""
    docs_dir = Path(docs_dir).expanduser()
    if not docs_dir.is_dir():
        raise TunewiseError(f"documents folder {docs_dir} does not exist or is not a folder",
                            "give the folder holding your .md/.html/.txt files")
    docs, skipped_files = list_documents(docs_dir)
    skipped = [f"{s.path}: {s.reason}" for s in skipped_files]
    chunks: list[DocChunk] = []
    hashes: dict[str, str] = {}
    for d in docs:
        text, reason = read_document(d)
        if text is None:
            skipped.append(f"{d.rel}: {reason}")
            continue
        hashes[d.rel] = d.sha256
        kind = kind_of(d.path)
        pieces = chunk_text(text, d.rel, kind, chunk_tokens, overlap)
        if not pieces:
            skipped.append(f"{d.rel}: no text after parsing")
        pos = 0
        for n, p in enumerate(pieces):
            span = locate(text, p.text, pos) if kind != "html" else None
            if span:
                pos = span[0] + 1
            chunks.append(DocChunk(len(chunks), f"{d.rel}#{n}", d.rel, p.heading, p.text,
                                   hashlib.sha256(p.text.encode()).hexdigest(), span))
    if not chunks:
        raise TunewiseError(f"no readable documents in {docs_dir}" + (f" ({'; '.join(skipped[:5])})" if skipped else ""),
                            f"add UTF-8 files ending in {', '.join(sorted(SUPPORTED_SUFFIXES))}")
    return chunks, skipped, hashes
