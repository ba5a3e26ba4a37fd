"""Pick the training examples most similar to a question (few-shot prompting by similarity)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.rag.embedder import Embedder, resolve_embedder

_CACHE: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_CACHE_SIZE = 8


def _example_vectors(emb: Embedder, examples: Sequence[str]) -> np.ndarray:
    """Embeddings of ``examples``, cached so many questions against one training set embed it once."""
    h = hashlib.sha256()
    for e in examples:
        h.update(hashlib.sha256(e.encode("utf-8")).digest())
    key = (emb.name, h.hexdigest())
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    vectors = np.asarray(emb.encode(list(examples)), dtype=np.float32)
    _CACHE[key] = vectors
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return vectors


def retrieve_examples(
    question: str, examples: list[str], k: int, embedder: "Embedder | str | Path | None" = None
) -> list[int]:
    """Indices of the ``k`` examples most similar to ``question`` (cosine of MiniLM embeddings),
    most similar first; ties keep the original order. ``k`` larger than the list returns them all."""
    if k < 0:
        raise TunewiseError(f"k={k} must be ≥ 0", "ask for how many examples to pick, e.g. k=3")
    if not examples or k == 0:
        return []
    if any(not isinstance(e, str) for e in examples):
        bad = next(i for i, e in enumerate(examples) if not isinstance(e, str))
        raise TunewiseError(f"example {bad} is a {type(examples[bad]).__name__}, not text", "pass each example rendered as a string")
    emb = resolve_embedder(embedder)
    vectors = _example_vectors(emb, examples)
    q = np.asarray(emb.encode([question]), dtype=np.float32)[0]
    scores = vectors @ q
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[: min(k, len(examples))]]
