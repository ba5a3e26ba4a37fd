"""The parity gate: before a fast engine's answers are trusted, compare them with the reference's.

Both engines answer the same prompts greedily; the answers are compared token by token (with the
reference's tokenizer when it has one, else by words). Two figures, each with a stated minimum per
precision of the fast engine:

- ``identical``: the share of prompts whose greedy answer is the same text;
- ``mean_prefix``: the mean share of the longer answer that the two have in common from the start
  (1.0 = identical; a late divergence costs little, an early one a lot).

Greedy decoding amplifies tiny numeric differences: once two engines pick a different token, the
rest of the answer differs. Lower precision diverges earlier, so the tolerance depends on it. The
defaults were measured on SmolLM2-135M-Instruct (HF fp32 vs llama.cpp; docs/infer.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from tunewise.infer.types import Engine, Request


@dataclass(frozen=True)
class Tolerance:
    """The least a fast engine must agree with the reference to pass."""

    min_identical: float  # share of prompts with the same greedy text
    min_prefix: float  # mean common-prefix share


#: Per precision of the fast engine, measured on SmolLM2-135M-Instruct (HF fp32 reference, 8 short
#: prompts, 48 new tokens; docs/infer.md): llama.cpp f16 gave 100 % identical answers, q8_0 25 %
#: identical with a 41 % mean common prefix (its answers are fluent but part ways early: small
#: models are sensitive to 8-bit rounding). f32/f16 must agree almost everywhere; q8_0 only has to
#: start alike, which still fails a wrong template, tokenizer or model (~0 % identical). bf16 is not
#: measured yet and gets the f16 rule loosened a step.
TOLERANCES: dict[str, Tolerance] = {
    "f32": Tolerance(0.85, 0.95),
    "fp32": Tolerance(0.85, 0.95),
    "f16": Tolerance(0.75, 0.9),
    "fp16": Tolerance(0.75, 0.9),
    "bf16": Tolerance(0.5, 0.75),
    "q8_0": Tolerance(0.125, 0.3),
}
#: For any other precision (e.g. 4-bit GGUFs): only that answers mostly start alike.
LOOSE = Tolerance(0.0, 0.5)


def tolerance_for(precision: str) -> Tolerance:
    return TOLERANCES.get(precision.lower(), LOOSE)


def spread_prompts(groups: Sequence[Sequence], n: int) -> list:
    """The first ``n`` prompts taken in turn from each group (one group per arm that uses the model):
    the check then covers every kind of prompt the engine will answer — short zero-shot prompts and
    the long few-shot and RAG ones — not only the first arm's."""
    picked: list = []
    for i in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if i < len(g) and len(picked) < n:
                picked.append(g[i])
    return picked


@dataclass
class Divergence:
    index: int  # which prompt
    position: int  # the first token (or word) that differs
    reference: str  # the reference's answer from a little before that point
    fast: str


@dataclass
class ParityReport:
    reference: str  # "hf fp32"
    fast: str  # "llama.cpp q8_0"
    precision: str
    n: int
    identical: float
    mean_prefix: float
    tolerance: Tolerance
    unit: str  # "tokens" or "words"
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.identical >= self.tolerance.min_identical and self.mean_prefix >= self.tolerance.min_prefix

    @property
    def first_divergence(self) -> Divergence | None:
        return min(self.divergences, key=lambda d: d.position, default=None)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        line = (f"parity {verdict}: {self.fast} vs {self.reference} on {self.n} prompts: "
                f"{self.identical:.0%} identical (min {self.tolerance.min_identical:.0%}), "
                f"common prefix {self.mean_prefix:.0%} (min {self.tolerance.min_prefix:.0%})")
        first = self.first_divergence
        if first is not None:
            line += f"; earliest divergence: prompt {first.index + 1} at {self.unit[:-1]} {first.position}"
        return line

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


def _units(text: str, tokenizer) -> list:
    if tokenizer is None:
        return text.split()
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def compare_texts(ref_texts: Sequence[str], fast_texts: Sequence[str], tokenizer=None,
                  precision: str = "", tolerance: Tolerance | None = None, reference: str = "reference",
                  fast: str = "fast") -> ParityReport:
    """The report for two lists of answers to the same prompts (greedy)."""
    identical, prefixes, divergences = 0, [], []
    for i, (a, b) in enumerate(zip(ref_texts, fast_texts)):
        if a == b:
            identical += 1
            prefixes.append(1.0)
            continue
        ua, ub = _units(a, tokenizer), _units(b, tokenizer)
        k = _common_prefix(ua, ub)
        longest = max(len(ua), len(ub))
        prefixes.append(k / longest if longest else 1.0)
        lead = max(0, k - 3)
        show = (lambda u: tokenizer.decode(u[lead:k + 8])) if tokenizer is not None else (lambda u: " ".join(u[lead:k + 8]))
        divergences.append(Divergence(i, k, show(ua), show(ub)))
    n = len(prefixes)
    return ParityReport(reference=reference, fast=fast, precision=precision, n=n,
                        identical=identical / n if n else 0.0, mean_prefix=sum(prefixes) / n if n else 0.0,
                        tolerance=tolerance or tolerance_for(precision),
                        unit="tokens" if tokenizer is not None else "words", divergences=divergences)


def check_parity(reference: Engine, fast: Engine, requests: Sequence[Request],
                 tolerance: Tolerance | None = None) -> ParityReport:
    """Answer ``requests`` greedily with both engines and compare (see the module docstring).
    ``tolerance`` defaults to :data:`TOLERANCES` for the fast engine's precision."""
    greedy = [dataclasses.replace(r, temperature=0.0, seed=None) for r in requests]
    ref = reference.generate(greedy)
    out = fast.generate(greedy)
    return compare_texts([c.text for c in ref], [c.text for c in out], getattr(reference, "tokenizer", None),
                         precision=fast.precision, tolerance=tolerance,
                         reference=f"{reference.name} {reference.precision}", fast=f"{fast.name} {fast.precision}")
