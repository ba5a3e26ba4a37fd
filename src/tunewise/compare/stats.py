"""How sure a comparison is: per-arm 95% intervals, paired tests of one arm against another on the
same examples, how many examples would separate two arms, and when an eval set is too small.

Methods (why each, in docs/compare.md):

* **Per-arm interval** of a mean score in [0, 1]. Pass/fail scores (every score 0 or 1) get the
  Wilson score interval: it stays inside [0, 1], keeps its width at 0 % and 100 %, and holds its
  coverage at small n where the textbook p ± 1.96·√(p(1-p)/n) does not. Graded scores (a share of
  checks passed, ROUGE-L, chrF, a judge's grade) get the Student-t interval of the mean (n − 1
  degrees of freedom), clipped to [0, 1]; when every score is the same the t-interval has no
  width, and the Wilson interval of that mean (the widest a [0, 1] score with that mean allows)
  is used instead.
* **Paired comparison** of arm A with arm B on the examples both answered: the differences
  d_i = A_i − B_i, their mean, an exact sign-flip (permutation) test of "no difference" (under it
  each d_i is as likely to be −d_i; every one of the 2^m sign patterns of the m non-zero
  differences is enumerated up to m = 20, beyond that 20,000 seeded random patterns), and the 95%
  interval obtained by inverting that same test (every shift δ for which d − δ is not rejected).
  The test and the interval therefore always agree; both are exact at any n (given symmetric
  differences), which a bootstrap is not at n = 8, and neither assumes normal scores. Zero
  differences (both arms equally right) carry no sign information and do not change the p-value.
* **Examples needed** to separate two arms: n = ((t₀.₉₇₅ + t₀.₈₀) · s_d / δ)², the paired-t sample
  size for 80 % power at the 5 % level, solved with the t quantiles at that n, where s_d is the
  observed spread of the per-example differences and δ the observed difference or, when that is
  smaller, the tolerance (the smallest difference that would count); never below the size at which
  the exact sign-flip test can reject at all (6 non-zero differences), and always more than the
  examples already used.
* **Smallest useful eval set** for a tolerance τ: n = ⌈z² · p(1 − p) / τ²⌉ with z = 1.96 and a
  typical pass rate p = 0.8, the size at which a single arm's 95% interval is ±τ wide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

import numpy as np

Z95 = 1.959963984540054
ALPHA = 0.05
POWER = 0.80
EXACT_MAX = 20  # enumerate all 2^m sign patterns up to this many differences
DRAWS = 20_000  # random sign patterns beyond it
SEED = 0
MIN_NONZERO = 6  # the two-sided exact sign-flip test cannot reach p < 0.05 with fewer (2/2^5 = 0.0625)
TYPICAL_PASS_RATE = 0.8
DEFAULT_TOLERANCE = 0.02  # compare's quality_tolerance unless the config sets one
EPS = 1e-12


def _t(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


# ---------------------------------------------------------------------------------------------
# One arm
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """The mean of an arm's per-example scores and its 95% interval."""

    mean: float
    low: float
    high: float
    n: int
    method: str  # "wilson" or "t"

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``."""
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(scores: Iterable[float | None]) -> Interval | None:
    """95% interval of the mean of scores in [0, 1] (missing scores skipped); None without any."""
    xs = [float(x) for x in scores if x is not None]
    n = len(xs)
    if n == 0:
        return None
    m = sum(xs) / n
    binary = all(x in (0.0, 1.0) for x in xs)
    spread = max(xs) - min(xs) > EPS
    if binary or n == 1 or not spread:
        lo, hi = wilson(m * n, n)
        return Interval(m, min(lo, m), max(hi, m), n, "wilson")
    s = float(np.std(xs, ddof=1))
    half = _t(1 - ALPHA / 2, n - 1) * s / math.sqrt(n)
    return Interval(m, max(0.0, m - half), min(1.0, m + half), n, "t")


# ---------------------------------------------------------------------------------------------
# Two arms on the same examples
# ---------------------------------------------------------------------------------------------


class _SignFlips:
    """Sums of ±d_i over sign patterns, kept as A = Σ s_i d_i and B = Σ s_i so that the sum for
    shifted differences d − δ is A − δB without redoing the patterns."""

    def __init__(self, d: np.ndarray):
        self.n = len(d)
        self.total = float(d.sum())
        self.exact = self.n <= EXACT_MAX
        if self.exact:
            a, b = np.zeros(1), np.zeros(1)
            for x in d:  # 2^n patterns, built by doubling
                a, b = np.concatenate([a + x, a - x]), np.concatenate([b + 1, b - 1])
            self.a, self.b = a, b
        else:
            rng = np.random.default_rng(SEED)
            a, b = np.empty(DRAWS), np.empty(DRAWS)
            step = max(1, 4_000_000 // self.n)
            for i in range(0, DRAWS, step):
                k = min(step, DRAWS - i)
                signs = rng.integers(0, 2, size=(k, self.n), dtype=np.int8) * 2 - 1
                a[i:i + k] = signs @ d
                b[i:i + k] = signs.sum(axis=1)
            self.a, self.b = a, b

    def p_value(self, shift: float = 0.0) -> float:
        """Two-sided p-value of "the differences minus ``shift`` are symmetric around 0"."""
        if self.n == 0:
            return 1.0
        obs = abs(self.total - shift * self.n)
        tol = 1e-9 * max(1.0, obs)
        hits = int(np.count_nonzero(np.abs(self.a - shift * self.b) >= obs - tol))
        if self.exact:
            return hits / len(self.a)
        return (hits + 1) / (len(self.a) + 1)


@dataclass(frozen=True)
class Paired:
    """Arm A minus arm B on the examples both were scored on."""

    diff: float  # mean of A_i − B_i
    low: float  # 95% interval of the difference (inverted sign-flip test)
    high: float
    p_value: float  # exact (or seeded Monte Carlo) sign-flip test of no difference
    n: int  # pairs
    nonzero: int  # pairs where the arms differ
    sd: float  # spread of the per-example differences (0 when n < 2)
    method: str

    @property
    def significant(self) -> bool:
        """The interval excludes zero (and so the test rejects "no difference" at 5 %)."""
        return self.n > 0 and self.p_value <= ALPHA and (self.low > 0 or self.high < 0)

    def beats(self, tolerance: float) -> bool:
        """A beat B: the difference is resolved (interval above 0) and larger than the tolerance."""
        return self.significant and self.diff > 0 and self.diff > tolerance

    def loses(self, tolerance: float) -> bool:
        """B beat A."""
        return self.significant and self.diff < 0 and -self.diff > tolerance

    def flipped(self) -> "Paired":
        """The same comparison seen from the other arm (B minus A)."""
        return replace(self, diff=_clean(-self.diff), low=_clean(-self.high), high=_clean(-self.low))

    def as_dict(self) -> dict:
        return asdict(self)


def paired(a: Sequence[float | None], b: Sequence[float | None]) -> Paired | None:
    """Compare two arms example by example (same order); None when no example has both scores."""
    d = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None], dtype=float)
    n = len(d)
    if n == 0:
        return None
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    nz = d[np.abs(d) > EPS]
    at_zero = _SignFlips(nz)  # zero differences do not change the p-value; fewer patterns to count
    p0 = at_zero.p_value()
    flips = _SignFlips(d) if len(nz) < n else at_zero
    low, high = _invert(flips, mean, float(d.min()), float(d.max()))
    if p0 > ALPHA:  # zero is not rejected, so it is inside the interval (the edge may sit exactly at 0)
        low, high = min(low, 0.0), max(high, 0.0)
    low, high = _clean(low), _clean(high)
    how = (f"exact sign-flip test over all 2^{len(nz)} sign patterns" if at_zero.exact
           else f"sign-flip test, {DRAWS:,} random sign patterns (seed {SEED})")
    return Paired(mean, low, high, p0, n, int(len(nz)), sd, how + "; interval by inverting it")


def _clean(x: float) -> float:
    """Bisection leftovers such as 3.7e-09 (and -0.0) as 0, so that reports do not print -0.000."""
    return 0.0 if abs(x) < 1e-6 else x


def _invert(flips: _SignFlips, mean: float, dmin: float, dmax: float) -> tuple[float, float]:
    """The shifts δ the test does not reject at 5 %, as [low, high], clipped to the [-1, 1] a
    difference of two [0, 1] scores can take (with under 6 pairs nothing is ever rejected)."""

    def accepted(delta: float) -> bool:
        return flips.p_value(delta) > ALPHA

    def edge(outer: float) -> float:
        if accepted(outer):
            return outer
        inside, out = mean, outer
        for _ in range(60):
            mid = (inside + out) / 2
            if accepted(mid):
                inside = mid
            else:
                out = mid
            if abs(out - inside) < 1e-5:
                break
        return inside

    return edge(min(-1.0, dmin)), edge(max(1.0, dmax))


# ---------------------------------------------------------------------------------------------
# How many examples
# ---------------------------------------------------------------------------------------------


def examples_needed(sd: float, effect: float, nonzero_share: float = 1.0, n_now: int = 0,
                    alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Held-out examples that would separate two arms whose per-example differences spread ``sd``,
    if the true difference were ``effect`` (80 % power, 5 % two-sided); None when ``effect`` is 0."""
    if effect <= 0:
        return None
    floor = math.ceil(MIN_NONZERO / max(nonzero_share, 1e-9))
    n = 0
    if sd > 0:
        n = ((Z95 + 0.8416212335729143) * sd / effect) ** 2  # normal start, then t quantiles at that n
        for _ in range(50):
            df = max(n - 1, 1.0)
            new = ((_t(1 - alpha / 2, df) + _t(power, df)) * sd / effect) ** 2
            if abs(new - n) < 1e-6:
                break
            n = new
    return max(math.ceil(n - 1e-9), floor, n_now + 1)


def needed_for(p: Paired, tolerance: float) -> int | None:
    """:func:`examples_needed` for a comparison that did not resolve: the observed difference, or
    the tolerance when the observed one is smaller."""
    if p.sd == 0 and p.diff == 0:
        return None  # the arms agree on every example: nothing observed to estimate from
    share = p.nonzero / p.n if p.n else 1.0
    return examples_needed(p.sd, max(abs(p.diff), tolerance), share if p.nonzero else 1.0, p.n)


def min_eval_size(tolerance: float, rate: float = TYPICAL_PASS_RATE) -> int | None:
    """Eval examples at which one arm's 95% interval for a pass rate ``rate`` is ±``tolerance``."""
    if tolerance <= 0:
        return None
    return math.ceil(Z95 * Z95 * rate * (1 - rate) / (tolerance * tolerance) - 1e-9)


def eval_size_check(n: int, tolerance: float, rate: float = TYPICAL_PASS_RATE) -> dict:
    """Whether ``n`` eval examples are enough for differences of ``tolerance``, with the caveat a
    report leads with when they are not."""
    need = min_eval_size(tolerance, rate)
    half = Z95 * math.sqrt(rate * (1 - rate) / n) if n > 0 else None
    small = need is not None and n < need
    msg = None
    if small:
        msg = (f"Small eval set: {n:,} held-out example{'s' if n != 1 else ''}. At a pass rate near {rate:.0%} "
               f"one arm's score is known only to about ±{half:.2f} (95%), wider than the tolerance of "
               f"{tolerance:.2f}; that takes about {need:,} examples (1.96² × {rate:.1f} × {1 - rate:.1f} / "
               f"{tolerance:.2f}²). Read the intervals and the resolved/unresolved status before acting on a difference.")
    return {"n": n, "tolerance": tolerance, "typical_rate": rate, "half_width": half,
            "min_examples": need, "small": small, "message": msg}


# ---------------------------------------------------------------------------------------------
# What compare records per arm
# ---------------------------------------------------------------------------------------------

QUALITY_METRICS = ("checks", "checks_all", "rouge_l", "chrf", "exact_match", "judge")


def arm_uncertainty(results: Sequence, primary: str) -> dict:
    """For one arm's scored results (``.scores``, ``.checks``): the per-example primary scores
    (in eval order, None where unscored; what paired comparisons use) and 95% intervals of the
    primary metric, of every quality metric and of every check's pass rate."""
    scores = [r.scores.get(primary) for r in results]
    quality = mean_interval(scores)
    metrics = {}
    for m in QUALITY_METRICS:
        got = mean_interval([r.scores.get(m) for r in results])
        if got is not None:
            metrics[m] = got.as_dict()
    checks: dict[str, list[float]] = {}
    for r in results:
        for name in r.checks:
            if name not in checks:
                having = [bool(x.checks[name]) for x in results if name in x.checks]
                checks[name] = list(wilson(sum(having), len(having)))
    return {"scores": scores, "quality_interval": quality.as_dict() if quality else None,
            "metric_intervals": metrics, "check_rate_intervals": checks}
