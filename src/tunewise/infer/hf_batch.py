"""Hugging Face ``generate`` on many requests at once: prompts left-padded into batches of
``batch_size`` rows that decode together (one forward pass per new token for the whole batch).

The same model, template, end-of-turn ids and stop-string rule as the reference
(:mod:`tunewise.infer.hf`); each row keeps its own ``max_tokens`` and stop strings (a row that is
done is padded while the others go on). transformers' continuous batching
(``model.generate_batch``) also runs on CPU but was slower than a padded batch there (its paged
KV cache is sized from the machine's free memory and its attention builds a mask over the whole
cache every step): docs/infer.md, "Choosing the fast engine".

Greedy answers equal the one-at-a-time reference in fp32. In bf16 the padded batch computes the
same logits in a different order, so a near-tie can pick another token and the answers then part.
Sampling with a seed runs the request alone, so a seed repeats its answer whatever else is queued.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

from tunewise.errors import TunewiseError
from tunewise.infer.hf import HFEngine, StopTrimmer, _FirstTokenTimer, generate_one, render_prompt, stop_token_ids
from tunewise.infer.types import Completion, Request

DEFAULT_BATCH_SIZE = 16


def _batch_key(request: Request) -> tuple:
    """Requests that may share one ``generate`` call: greedy ones together, sampled ones with the
    same temperature and top_p together; a seeded sampled request alone (its own key)."""
    if not request.temperature or request.temperature <= 0:
        return ("greedy",)
    if request.seed is not None:
        return ("seeded", id(request))
    return ("sample", request.temperature, request.top_p)


def stop_string_end(tokenizer, tokens: Sequence[int], stops: Sequence[str]) -> int | None:
    """The number of tokens after which the decoded text first contains one of ``stops`` (where
    generation ends on a stop string), or None. Containment only grows with the prefix, so a binary
    search finds it with a few decodes."""
    stops = [s for s in stops if s]
    if not stops:
        return None

    def hit(k: int) -> bool:
        text = tokenizer.decode(list(tokens[:k]), skip_special_tokens=True)
        return any(s in text for s in stops)

    if not hit(len(tokens)):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


class HFBatchEngine(HFEngine):
    """:class:`~tunewise.infer.types.Engine` that answers ``generate``'s requests in padded batches
    of ``batch_size``; ``stream`` answers one request at a time as the reference does.

    ``precision`` as :class:`HFEngine` ("auto": bf16 where the CPU or GPU computes it natively,
    else fp32). ``Completion.seconds`` is the wall time of the request's batch and ``ttft_s`` the
    batch's prefill plus first step.
    """

    name = "hf-batch"

    def __init__(self, ref: str, precision: str = "auto", device: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, ctx_per_request: int | None = None):
        # ctx_per_request (llama.cpp's KV-cache sizing, passed by infer.run.open_checked) has no
        # meaning here: generate's cache grows with the batch.
        if batch_size < 1:
            raise TunewiseError(f"batch_size={batch_size} is too small", "use batch_size >= 1")
        super().__init__(ref, precision=precision, device=device)
        self.batch_size = batch_size

    @property
    def n_parallel(self) -> int:
        """Requests decoded together (what :func:`tunewise.infer.run.concurrency_of` reports)."""
        return self.batch_size

    def generate(self, requests: Sequence[Request],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        prompts = [render_prompt(self.tokenizer, r.messages) for r in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_batch_key(r), []).append(i)
        out: list[Completion | None] = [None] * len(requests)
        for key, members in groups.items():
            # Similar lengths side by side: less padding, and rows that end early end together.
            members.sort(key=lambda i: (requests[i].max_tokens, lengths[i]))
            for at in range(0, len(members), self.batch_size):
                chunk = members[at:at + self.batch_size]
                with self._lock:
                    if key[0] == "seeded":
                        done = [generate_one(self.hf_model, self.tokenizer, requests[chunk[0]], engine=self.name)]
                    else:
                        done = self._batch([requests[i] for i in chunk], [prompts[i] for i in chunk])
                for i, c in zip(chunk, done):
                    out[i] = c
                    if on_result is not None:
                        on_result(i, c)
        return out  # type: ignore[return-value]

    def _batch(self, requests: list[Request], prompts: list[str]) -> list[Completion]:
        """One left-padded ``generate`` call; each row stops at its own end-of-turn, stop string or
        ``max_tokens``."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        stops = stop_token_ids(tok, self.hf_model)
        pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.hf_model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        width = enc["input_ids"].shape[1]
        limits = [r.max_tokens for r in requests]
        stop_strings = [[s for s in r.stop if s] for r in requests]

        class _PerRow(StoppingCriteria):
            """Row i is done at its own max_tokens or when its own stop string appears."""

            def __call__(self, input_ids, scores, **kw):
                n = input_ids.shape[1] - width
                done = [n >= limit for limit in limits]
                for i, row_stops in enumerate(stop_strings):
                    if row_stops and not done[i]:
                        text = tok.decode(input_ids[i, width:].tolist(), skip_special_tokens=True)
                        done[i] = any(s in text for s in row_stops)
                return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

        first = requests[0]
        kwargs = dict(max_new_tokens=max(limits), eos_token_id=stops, pad_token_id=pad,
                      stopping_criteria=StoppingCriteriaList([_PerRow()]))
        if first.temperature and first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        timer = _FirstTokenTimer()
        start = time.perf_counter()
        with torch.inference_mode():
            generated = self.hf_model.generate(**enc, **kwargs, streamer=timer)
        seconds = time.perf_counter() - start
        ttft = timer.first_token - start if timer.first_token is not None else None

        done = []
        for i, r in enumerate(requests):
            row = generated[i, width:].tolist()[:r.max_tokens]
            end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
            hit_at = stop_string_end(tok, row[:end], stop_strings[i])
            ended = end > 0 and row[end - 1] in stops
            row = row[:hit_at] if hit_at is not None else row[:end]
            text, _ = StopTrimmer(stop_strings[i]).cut(tok.decode(row, skip_special_tokens=True))
            done.append(Completion(
                text=text.strip(), input_tokens=int(enc["attention_mask"][i].sum()), output_tokens=len(row),
                finish_reason="stop" if (ended or hit_at is not None) else "length", seconds=seconds,
                ttft_s=ttft, engine=self.name, extra={"batch": len(requests)}))
        return done
