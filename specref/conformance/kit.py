"""Is a sampler lossless? Draw N continuations, compare them with the target's exact law, report.

A *sampler* is any callable `(prompt_ids, n, seed) -> n continuations` (lists of token ids, each at least L
long; only the first L tokens are tested): specref's own modes, another engine's generation, or a function
written for a test. `check_sampler` draws N samples once and returns a `Report`: the G-test p-value against
the exact law of the first L tokens, the total variation, the samples the law gives probability 0 (one is
enough to fail), the cells with the largest deviation, and the smallest deviation this N could detect.
`check_greedy` checks token identity with greedy autoregressive decoding instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from specref.checks import check_count
from specref.conformance.law import Law, exact_law, greedy_continuation
from specref.conformance.stats import chi2_sf, counts_of, detectable_tv, g_statistic, pooled_cells
from specref.logits import SamplingParams

Sampler = Callable[[Sequence[int], int, int], Sequence[Sequence[int]]]
ALPHA = 1e-6  # the default level: a lossless sampler fails once in a million runs
POWER = 0.99  # the power `detectable_tv` is stated at


@dataclass(frozen=True)
class Cell:
    """One continuation: its probability under the law and its frequency among the samples."""

    tokens: tuple[int, ...]
    expected: float
    observed: float


@dataclass(frozen=True)
class Report:
    """What `check_sampler` found. `passed`: no impossible sample and p_value >= alpha."""

    name: str
    n: int
    length: int
    cells: int  # continuations with positive probability
    df: int  # degrees of freedom of the G-test (tested cells - 1, rare cells pooled)
    g: float
    p_value: float
    tv: float  # total variation between the sample frequencies and the law, over all continuations
    impossible: int  # samples whose continuation has probability 0
    alpha: float
    detectable_tv: float  # the smallest TV flagged with probability POWER at this N (stats.detectable_tv)
    worst: list[Cell] = field(default_factory=list)  # largest |observed - expected| first, at most 5

    @property
    def passed(self) -> bool:
        return self.impossible == 0 and self.p_value >= self.alpha

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def summary(self) -> str:
        why = f", {self.impossible} impossible samples" if self.impossible else ""
        return (f"{self.name or 'sampler'}: {self.verdict} (N {self.n}, TV {self.tv:.4f}, G-test p {self.p_value:.3g} "
                f"at alpha {self.alpha:g}{why}; detects TV >= {self.detectable_tv:.3f} w.p. {POWER})")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}


def chunk_seed(seed: int, i: int) -> int:
    """The seed of chunk i of a run seeded `seed`: the seed itself for the first chunk (an unchunked run draws
    with the seed it was given), then 32-bit seeds derived from (seed, i), so runs with neighbouring seeds draw
    different samples (with seed + i, run 0's second chunk would repeat run 1's first); derived seeds fit in 32
    bits, for samplers that take no more (llama.cpp's)."""
    return seed if i == 0 else int(np.random.SeedSequence([seed, i]).generate_state(1)[0])


def draw(sampler: Sampler, prompt_ids: Sequence[int], n: int, seed: int, length: int,
         chunk: int | None) -> list[list[int]]:
    """n continuations cut to `length`, drawn in chunks (seeds `chunk_seed(seed, i)`) so memory stays bounded."""
    out: list[list[int]] = []
    size = check_count("chunk", chunk) if chunk is not None else n
    for i, start in enumerate(range(0, n, size)):
        want = min(size, n - start)
        got = list(sampler(list(prompt_ids), want, chunk_seed(seed, i)))
        if len(got) != want:
            raise ValueError(f"the sampler returned {len(got)} continuations, {want} were asked for")
        for s in got:
            s = [int(t) for t in s]
            if len(s) < length:
                raise ValueError(f"the sampler returned a continuation of {len(s)} tokens, at least {length} are "
                                 f"tested (did it stop at an end-of-sequence token? disable stopping)")
            out.append(s[:length])
    return out


def check_sampler(sampler: Sampler, target: Any, prompt_ids: Sequence[int], length: int,
                  params: SamplingParams = SamplingParams(1.0), *, n: int = 20_000, seed: int = 0,
                  alpha: float = ALPHA, law: Law | None = None, chunk: int | None = None, name: str = "") -> Report:
    """Test whether `sampler` draws the first `length` tokens after `prompt_ids` from the target's law.

    `target` (a specref Llama, a transformers causal LM or a logits callable, see `law.next_token_logits`)
    and `params` define the law, unless `law` (from `exact_law`) is given. N = 20,000 and alpha = 1e-6 flag
    any deviation of total variation >= `Report.detectable_tv` (about 0.03 for 16-64 cells) with
    probability 0.99, and a lossless sampler with probability 1e-6."""
    check_count("n", n)
    check_count("seed", seed, minimum=0)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    law = exact_law(target, prompt_ids, length, params) if law is None else law
    counts = counts_of(draw(sampler, prompt_ids, n, seed, length, chunk), length)
    return report(counts, law, n, length, alpha, name)


def report(counts: dict[tuple[int, ...], int], law: Law, n: int, length: int, alpha: float, name: str) -> Report:
    """The G-test of `counts` (n samples) against `law`, with the figures a reader needs to trust it."""
    if sum(counts.values()) != n:
        raise ValueError(f"{sum(counts.values())} samples counted, {n} expected")
    total = sum(law.values())
    law = {c: p / total for c, p in law.items()}  # renormalise away float64 rounding
    cells = pooled_cells(law, n)
    observed = [sum(counts.get(c, 0) for c in group) for group in cells]
    expected = [n * sum(law[c] for c in group) for group in cells]
    df = len(cells) - 1
    g = g_statistic(observed, expected)
    p_value = chi2_sf(g, df) if df >= 1 else 1.0
    every = set(law) | set(counts)
    deviation = {c: (counts.get(c, 0) / n, law.get(c, 0.0)) for c in every}
    worst = sorted(deviation, key=lambda c: (-abs(deviation[c][0] - deviation[c][1]), c))[:5]
    return Report(
        name=name, n=n, length=length, cells=len(law), df=df, g=g, p_value=p_value,
        tv=0.5 * math.fsum(abs(o - e) for o, e in deviation.values()),
        impossible=sum(k for c, k in counts.items() if c not in law), alpha=alpha,
        detectable_tv=detectable_tv(n, df, alpha, POWER) if df >= 1 else math.inf,  # one pooled cell: no test
        worst=[Cell(c, deviation[c][1], deviation[c][0]) for c in worst])


@dataclass(frozen=True)
class GreedyReport:
    """What `check_greedy` found: the greedy AR continuation and the samples that differ from it."""

    name: str
    expected: list[int]
    n: int
    differ: int  # samples that differ from `expected`
    mismatches: list[list[int]]  # the first of them, at most 5

    @property
    def passed(self) -> bool:
        return self.differ == 0

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "FAIL"

    def summary(self) -> str:
        return f"{self.name or 'sampler'}: {self.verdict} (greedy, {self.differ} of {self.n} differ)"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "verdict": self.verdict}


def check_greedy(sampler: Sampler, target: Any, prompt_ids: Sequence[int], length: int, *, n: int = 4,
                 seed: int = 0, name: str = "") -> GreedyReport:
    """Test that a greedy sampler (T = 0) returns greedy autoregressive decoding's first `length` tokens, token
    for token, for n seeds (argmax ties go to the lowest id; a near-tie can differ by rounding)."""
    check_count("n", n)
    expected = greedy_continuation(target, prompt_ids, length)
    got = draw(sampler, prompt_ids, n, seed, length, None)
    bad = [s for s in got if s != expected]
    return GreedyReport(name, expected, n, len(bad), bad[:5])
