"""The reference engine: Hugging Face ``generate`` on the model as trained (adapters unmerged).

Exact and slow: one sequence at a time, the model's own chat template, every end-of-turn id as a
stop. The fast engines are checked against it (:mod:`tunewise.infer.parity`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator, Sequence

from tunewise.infer.types import Completion, Request

_DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def render_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt exactly as the model sees it (the tokenizer's chat template applied)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and the generation config's eos list."""
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


class StopTrimmer:
    """Cuts generated text at the first stop string and, while streaming, holds back the tail that
    could still turn out to be the start of one (so a stop string is never shown, even in part)."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to the earliest stop string, and whether one was found."""
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[:min(hits)], True) if hits else (text, False)

    def feed(self, piece: str) -> str:
        """Add streamed text; returns what is now safe to show."""
        if self.stopped:
            return ""
        self.text, self.stopped = self.cut(self.text + piece)
        safe = len(self.text) if self.stopped else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


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


def generate_one(model, tokenizer, request: Request, on_text: Callable[[str], None] | None = None,
                 engine: str = "hf", cancel: threading.Event | None = None) -> Completion:
    """One assistant turn for ``request`` with Hugging Face ``generate``; ``on_text`` receives the
    raw decoded text as it streams (stop strings not yet cut). temperature 0 is greedy; a seed makes
    sampling repeatable. Setting ``cancel`` ends generation after the current token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

    prompt = render_prompt(tokenizer, request.messages)
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    stops = stop_token_ids(tokenizer, model)
    kwargs = dict(
        max_new_tokens=request.max_tokens,
        eos_token_id=stops,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0],
    )
    if request.temperature and request.temperature > 0:
        kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p, top_k=None)
        if request.seed is not None:
            torch.manual_seed(request.seed)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    stop_strings = [s for s in request.stop if s]
    if stop_strings:
        kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)

    if cancel is not None:

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled()])

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
    text, hit = StopTrimmer(stop_strings).cut(tokenizer.decode(new, skip_special_tokens=True))
    ended = bool(new) and new[-1] in stops
    ttft = streamer.first_token - start if streamer.first_token is not None else None
    return Completion(text=text.strip(), input_tokens=int(enc["input_ids"].shape[1]), output_tokens=len(new),
                      finish_reason="stop" if (ended or hit) else "length", seconds=seconds, ttft_s=ttft,
                      engine=engine)


class HFEngine:
    """The reference :class:`~tunewise.infer.types.Engine`: any model tunewise can load (embedded
    name, HF directory, GGUF, run directory with its adapter unmerged), one request at a time.

    ``precision``: "auto" (bf16 where the hardware computes it natively, else fp32), "fp32", "bf16"
    or "fp16". A loaded model can be wrapped with :meth:`from_loaded`.
    """

    name = "hf"

    def __init__(self, ref: str, precision: str = "auto", device: str | None = None):
        from tunewise.models import load_model, load_tokenizer, resolve_dtype

        dtype = resolve_dtype(None if precision == "auto" else precision, device)
        self._setup(load_model(ref, dtype=dtype, device=device), load_tokenizer(ref), str(ref))

    @classmethod
    def from_loaded(cls, model, tokenizer, ref: str = "") -> "HFEngine":
        """Wrap an already loaded model and tokenizer (no second copy in memory)."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, ref or str(getattr(model.config, "_name_or_path", "")))
        return self

    def _setup(self, model, tokenizer, ref: str) -> None:
        self.hf_model, self.tokenizer, self.model = model, tokenizer, ref
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.precision = _DTYPE_NAMES.get(dtype, dtype)
        self._lock = threading.Lock()  # one generate at a time: torch already uses every core

    def generate(self, requests: Sequence[Request],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        out = []
        for i, req in enumerate(requests):
            with self._lock:
                c = generate_one(self.hf_model, self.tokenizer, req, engine=self.name)
            out.append(c)
            if on_result is not None:
                on_result(i, c)
        return out

    def stream(self, request: Request) -> Iterator[str | Completion]:
        """Text pieces as they are decoded (stop strings never shown), then the Completion."""
        pieces: queue.Queue = queue.Queue()
        result: dict = {}
        cancel = threading.Event()  # set when the consumer stops reading (e.g. a client went away)

        def work():
            try:
                with self._lock:
                    result["c"] = generate_one(self.hf_model, self.tokenizer, request,
                                               on_text=pieces.put, engine=self.name, cancel=cancel)
            except BaseException as e:  # handed to the consumer below
                result["e"] = e
            finally:
                pieces.put(None)

        thread = threading.Thread(target=work, daemon=True, name=f"tunewise-{self.name}-stream")
        thread.start()
        trim, started = StopTrimmer(request.stop), False
        try:
            while (piece := pieces.get()) is not None:
                if not started:  # the completion's text is stripped; so is the stream's start
                    piece = piece.lstrip()
                    started = bool(piece)
                if out := trim.feed(piece):
                    yield out
        finally:
            cancel.set()
            thread.join()  # also when the consumer stopped early: generation has ended when close() returns
        if "e" in result:
            raise result["e"]
        if tail := trim.flush().rstrip():
            yield tail
        yield result["c"]

    def close(self) -> None:
        self.hf_model = None
