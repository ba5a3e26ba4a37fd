"""Decode-speed parity between local arms: a local arm's cost per query is priced from its measured
speed, so two arms running a model of the same size at the same context length must decode at about
the same rate. When they do not, something other than the approach is being measured and the cost
comparison would be wrong: compare says so.

The usual cause, measured (docs/compare.md, "Decode speed"): other processes on the machine. PyTorch
decodes one sequence on all cores with OpenMP, whose threads meet at a barrier after every small
op; when another process takes one of two cores, every op waits for the descheduled thread and
decoding fell from 14.5 to 5.8 tokens/s (fp32, AVX2 path) and from 21.6 to 4.8 (bf16) with a single
busy process beside it. So compare also measures how much CPU *other* processes used while each
local arm answered (:class:`OtherLoad`) and names the arms whose timings that contaminated.
"""

from __future__ import annotations

import time
from typing import Any

# Arms of equal model size whose decoding rates (tokens/s after the first token, median over the
# queries) differ by more than this fraction of the faster one get a warning. Run-to-run noise of
# the same model on a quiet 2-core machine was under 10 %; a 25 % gap is a fault, not noise.
DECODE_SPEED_MARGIN = 0.25
# Decoding slows as the context grows (attention reads the whole KV cache); arms are only compared
# when their mean context (prompt + half the answer) is within this factor of each other.
CONTEXT_RATIO = 1.5


def _context(arm: dict[str, Any]) -> float:
    return (arm.get("mean_input_tokens") or 0) + (arm.get("mean_output_tokens") or 0) / 2


def decode_parity(arms: list[dict[str, Any]], margin: float = DECODE_SPEED_MARGIN,
                  context_ratio: float = CONTEXT_RATIO) -> list[str]:
    """Warnings for pairs of local arms (same parameter count, comparable context) whose decoding
    rates differ by more than ``margin``. Each arm dict needs ``name``, ``kind``, ``status``,
    ``model_params``, ``decode_tokens_per_s``, ``mean_input_tokens`` and ``mean_output_tokens``."""
    local = [a for a in arms if a.get("status") == "ok" and a.get("kind") != "api"
             and a.get("decode_tokens_per_s") and a.get("model_params")]
    warnings = []
    seen: set[str] = set()
    for i, a in enumerate(local):
        for b in local[i + 1:]:
            if a["model_params"] != b["model_params"]:
                continue
            ca, cb = _context(a), _context(b)
            if min(ca, cb) <= 0 or max(ca, cb) / min(ca, cb) > context_ratio:
                continue
            fast, slow = (a, b) if a["decode_tokens_per_s"] >= b["decode_tokens_per_s"] else (b, a)
            gap = 1 - slow["decode_tokens_per_s"] / fast["decode_tokens_per_s"]
            if gap > margin and slow["name"] not in seen:
                seen.add(slow["name"])
                warnings.append(
                    f"'{slow['name']}' decoded at {slow['decode_tokens_per_s']:.1f} tokens/s, "
                    f"{gap:.0%} slower than '{fast['name']}' ({fast['decode_tokens_per_s']:.1f} tokens/s) with a "
                    f"model of the same size and a similar context: its latency and cost per query may "
                    f"reflect the machine (other load, memory) rather than the approach; rerun the "
                    f"comparison on a quiet machine before trusting its cost column")
    return warnings


# Other processes keeping more than this many cores busy (on average, while an arm answered) make
# its timings unreliable: a quarter of a core already cost decoding ~20 % on the 2-core machine.
OTHER_LOAD_CORES = 0.25


class OtherLoad:
    """Average number of cores that *other* processes kept busy during a ``with`` block: the
    machine's busy CPU time (psutil, all processes) minus this process's own (children included),
    divided by the wall time. ``cores`` is set on exit."""

    def __init__(self):
        self.cores: float | None = None

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))

    @staticmethod
    def _own() -> float:
        import psutil

        t = psutil.Process().cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> "OtherLoad":
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc) -> bool:
        wall = time.perf_counter() - self._t0
        other = (self._busy() - self._busy0) - (self._own() - self._own0)
        self.cores = max(0.0, other / wall) if wall > 0 else 0.0
        return False


def load_warnings(arms: list[dict[str, Any]], limit: float = OTHER_LOAD_CORES) -> list[str]:
    """Warnings for local arms that answered while other processes kept more than ``limit`` cores busy."""
    out = []
    for a in arms:
        load = a.get("other_cpu_load")
        if a.get("status") == "ok" and a.get("kind") != "api" and load is not None and load > limit:
            out.append(f"while '{a['name']}' answered, other processes kept {load:.2f} cores of this machine busy: "
                       f"its latency and cost per query are inflated (a busy core slowed decoding 2.5-4.5x in "
                       f"tunewise's measurements); rerun on a quiet machine")
    return out


def prefill_measure(answers: list[Any]) -> tuple[float | None, float]:
    """Seconds per prompt token spent on prefill (median over answers) and the mean prompt tokens
    the engine took from its prompt cache instead (``extra["cached_tokens"]``; 0 for an engine
    without one). Prefill = time to the first token less one decoding step. ``None`` without a
    first-token time (an API arm)."""
    rates, cached = [], []
    for a in answers:
        ttft, n_in, n_out, secs = (getattr(a, k, None) for k in ("ttft_s", "input_tokens", "output_tokens", "seconds"))
        hit = int(((getattr(a, "extra", None) or {}).get("cached_tokens")) or 0)
        cached.append(hit)
        if ttft is None or not n_in or n_in - hit <= 0:
            continue
        step = (secs - ttft) / (n_out - 1) if n_out and n_out > 1 and secs and secs > ttft else 0.0
        if ttft - step > 0:
            rates.append((ttft - step) / (n_in - hit))
    mean_cached = sum(cached) / len(cached) if cached else 0.0
    if not rates:
        return None, mean_cached
    rates.sort()
    mid = len(rates) // 2
    return (rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2), mean_cached
