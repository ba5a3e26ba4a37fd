"""Text generation with a chat template: one function used by `chat`, `eval` and `compare`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


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


def render_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt exactly as the model sees it (the tokenizer's chat template applied)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(i) for i in eos)
    return sorted(ids)


class _FirstTokenTimer:
    """A generate() streamer that notes when the first new token arrives (generate hands a streamer
    the prompt first, then each new token) and passes everything on to ``inner`` when given."""

    def __init__(self, inner=None):
        self.inner, self.calls, self.first_token = inner, 0, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token = time.perf_counter()
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


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
    import torch
    from transformers import TextStreamer

    prompt = render_prompt(tokenizer, messages)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    stops = stop_token_ids(tokenizer, model)
    kwargs = dict(
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
    )
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    text_stream = None
    if on_text is not None:

        class _Text(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                if text:
                    on_text(text)

        text_stream = _Text(tokenizer, skip_prompt=True, skip_special_tokens=True)
    streamer = _FirstTokenTimer(text_stream)
    kwargs["streamer"] = streamer

    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, **kwargs)
    seconds = time.perf_counter() - start
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    stopped = bool(new) and new[-1] in stops
    text = tokenizer.decode(new, skip_special_tokens=True)
    ttft = streamer.first_token - start if streamer.first_token is not None else None
    return Generation(text.strip(), int(enc["input_ids"].shape[1]), len(new), stopped, seconds, ttft)
