"""The local checks every candidate pair passes before it is kept. None calls a model over the
network; each returns a reason when it drops a pair.

Grounding (is every sentence of the answer supported by its chunk?). For each answer sentence:

- *lexical support*: the share of its content words (lower-cased, Snowball-stemmed, stop words
  left out) that occur in the chunk;
- *embedding support*: the highest cosine similarity (all-MiniLM-L6-v2) between the sentence and
  any sentence, or pair of adjacent sentences, of the chunk;
- every number in the sentence (``30``, ``1.5``, ``1,000``) must occur in the chunk.

A sentence is supported when its numbers occur in the chunk and either its lexical support is at
least ``LEXICAL_ALONE`` (0.75) or its lexical support is at least ``LEXICAL_WITH_EMBEDDING`` (0.6)
and its embedding support at least ``EMBEDDING_MIN`` (0.75). An answer is grounded when all its
sentences are. docs/synth.md explains the thresholds; tests/test_synth.py pins them on examples.

Answerability: the question, asked of the RAG index built over the same documents, must retrieve
its own chunk (or a chunk holding the same supporting sentences: neighbours overlap) in the top k.

Duplicates: the MinHash near-duplicate detection of `tunewise data dedupe` (word 3-grams,
Jaccard ≥ 0.8) over the pair, plus identical questions after normalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

LEXICAL_ALONE = 0.75
LEXICAL_WITH_EMBEDDING = 0.6
EMBEDDING_MIN = 0.75
NEAR_DUPLICATE = 0.8

_WORD = re.compile(r"\w+", re.U)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_LEAD = re.compile(r"\s*(?:(?:[-*•>#]+|\d+[.)])\s+)?")
_STOP = {
    "a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "do", "does", "for", "from",
    "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "may", "me", "might",
    "must", "my", "no", "not", "of", "on", "or", "our", "she", "should", "so", "such", "than", "that", "the",
    "their", "them", "then", "there", "these", "they", "this", "those", "to", "was", "we", "were", "what",
    "when", "where", "which", "who", "will", "with", "would", "yes", "you", "your", "also", "any", "all",
    "each", "every", "about", "up", "only", "s",
}


def _stemmer():
    from tunewise.rag.index import _stemmer as rag_stemmer

    return rag_stemmer()[0]


def sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences (and list items / lines) of ``text``."""
    spans, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.start()].strip():
            spans.append((start, m.start()))
        start = m.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    out = []
    for s, e in spans:  # trim white space and list markers ("- ", "* ", "2. ") from each span
        lead = _LEAD.match(text, s, e).end()
        e = s + len(text[s:e].rstrip())
        if lead < e:
            out.append((lead, e))
    return out


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


class Lexicon:
    """Stemmed content words of texts (one stemmer, loaded once)."""

    def __init__(self):
        self.stemmer = _stemmer()

    def content(self, text: str) -> list[str]:
        words = [w for w in (w.lower() for w in _WORD.findall(text)) if w not in _STOP and not w.isdigit()]
        return self.stemmer.stemWords(words) if self.stemmer is not None else words

    def terms(self, text: str) -> set[str]:
        """The content words and the numbers of ``text``: what a sentence shares with the one that
        supports it (the review page's highlighting)."""
        return set(self.content(text)) | _numbers(text)


@dataclass
class SentenceSupport:
    text: str
    lexical: float
    embedding: float
    missing_numbers: list[str]
    supported: bool
    chunk_span: tuple[int, int]  # the best-supporting span of the chunk (characters)

    def to_dict(self) -> dict:
        return {"sentence": self.text, "lexical": round(self.lexical, 3), "embedding": round(self.embedding, 3),
                "missing_numbers": self.missing_numbers, "supported": self.supported, "chunk_span": list(self.chunk_span)}


@dataclass
class Grounding:
    grounded: bool
    reason: str
    sentences: list[SentenceSupport] = field(default_factory=list)

    @property
    def chunk_spans(self) -> list[tuple[int, int]]:
        return [s.chunk_span for s in self.sentences]


class GroundingCheck:
    """``check(answer, chunk_text)`` → :class:`Grounding`. ``embedder`` is any tunewise Embedder."""

    def __init__(self, embedder, lexical_alone: float = LEXICAL_ALONE, lexical_with_embedding: float = LEXICAL_WITH_EMBEDDING,
                 embedding_min: float = EMBEDDING_MIN):
        self.embedder = embedder
        self.lexicon = Lexicon()
        self.lexical_alone = lexical_alone
        self.lexical_with_embedding = lexical_with_embedding
        self.embedding_min = embedding_min
        self._chunk_cache: dict[str, tuple[list[tuple[int, int]], np.ndarray, set[str], set[str]]] = {}

    def _chunk(self, chunk_text: str):
        got = self._chunk_cache.get(chunk_text)
        if got is None:
            spans = sentences(chunk_text) or [(0, len(chunk_text))]
            windows = spans + [(spans[i][0], spans[i + 1][1]) for i in range(len(spans) - 1)]
            vectors = self.embedder.encode([chunk_text[s:e] for s, e in windows])
            got = (windows, np.asarray(vectors, dtype=np.float32), set(self.lexicon.content(chunk_text)), _numbers(chunk_text))
            if len(self._chunk_cache) > 64:
                self._chunk_cache.pop(next(iter(self._chunk_cache)))
            self._chunk_cache[chunk_text] = got
        return got

    def check(self, answer: str, chunk_text: str) -> Grounding:
        windows, chunk_vecs, chunk_words, chunk_numbers = self._chunk(chunk_text)
        spans = sentences(answer)
        texts = [answer[s:e] for s, e in spans]
        if not texts:
            return Grounding(False, "the answer is empty")
        vecs = np.asarray(self.embedder.encode(texts), dtype=np.float32)
        sims = vecs @ chunk_vecs.T  # cosine: both sides are L2-normalised
        out: list[SentenceSupport] = []
        for i, text in enumerate(texts):
            words = self.lexicon.content(text)
            lexical = sum(w in chunk_words for w in words) / len(words) if words else 1.0
            missing = sorted(_numbers(text) - chunk_numbers)
            best = int(np.argmax(sims[i]))
            emb = float(sims[i, best])
            ok = not missing and (lexical >= self.lexical_alone
                                  or (lexical >= self.lexical_with_embedding and emb >= self.embedding_min))
            out.append(SentenceSupport(text, lexical, emb, missing, ok, windows[best]))
        if not any(self.lexicon.content(t) for t in texts):
            return Grounding(False, "the answer has no content words", out)
        bad = [s for s in out if not s.supported]
        if not bad:
            return Grounding(True, "", out)
        s = bad[0]
        why = (f"number(s) {', '.join(s.missing_numbers)} not in the chunk" if s.missing_numbers
               else f"lexical support {s.lexical:.2f}, embedding support {s.embedding:.2f}")
        snippet = s.text if len(s.text) <= 80 else s.text[:77] + "…"
        return Grounding(False, f"{len(bad)} of {len(out)} sentence(s) unsupported, e.g. \"{snippet}\" ({why})", out)


def answerable(index, question: str, chunk_key: tuple[str, str], support: list[str], k: int) -> tuple[bool, int | None]:
    """(retrieved, rank): whether ``question`` retrieves its chunk (``(source, text)``) in the top
    ``k`` of ``index``, or a chunk that holds every supporting passage (overlapping neighbours)."""
    for rank, c in enumerate(index.query(question, k=min(k, len(index)), mode="hybrid"), 1):
        if (c.source, c.text) == chunk_key:
            return True, rank
        if c.source == chunk_key[0] and support and all(s in c.text for s in support):
            return True, rank
    return False, None


def normalise_question(q: str) -> str:
    return " ".join(_WORD.findall(q.lower()))


class DuplicateFilter:
    """Near-duplicate pairs (MinHash over word 3-grams of question and answer, Jaccard ≥
    ``threshold``) and repeated questions; the first of each group is kept."""

    def __init__(self, threshold: float = NEAR_DUPLICATE):
        from tunewise.data.dedup import DuplicateFinder

        self.finder = DuplicateFinder(threshold=threshold)
        self.threshold = threshold
        self._kept_sigs: list[np.ndarray] = []
        self._kept_ids: list[str] = []
        self._questions: dict[str, str] = {}

    def check(self, pair_id: str, question: str, answer: str) -> str | None:
        """None if new (and remember it), else the reason naming the pair it duplicates."""
        norm = normalise_question(question)
        if norm in self._questions:
            return f"same question as {self._questions[norm]}"
        i = self.finder.add_text(f"user: {question}\nassistant: {answer}")
        sig = self.finder.signatures()[i].copy()  # copy: the finder's buffer grows on the next add
        if self._kept_sigs:
            sims = (np.stack(self._kept_sigs) == sig).mean(axis=1)
            best = int(np.argmax(sims))
            if sims[best] >= self.threshold:
                return f"near-duplicate of {self._kept_ids[best]} (similarity {sims[best]:.2f})"
        self._kept_sigs.append(sig)
        self._kept_ids.append(pair_id)
        self._questions[norm] = pair_id
        return None
