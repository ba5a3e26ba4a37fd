"""One assistant turn from an already loaded HF model: the old library call
(``generate(model, tokenizer, messages, ...) -> Generation``), kept for scripts written against
it. `chat`, `eval`, `compare` and `serve` use :mod:`tunewise.infer` engines (as does the README's
Python example); the loop itself is :func:`tunewise.infer.hf.generate_one` (the reference engine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tunewise.infer.hf import render_prompt, stop_token_ids  # noqa: F401  (re-exported)
from tunewise.infer.types import Request


@dataclass
class Generation:
    text: str
    input_tokens: int
    output_tokens: int
    stopped: bool  # True when the model ended its turn itself (EOS), False when cut by max_new_tokens
    seconds: float
    ttft_s: float | None = None  # time to the first new token (prefill + one step)

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens per second after the first one: the decoding speed, without the prompt's prefill."""
        if self.ttft_s is None or self.output_tokens < 2 or self.seconds <= self.ttft_s:
            return None
        return (self.output_tokens - 1) / (self.seconds - self.ttft_s)


def generate(
    model,
    tokenizer,
    messages: list[dict],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 1.0,
    on_text: Callable[[str], None] | None = None,
) -> Generation:
    """Generate one assistant turn for ``messages``; ``on_text`` receives text as it streams.

    temperature 0 means greedy decoding (deterministic).
    """
    from tunewise.infer.hf import generate_one

    c = generate_one(model, tokenizer, Request(list(messages), max_tokens=max_new_tokens,
                                               temperature=temperature, top_p=top_p), on_text=on_text)
    return Generation(c.text, c.input_tokens, c.output_tokens, c.stopped, c.seconds, c.ttft_s)
