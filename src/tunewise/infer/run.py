"""Running a whole eval set through an engine, and the parity gate that decides whether a fast
engine may do it: what `tunewise eval` and `tunewise compare` share.

:func:`run_all` measures two different things on the same requests:

- **latency at concurrency 1**: the first ``latency_samples`` requests are answered one after
  another, alone on the engine, so their ``seconds`` are what one user waits (prefill + decoding,
  no queueing, no neighbours in the batch);
- **throughput at the engine's concurrency**: the remaining requests are submitted at once
  (continuous batching fills ``n_parallel`` slots); generated tokens and answered queries per
  second of wall time over that batch are what the hardware sustains.

An engine without batching (the HF reference) answers everything one at a time: every request is a
latency sample and the throughput is at concurrency 1.

:func:`open_checked` opens the engine a comparison asked for, and when it is the fast engine,
checks it against the HF reference (:func:`tunewise.infer.parity.check_parity`) on a few of the
eval set's own prompts before anything else runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from tunewise.errors import TunewiseError
from tunewise.infer.types import Completion, Engine, Request

#: What to do when the fast engine fails the parity gate.
ON_PARITY_FAILURE = ("fallback", "stop")


def resolve_engine(engine: str) -> str:
    """ "auto" -> "llama.cpp" when xllamacpp is installed, else "hf"; others as they are."""
    from tunewise.infer import ENGINES, fast_engine_available

    if engine not in ENGINES:
        raise TunewiseError(f"unknown engine {engine!r}", f"use one of: {', '.join(ENGINES)}")
    if engine == "auto":
        return "llama.cpp" if fast_engine_available() else "hf"
    return engine


def concurrency_of(engine: Engine) -> int:
    """How many requests the engine decodes together (llama.cpp's slots, an API client's pool)."""
    return int(getattr(engine, "n_parallel", None) or getattr(engine, "concurrency", None) or 1)


@dataclass
class RunStats:
    """How an eval set went through an engine (see the module docstring)."""

    engine: str
    precision: str
    concurrency: int  # requests decoded together in the throughput part: the slots, or fewer requests
    n: int
    sequential: list[int]  # indexes answered alone: the latency samples
    batch_n: int  # requests in the throughput part
    batch_wall_s: float  # its wall time
    batch_output_tokens: int
    slots: int = 1  # requests the engine can decode together

    @property
    def tokens_per_s(self) -> float | None:
        return self.batch_output_tokens / self.batch_wall_s if self.batch_wall_s > 0 else None

    @property
    def queries_per_hour(self) -> float | None:
        return self.batch_n / self.batch_wall_s * 3600 if self.batch_wall_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "precision": self.precision, "throughput_concurrency": self.concurrency,
                "throughput_qph": self.queries_per_hour, "throughput_tokens_per_s": self.tokens_per_s,
                "throughput_queries": self.batch_n, "throughput_wall_s": self.batch_wall_s,
                "throughput_slots": self.slots, "latency_samples": len(self.sequential)}


def run_all(engine: Engine, requests: Sequence[Request], latency_samples: int = 5,
            on_result: Callable[[int, Completion], None] | None = None) -> tuple[list[Completion], RunStats]:
    """Answer every request (in order) and measure latency and throughput; ``on_result(i, c)`` is
    called as each finishes. With a batching engine the first ``latency_samples`` requests run
    alone (latency at concurrency 1) and the rest at once (throughput); a non-batching engine runs
    all of them alone, so every one is a latency sample."""
    n, conc = len(requests), concurrency_of(engine)
    k = n if conc == 1 else min(max(latency_samples, 0), n)
    out: list[Completion | None] = [None] * n
    for i in range(k):
        out[i] = engine.generate([requests[i]])[0]
        if on_result is not None:
            on_result(i, out[i])
    rest = list(requests[k:])

    def done(j: int, c: Completion) -> None:
        out[k + j] = c
        if on_result is not None:
            on_result(k + j, c)

    start = time.perf_counter()
    if rest:
        engine.generate(rest, on_result=done)
    wall = time.perf_counter() - start
    if rest:
        # fewer requests left than slots (a small eval set): only that many were ever in flight
        stats = RunStats(engine.name, engine.precision, min(conc, len(rest)), n, list(range(k)), len(rest), wall,
                         sum(c.output_tokens for c in out[k:]), slots=conc)
    else:  # everything ran alone: throughput at concurrency 1 from the requests' own times
        stats = RunStats(engine.name, engine.precision, 1, n, list(range(k)), n,
                         sum(c.seconds for c in out), sum(c.output_tokens for c in out), slots=conc)
    return out, stats


def ctx_for(tokenizer, message_lists: Sequence[list[dict]], max_tokens: int, floor: int = 512) -> int:
    """Context one request needs: the longest rendered prompt + ``max_tokens``, with a margin,
    rounded up to 256 (llama.cpp's KV cache is ``n_parallel`` times this, so it is not guessed)."""
    from tunewise.infer.hf import render_prompt

    longest = max((len(tokenizer(render_prompt(tokenizer, m), add_special_tokens=False)["input_ids"])
                   for m in message_lists), default=0)
    need = longest + max_tokens + 32
    return max(floor, -(-need // 256) * 256)


def progress_callback(prog) -> Callable[[int, Completion], None]:
    """An ``on_result`` that advances a :func:`tunewise.progress.progress` task with tokens/s."""
    state = {"tokens": 0, "start": time.perf_counter()}

    def on_result(i: int, c: Completion) -> None:
        state["tokens"] += c.output_tokens
        spent = time.perf_counter() - state["start"]
        prog.update(advance=1, tps=f"{state['tokens'] / spent:,.0f} tok/s" if spent > 0 else "")

    return on_result


# ---------------------------------------------------------------------------------------------
# The parity gate
# ---------------------------------------------------------------------------------------------


@dataclass
class Checked:
    """An engine ready for an eval set, and what the gate found."""

    engine: Engine
    parity: Any = None  # the ParityReport, None when the engine is the reference itself
    fell_back: bool = False
    notes: list[str] = field(default_factory=list)


#: new tokens of each parity-gate answer: cheap, and a near-tie late in a long answer does not fail it
PARITY_MAX_TOKENS = 32


def open_checked(ref: str, engine: str, precision: str, reference: Engine | Callable[[], Engine],
                 prompts: Sequence[Request], on_failure: str = "fallback", n_parallel: int | None = None,
                 ctx_per_request: int | None = None, max_tokens: int = PARITY_MAX_TOKENS) -> Checked:
    """Open ``engine`` on ``ref``; when it is the fast one, check its greedy answers to ``prompts``
    (cut to ``max_tokens``) against ``reference`` (an HF engine, or a function that opens one).

    On a failed check, ``on_failure`` decides: "fallback" answers with the reference engine (a
    loud note says so), "stop" raises a TunewiseError with the parity summary.
    """
    from tunewise.infer import open_engine
    from tunewise.infer.parity import check_parity

    if on_failure not in ON_PARITY_FAILURE:
        raise TunewiseError(f"on_parity_failure {on_failure!r} is not known", f"use one of: {', '.join(ON_PARITY_FAILURE)}")
    name = resolve_engine(engine)
    ref_engine = None if callable(reference) else reference  # an engine, or a function that opens one

    def get_reference() -> Engine:
        nonlocal ref_engine
        if ref_engine is None:
            ref_engine = reference()
        return ref_engine

    if name == "hf":
        return Checked(get_reference(), notes=[f"engine hf (the reference) for {ref}: no parity check needed"])
    kwargs = {"ctx_per_request": ctx_per_request} if ctx_per_request else {}
    fast = open_engine(ref, engine=name, precision=precision, n_parallel=n_parallel, **kwargs)
    short = [replace(p, max_tokens=min(p.max_tokens, max_tokens)) for p in prompts]
    report = check_parity(get_reference(), fast, short)
    if report.passed:
        return Checked(fast, report, notes=[f"{ref}: {report.summary()}"])
    fast.close()
    if on_failure == "stop":
        raise TunewiseError(f"{ref}: the fast engine disagrees with the reference — {report.summary()}",
                            "set on_parity_failure: fallback (or engine: hf) to answer with the reference engine, "
                            "or try precision f32")
    note = (f"PARITY FAILED for {ref}: {report.summary()}. Answering with the reference engine "
            f"({get_reference().name} {get_reference().precision}) instead: slower, but exact")
    return Checked(get_reference(), report, fell_back=True, notes=[note])
