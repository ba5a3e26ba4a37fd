"""One door to a model for every caller: submit many conversations, get generations with token
counts, timings and finish reasons; stream one.

    from tunewise.infer import Request, open_engine
    engine = open_engine("smollm2-135m")                  # llama.cpp when installed, else HF
    done = engine.generate([Request([{"role": "user", "content": "Hi"}], max_tokens=32)] * 8)
    print(done[0].text, done[0].output_tokens, done[0].finish_reason, done[0].seconds)
    for piece in engine.stream(Request([{"role": "user", "content": "Hi"}])):
        print(piece if isinstance(piece, str) else f"\\n[{piece.output_tokens} tokens]", end="")
    engine.close()

Engines (all implement :class:`Engine`):

- ``hf`` (:class:`HFEngine`): Hugging Face ``generate``, the exact reference; any model, adapters
  unmerged, one request at a time.
- ``llama.cpp`` (:class:`LlamaCppEngine`): llama.cpp's server through the ``xllamacpp`` wheel,
  continuous batching over ``n_parallel`` slots; runs a GGUF (an HF directory or a run is
  converted once, cached by content).
- ``hf-batch`` (:class:`HFBatchEngine`): Hugging Face ``generate`` on padded batches (left padding);
  exact in fp32, the fastest in bulk on CPUs with native bf16 (docs/infer.md has the measurement).
- ``openai`` (:class:`OpenAIEngine`): any OpenAI-compatible endpoint.

:func:`check_parity` compares a fast engine with the reference on greedy outputs.
"""

from __future__ import annotations

import importlib.util

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Engine, Request

ENGINES = ("auto", "hf", "hf-batch", "llama.cpp")


def fast_engine_available() -> bool:
    """Whether llama.cpp (the ``xllamacpp`` wheel) is installed."""
    return importlib.util.find_spec("xllamacpp") is not None


def open_engine(ref: str, engine: str = "auto", precision: str = "auto", n_parallel: int | None = None,
                **kwargs) -> Engine:
    """Load ``ref`` (embedded name, HF directory, ``.gguf`` file or tunewise run directory).

    ``engine``: "auto" (llama.cpp when ``xllamacpp`` is installed, else hf), "hf" or "llama.cpp".
    ``precision``: for hf "auto"/"fp32"/"bf16"/"fp16"; for llama.cpp the GGUF type an HF model is
    converted to ("auto" = f16; or f32/bf16/q8_0); a ``.gguf`` file runs as it is ("auto" or its
    own type). ``n_parallel``: llama.cpp's concurrent slots. Other keyword arguments go to the engine.
    """
    if engine not in ENGINES:
        raise TunewiseError(f"unknown engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "llama.cpp" if fast_engine_available() else "hf"
    if engine == "hf":
        from tunewise.infer.hf import HFEngine

        return HFEngine(ref, precision=precision, **kwargs)
    if engine == "hf-batch":  # n_parallel = rows decoded together
        from tunewise.infer.hf_batch import HFBatchEngine

        return HFBatchEngine(ref, precision=precision, **({"batch_size": n_parallel} if n_parallel else {}), **kwargs)
    from tunewise.infer.llamacpp import LlamaCppEngine

    if n_parallel is not None:
        kwargs["n_parallel"] = n_parallel
    return LlamaCppEngine(ref, precision=precision, **kwargs)


def __getattr__(name: str):
    # The engines import heavy libraries (torch, xllamacpp, openai): load them on first use.
    lazy = {"HFEngine": "tunewise.infer.hf", "LlamaCppEngine": "tunewise.infer.llamacpp",
            "OpenAIEngine": "tunewise.infer.openai", "check_parity": "tunewise.infer.parity",
            "ParityReport": "tunewise.infer.parity"}
    if name in lazy:
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(name)


__all__ = ["Request", "Completion", "Engine", "open_engine", "fast_engine_available", "ENGINES",
           "HFEngine", "LlamaCppEngine", "OpenAIEngine", "check_parity", "ParityReport"]
