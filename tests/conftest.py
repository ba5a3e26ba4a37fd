"""Shared fixtures: an isolated tunewise home per test, the real SmolLM2 tokenizer, a tiny random
Llama built from a config (fast), and the real embedded model for tests marked ``e2e``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def tunewise_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own TUNEWISE_HOME so nothing touches the user's cache."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("TUNEWISE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The peer datasets in ../shared/data (LLaMA-Factory demo files)."""
    path = SHARED_DATA / "llamafactory"
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer and chat template, read once from the embedded GGUF."""
    from transformers import AutoTokenizer

    from tunewise.models import EMBEDDED_MODELS, embedded_gguf_path

    gguf = embedded_gguf_path(EMBEDDED_MODELS["smollm2-135m"])
    out = tmp_path_factory.mktemp("smol-tokenizer")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_tokenizer_dir))


def build_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2, tie: bool = True) -> Path:
    """A random Llama (2 layers, hidden 64) with the real tokenizer, saved as a HF directory.

    With tied embeddings greedy decoding repeats the prompt's last token ("\n" after a chat
    template); ``tie=False`` gives a random output layer, hence varied text."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """Path to a tiny random Llama HF directory (session-wide; treat it as read-only)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), smol_tokenizer_dir)


@pytest.fixture(scope="session")
def embedded_home(tmp_path_factory) -> Path:
    """A tunewise home holding the converted embedded model (converted once per test session)."""
    import os

    home = tmp_path_factory.mktemp("embedded-home")
    old = os.environ.get("TUNEWISE_HOME")
    os.environ["TUNEWISE_HOME"] = str(home)
    try:
        from tunewise.models import resolve_model

        resolve_model("smollm2-135m")
    finally:
        if old is None:
            os.environ.pop("TUNEWISE_HOME", None)
        else:
            os.environ["TUNEWISE_HOME"] = old
    return home


@pytest.fixture
def embedded_model(embedded_home, monkeypatch) -> str:
    """Use in e2e tests: points TUNEWISE_HOME at the converted embedded model; returns its name."""
    monkeypatch.setenv("TUNEWISE_HOME", str(embedded_home))
    return "smollm2-135m"
