"""Decode-speed parity between local arms: a local arm's cost per query is priced from its measured
speed, so two arms running a model of the same size at the same context length must decode at about
the same rate. When they do not, something other than the approach is being measured (a slowed
process, another dtype, an unmerged adapter) and the cost comparison would be wrong: compare says so.
"""

from __future__ import annotations

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
