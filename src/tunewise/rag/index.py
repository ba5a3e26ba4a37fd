"""A hybrid retrieval index over a documents folder, persisted on disk.

Layout of an index directory (written atomically; a crash never leaves half an index):

- ``manifest.json``  — format version, embedder, chunking settings, per-file size/mtime/SHA-256,
  the fingerprint that decides whether a rebuild is needed, skipped files;
- ``chunks.sqlite``  — the metadata table: one row per chunk (id = FAISS row, source, heading, text);
- ``dense.faiss``    — exact inner-product FAISS index of the L2-normalised chunk embeddings (cosine);
- ``bm25/``          — the bm25s sparse index (Snowball-stemmed, English stop words removed).

Queries fuse the dense and BM25 rankings by reciprocal rank (RRF, k=60).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.paths import atomic_dir, atomic_write_text, tunewise_home
from tunewise.rag.chunking import (
    SUPPORTED_SUFFIXES,
    DocFile,
    RawChunk,
    SkippedFile,
    chunk_text,
    kind_of,
    list_documents,
    read_document,
)
from tunewise.rag.embedder import Embedder, resolve_embedder

FORMAT_VERSION = 1
RRF_K = 60
MODES = ("hybrid", "dense", "bm25")


@dataclass
class Chunk:
    """A retrieved passage: its text, the file it came from (relative to the docs folder), its
    heading path (``"Policy > Refunds"``) and the retrieval score (RRF, cosine or BM25 by mode)."""

    text: str
    source: str
    heading: str
    score: float = 0.0


@dataclass
class BuildReport:
    """What ``RagIndex.build`` did: whether it rebuilt, how much it embedded and what it skipped."""

    rebuilt: bool
    files: int
    chunks: int
    embedded: int  # chunks sent through the embedder in this build
    reused: int  # chunk vectors carried over from the previous index (unchanged text)
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0


def default_index_dir(docs_dir: str | Path) -> Path:
    """``<tunewise home>/rag/<hash of the docs folder's absolute path>``."""
    key = hashlib.sha256(str(Path(docs_dir).expanduser().resolve()).encode()).hexdigest()[:16]
    return tunewise_home() / "rag" / key


def _stemmer():
    try:
        import Stemmer

        return Stemmer.Stemmer("english"), "snowball-english"
    except ImportError:  # PyStemmer is a declared dependency; degrade rather than fail if absent
        return None, "none"


def _import_bm25s():
    """bm25s, with its logger (which it sets to DEBUG when imported) quietened to warnings."""
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_tokens(texts: Sequence[str], stemmer_name: str) -> list[list[str]]:
    bm25s = _import_bm25s()

    stemmer = _stemmer()[0] if stemmer_name != "none" else None
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)


def embed_text(chunk: RawChunk | Chunk) -> str:
    """What the embedder and BM25 see: the heading path gives a short chunk its context."""
    return f"{chunk.heading}\n\n{chunk.text}" if chunk.heading else chunk.text


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fingerprint(files: list[DocFile], unreadable: list[str], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for d in sorted(files, key=lambda d: d.rel):
        h.update(f"{d.rel}\0{d.sha256}\n".encode())
    for rel in sorted(unreadable):
        h.update(f"{rel}\0unreadable\n".encode())
    return h.hexdigest()


def _read_manifest(index_dir: Path) -> dict | None:
    try:
        manifest = json.loads((index_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format_version") == FORMAT_VERSION else None


def _embed_with_progress(embedder: Embedder, texts: list[str], show: bool) -> np.ndarray:
    if not show:
        return embedder.encode(texts)
    getattr(embedder, "model", None)  # load the model before the progress starts, so the rate is real
    from tunewise.progress import progress

    with progress("embedding chunks", len(texts), unit="chunk") as prog:
        return embedder.encode(texts, on_batch=lambda n: prog.update(advance=n))



def check_chunking(chunk_tokens: int, overlap: int, names: tuple[str, str] = ("chunk_tokens=", "overlap=")) -> None:
    """The chunk sizes an index can be built with; ``names`` say how the caller spells the two
    settings (``("--chunk-tokens ", "--overlap ")`` on a command line)."""
    size, over = names
    if chunk_tokens < 16:
        raise TunewiseError(f"{size}{chunk_tokens} is too small", "use at least 16 (default 256)")
    if not 0 <= overlap < chunk_tokens:
        raise TunewiseError(f"{over}{overlap} must be ≥ 0 and below {size}{chunk_tokens}", f"e.g. {over}32")


class RagIndex:
    """Hybrid (dense + BM25) retrieval over a documents folder. Build with :meth:`build`, reopen
    with :meth:`open`, search with :meth:`query`."""

    def __init__(self, index_dir: Path, manifest: dict, chunks: list[Chunk], dense, bm25, embedder: Embedder | None):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.chunks = chunks
        self._dense = dense
        self._bm25 = bm25
        self._embedder = embedder
        self._question_cache: dict[str, np.ndarray] = {}
        self.report: BuildReport | None = None

    # ------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        docs_dir: str | Path,
        index_dir: str | Path | None = None,
        chunk_tokens: int = 256,
        overlap: int = 32,
        embedder: "Embedder | str | Path | None" = None,
        *,
        progress: bool = True,
    ) -> "RagIndex":
        """Index ``docs_dir`` (Markdown, HTML, text), or reuse the index there if no document changed.

        Changed documents are detected by path, size and mtime, confirmed by SHA-256; on a rebuild,
        chunks whose text did not change keep their stored vectors instead of being embedded again.
        ``self.report`` says what happened.
        """
        start = time.perf_counter()
        check_chunking(chunk_tokens, overlap)
        docs_dir = Path(docs_dir).expanduser()
        if not docs_dir.exists():
            raise TunewiseError(f"documents folder {docs_dir} does not exist", "give the folder holding your .md/.html/.txt files")
        if not docs_dir.is_dir():
            raise TunewiseError(f"{docs_dir} is a file, not a folder", "give the folder that holds your documents")
        docs_dir = docs_dir.resolve()
        index_dir = Path(index_dir).expanduser() if index_dir is not None else default_index_dir(docs_dir)
        if index_dir.resolve() == docs_dir or docs_dir in index_dir.resolve().parents:
            raise TunewiseError(f"index folder {index_dir} is inside the documents folder {docs_dir}", "put the index elsewhere (or leave --index out)")
        old = _read_manifest(index_dir)
        ours = (index_dir / "manifest.json").is_file()  # an index of ours, maybe old or damaged: rebuildable
        if not ours and index_dir.exists() and (not index_dir.is_dir() or any(index_dir.iterdir())):
            raise TunewiseError(
                f"{index_dir} exists and is not a tunewise RAG index; refusing to overwrite it",
                "give an empty or new folder for --index",
            )
        emb = resolve_embedder(embedder)
        stemmer_name = _stemmer()[1]
        settings = {
            "format_version": FORMAT_VERSION, "embedder": emb.name, "chunk_tokens": chunk_tokens,
            "overlap": overlap, "bm25_stemmer": stemmer_name,
        }

        docs, skipped = list_documents(docs_dir)
        if not docs and not skipped:
            raise TunewiseError(f"documents folder {docs_dir} is empty", f"add files ending in {', '.join(sorted(SUPPORTED_SUFFIXES))}")

        # Fast change check: a file whose size and mtime match the manifest keeps its recorded hash.
        old_files = (old or {}).get("files", {})
        unreadable: list[str] = []
        texts: dict[str, str] = {}
        for d in docs:
            rec = old_files.get(d.rel)
            if rec and rec.get("size") == d.size and rec.get("mtime_ns") == d.mtime_ns and rec.get("sha256"):
                d.sha256 = rec["sha256"]
                continue
            text, reason = read_document(d)
            if text is not None:
                texts[d.rel] = text
            elif not d.sha256:
                unreadable.append(d.rel)
        fingerprint = _fingerprint([d for d in docs if d.sha256], unreadable, settings)
        index = None
        if old is not None and old.get("fingerprint") == fingerprint:
            try:
                index = cls.open(index_dir, embedder=emb)
            except TunewiseError:  # damaged files: fall through and rebuild
                old, index = None, None
        if index is not None:
            touched = {d.rel: d for d in docs if d.rel in old_files and old_files[d.rel].get("mtime_ns") != d.mtime_ns}
            if touched:  # same content, new mtime: remember it so the next check skips hashing again
                for rel, d in touched.items():
                    old_files[rel].update(size=d.size, mtime_ns=d.mtime_ns)
                atomic_write_text(index_dir / "manifest.json", json.dumps(old, indent=2))
            index.report = BuildReport(
                rebuilt=False, files=sum(1 for f in old.get("files", {}).values() if f.get("chunks")), chunks=len(index.chunks), embedded=0, reused=len(index.chunks),
                skipped=[SkippedFile(**s) for s in old.get("skipped", [])], seconds=time.perf_counter() - start,
            )
            return index

        # Rebuild: read every document, chunk it, embed only chunks not embedded before.
        raw: list[RawChunk] = []
        indexed_files: dict[str, dict] = {}
        for d in docs:
            text = texts.get(d.rel)
            reason = None
            if text is None:
                text, reason = read_document(d)
            if text is None:
                skipped.append(SkippedFile(d.rel, reason or "unreadable"))
                continue
            pieces = chunk_text(text, d.rel, kind_of(d.path), chunk_tokens, overlap)
            if not pieces:
                skipped.append(SkippedFile(d.rel, "no text after parsing"))
                continue
            raw.extend(pieces)
            indexed_files[d.rel] = {"size": d.size, "mtime_ns": d.mtime_ns, "sha256": d.sha256, "chunks": len(pieces)}
        skipped.sort(key=lambda s: s.path)
        # Files skipped for content (binary, empty) are remembered too, so they don't force rebuilds.
        recorded = dict(indexed_files)
        for d in docs:
            if d.rel not in recorded and d.sha256:
                recorded[d.rel] = {"size": d.size, "mtime_ns": d.mtime_ns, "sha256": d.sha256, "chunks": 0}
        if not raw:
            detail = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
            raise TunewiseError(
                f"no readable documents in {docs_dir} ({len(skipped)} file(s) skipped: {detail})",
                f"add UTF-8 files ending in {', '.join(sorted(SUPPORTED_SUFFIXES))}",
            )

        inputs = [embed_text(c) for c in raw]
        previous = cls._previous_vectors(index_dir, old, emb.name)
        vectors: list[np.ndarray | None] = [previous.get(_sha(t)) for t in inputs]
        todo = [i for i, v in enumerate(vectors) if v is None]
        if todo:
            fresh = _embed_with_progress(emb, [inputs[i] for i in todo], progress)
            if fresh.ndim != 2 or fresh.shape[0] != len(todo):
                raise TunewiseError(f"embedder {emb.name} returned shape {fresh.shape} for {len(todo)} texts", "check the embedder's encode()")
            for i, v in zip(todo, fresh):
                vectors[i] = v
        matrix = np.ascontiguousarray(np.stack(vectors).astype(np.float32))

        bm25s = _import_bm25s()
        import faiss

        dense = faiss.IndexFlatIP(matrix.shape[1])
        dense.add(matrix)
        bm25 = bm25s.BM25()
        bm25.index(bm25_tokens(inputs, stemmer_name), show_progress=False)

        manifest = {
            **settings,
            "docs_dir": str(docs_dir),
            "fingerprint": fingerprint,
            "dim": int(matrix.shape[1]),
            "files": recorded,
            "skipped": [asdict(s) for s in skipped],
            "n_chunks": len(raw),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_dir(index_dir) as tmp:
            _write_chunks(tmp / "chunks.sqlite", raw, inputs)
            faiss.write_index(dense, str(tmp / "dense.faiss"))
            bm25.save(str(tmp / "bm25"), show_progress=False)
            atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2))
        chunks = [Chunk(text=c.text, source=c.source, heading=c.heading) for c in raw]
        index = cls(index_dir, manifest, chunks, dense, bm25, emb)
        index.report = BuildReport(
            rebuilt=True, files=len(indexed_files), chunks=len(raw), embedded=len(todo), reused=len(raw) - len(todo),
            skipped=skipped, seconds=time.perf_counter() - start,
        )
        return index

    @staticmethod
    def _previous_vectors(index_dir: Path, old: dict | None, embedder_name: str) -> dict[str, np.ndarray]:
        """Vectors of the previous index keyed by the SHA-256 of the embedded text (same embedder only)."""
        if old is None or old.get("embedder") != embedder_name:
            return {}
        try:
            import faiss

            dense = faiss.read_index(str(index_dir / "dense.faiss"))
            rows = _query_db(index_dir / "chunks.sqlite", "SELECT id, embed_sha256 FROM chunks ORDER BY id")
            matrix = dense.reconstruct_n(0, dense.ntotal)
        except Exception:  # a damaged old index only costs re-embedding
            return {}
        return {sha: matrix[i] for i, sha in rows if i < len(matrix)}

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, index_dir: str | Path, embedder: "Embedder | str | Path | None" = None) -> "RagIndex":
        """Open an index written by :meth:`build`. The embedder is loaded on the first dense query."""
        index_dir = Path(index_dir).expanduser()
        hint = "build it first: tunewise rag index DOCS_DIR --index " + str(index_dir)
        if not (index_dir / "manifest.json").is_file():
            raise TunewiseError(f"{index_dir} is not a tunewise RAG index (no manifest.json)", hint)
        manifest = _read_manifest(index_dir)
        if manifest is None:
            raise TunewiseError(f"{index_dir / 'manifest.json'} is unreadable or from another format version", hint)
        try:
            bm25s = _import_bm25s()
            import faiss

            rows = _query_db(index_dir / "chunks.sqlite", "SELECT text, source, heading FROM chunks ORDER BY id")
            dense = faiss.read_index(str(index_dir / "dense.faiss"))
            bm25 = bm25s.BM25.load(str(index_dir / "bm25"), load_corpus=False, mmap=False, show_progress=False)
        except Exception as e:
            raise TunewiseError(f"the RAG index in {index_dir} is damaged: {type(e).__name__}: {e}", hint) from e
        chunks = [Chunk(text=t, source=s, heading=h) for t, s, h in rows]
        if dense.ntotal != len(chunks):
            raise TunewiseError(f"the RAG index in {index_dir} is damaged: {dense.ntotal} vectors for {len(chunks)} chunks", hint)
        emb = resolve_embedder(embedder) if embedder is not None else None
        if emb is not None and emb.name != manifest["embedder"]:
            raise TunewiseError(
                f"the index in {index_dir} was built with embedder {manifest['embedder']}, not {emb.name}",
                "query with the same embedder, or rebuild the index with this one",
            )
        return cls(index_dir, manifest, chunks, dense, bm25, emb)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            emb = resolve_embedder(None)
            if emb.name != self.manifest["embedder"]:
                raise TunewiseError(
                    f"the index in {self.index_dir} was built with embedder {self.manifest['embedder']}",
                    "pass the same embedder to RagIndex.open(index_dir, embedder=...)",
                )
            self._embedder = emb
        return self._embedder

    @property
    def docs_dir(self) -> Path:
        return Path(self.manifest["docs_dir"])

    # ------------------------------------------------------------ querying

    def _question_vector(self, question: str) -> np.ndarray:
        """The question's embedding, remembered (LRU) so hybrid/dense/evaluation reuse it."""
        qv = self._question_cache.pop(question, None)
        if qv is None:
            qv = np.ascontiguousarray(self.embedder.encode([question]).astype(np.float32))
        self._question_cache[question] = qv
        while len(self._question_cache) > 256:
            self._question_cache.pop(next(iter(self._question_cache)))
        return qv

    def _dense_ranking(self, question: str, depth: int) -> list[tuple[int, float]]:
        qv = self._question_vector(question)
        scores, ids = self._dense.search(qv, depth)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def _bm25_ranking(self, question: str, depth: int) -> list[tuple[int, float]]:
        tokens = bm25_tokens([question], self.manifest.get("bm25_stemmer", "none"))[0]
        ids = self._bm25.get_tokens_ids(tokens)
        if not ids:
            return []
        scores = np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float64)
        order = np.argsort(-scores, kind="stable")[:depth]
        return [(int(i), float(scores[i])) for i in order if scores[i] > 0]

    def query(self, question: str, k: int = 4, mode: str = "hybrid") -> list[Chunk]:
        """The ``k`` chunks most relevant to ``question``, best first.

        ``mode``: ``hybrid`` (dense and BM25 fused by reciprocal rank), ``dense`` (cosine of
        MiniLM embeddings) or ``bm25`` (keyword). ``Chunk.score`` is that mode's score.
        """
        if mode not in MODES:
            raise TunewiseError(f"unknown retrieval mode {mode!r}", f"use one of {', '.join(MODES)}")
        if not isinstance(question, str) or not question.strip():
            raise TunewiseError("the question is empty", "ask a question, e.g. tunewise rag query \"How do I claim travel expenses?\"")
        if k < 1:
            raise TunewiseError(f"k={k} must be at least 1", "e.g. k=4")
        n = len(self.chunks)
        depth = min(n, max(50, 10 * k))
        if mode == "dense":
            ranked = self._dense_ranking(question, depth)
        elif mode == "bm25":
            ranked = self._bm25_ranking(question, depth)
        else:
            fused: dict[int, float] = {}
            for ranking in (self._dense_ranking(question, depth), self._bm25_ranking(question, depth)):
                for rank, (i, _) in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + rank + 1)
            ranked = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))
        out = []
        for i, score in ranked[:k]:
            c = self.chunks[i]
            out.append(Chunk(text=c.text, source=c.source, heading=c.heading, score=score))
        return out

    def __len__(self) -> int:
        return len(self.chunks)

    def __repr__(self) -> str:
        return f"RagIndex({str(self.index_dir)!r}, chunks={len(self.chunks)}, embedder={self.manifest.get('embedder')!r})"


def _query_db(path: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def _write_chunks(path: Path, raw: list[RawChunk], inputs: list[str]) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(
            "CREATE TABLE chunks (id INTEGER PRIMARY KEY, source TEXT NOT NULL, heading TEXT NOT NULL, "
            "text TEXT NOT NULL, embed_sha256 TEXT NOT NULL)"
        )
        db.execute("CREATE INDEX chunks_source ON chunks(source)")
        db.executemany(
            "INSERT INTO chunks (id, source, heading, text, embed_sha256) VALUES (?, ?, ?, ?, ?)",
            [(i, c.source, c.heading, c.text, _sha(t)) for i, (c, t) in enumerate(zip(raw, inputs))],
        )
        db.commit()
    finally:
        db.close()
