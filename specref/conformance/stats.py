"""The statistics of the conformance kit: a G-test of samples against an exact law, and the power it has.

The G-test (a likelihood-ratio test; Sokal & Rohlf, *Biometry*) compares observed counts O_c with the counts
E_c = N·P(c) an exact law predicts: G = 2 Σ O_c ln(O_c / E_c) is asymptotically χ² with (cells − 1) degrees
of freedom when the sampler follows the law. Cells expected fewer than 5 times are pooled into one, the
usual condition for the χ² approximation.

Power: against an alternative law Q, G is asymptotically noncentral χ² with noncentrality λ = N·χ²(Q‖P)
(the Pearson divergence Σ (Q_c − P_c)² / P_c). Since TV(Q, P) ≤ ½·sqrt(χ²(Q‖P)) (Cauchy-Schwarz), every
alternative with total variation at least t on the tested cells has λ ≥ 4·N·t²: `detectable_tv` is the
smallest t the test flags with a stated power whatever the shape of the deviation.

Distribution functions come from `torch.special` (regularised incomplete gamma), so the kit needs no SciPy;
the tests check them against SciPy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import torch

MIN_EXPECTED = 5.0  # cells expected fewer times than this are pooled


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for X ~ χ²(df): the regularised upper incomplete gamma Q(df/2, x/2)."""
    if x <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(x / 2, dtype=torch.float64)))


def ncx2_cdf(x: float, df: int, lam: float) -> float:
    """P(X <= x) for X ~ noncentral χ²(df, λ): a Poisson(λ/2) mixture of central χ²(df + 2j) laws."""
    if x <= 0:
        return 0.0
    half = lam / 2
    top = int(half + 12 * math.sqrt(half) + 60)  # the Poisson weights beyond are < 1e-30
    j = torch.arange(top + 1, dtype=torch.float64)
    log_weights = -half + j * math.log(half) - torch.lgamma(j + 1) if half > 0 else torch.where(j == 0, 0.0, -math.inf)
    cdfs = torch.special.gammainc(df / 2 + j, torch.tensor(x / 2, dtype=torch.float64))
    return float((log_weights.exp() * cdfs).sum())


def bisect(f: Callable[[float], float], lo: float, hi: float, steps: int = 200) -> float:
    """The root of the increasing function f on [lo, hi], by bisection (f(lo) < 0 < f(hi))."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def critical_value(df: int, alpha: float) -> float:
    """The c with P(χ²(df) > c) = alpha: G above it is flagged."""
    hi = df + 10.0
    while chi2_sf(hi, df) > alpha:
        hi *= 2
    return bisect(lambda c: alpha - chi2_sf(c, df), 0.0, hi)


def noncentrality_for_power(df: int, alpha: float, power: float) -> float:
    """The λ at which a level-alpha χ²(df) test rejects with probability `power`."""
    c = critical_value(df, alpha)
    hi = 10.0
    while 1 - ncx2_cdf(c, df, hi) < power:
        hi *= 2
    return bisect(lambda lam: (1 - ncx2_cdf(c, df, lam)) - power, 0.0, hi)


def detectable_tv(n: int, df: int, alpha: float, power: float = 0.99) -> float:
    """The smallest total variation that a G-test over n samples and df + 1 cells flags at level alpha with
    probability >= `power`, whatever the deviation: sqrt(λ / (4 n)) (module docstring)."""
    return math.sqrt(noncentrality_for_power(df, alpha, power) / (4 * n))


def pooled_cells(law: Mapping[tuple[int, ...], float], n: int) -> list[list[tuple[int, ...]]]:
    """The cells the test compares: each sequence expected >= MIN_EXPECTED times alone, the rest pooled."""
    ordered = sorted(law, key=law.__getitem__, reverse=True)
    big = [[c] for c in ordered if law[c] * n >= MIN_EXPECTED]
    rest = [c for c in ordered if law[c] * n < MIN_EXPECTED]
    return [*big, rest] if rest else big


def g_statistic(observed: Sequence[float], expected: Sequence[float]) -> float:
    """G = 2 Σ O ln(O / E) over cells with O > 0 (a cell never observed adds nothing)."""
    return 2 * sum(o * math.log(o / e) for o, e in zip(observed, expected, strict=True) if o > 0)


def counts_of(samples: Sequence[Sequence[int]], length: int) -> Counter[tuple[int, ...]]:
    """How often each sequence of the first `length` tokens was sampled."""
    return Counter(tuple(int(t) for t in s[:length]) for s in samples)
