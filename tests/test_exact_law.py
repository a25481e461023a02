"""The production Rust chain verifier under the enumerating coin source: exact output laws.

For one verification with context-free rows p_1..p_{G+1}, q_1..q_G and drafts x_i ~ q_i (enumerated here),
the emitted tokens (x_1..x_n, y) have exactly the law

    P(s_1..s_k) = prod_{i<k} min(p_i, q_i)(s_i) * ((p_k - q_k)^+(s_k) if k <= G else p_{G+1}(s_k))

(Leviathan et al. 2023, Lemma 1 applied per position), so the first token is distributed as p_1, the
acceptance rate of position i is sum min(p_i, q_i), and no token with p = 0 is ever emitted.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
from conftest import assert_close_law
from hypothesis import given, settings
from hypothesis import strategies as st

from specref._sampler import chain_law

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)


def emitted_law(p: np.ndarray, q: np.ndarray, flaw: str | None = None) -> dict[tuple, float]:
    """Law of the emitted tokens of one verification, drafts enumerated with their q-probabilities."""
    g, vocab = q.shape
    law: dict[tuple, float] = defaultdict(float)
    for xs in itertools.product(range(vocab), repeat=g):
        weight = float(np.prod([q[i, x] for i, x in enumerate(xs)]))
        if weight == 0.0:
            continue
        for accepted, token, _fallback, prob in chain_law(p, q, np.array(xs, dtype=np.int64), flaw=flaw):
            law[(*xs[:accepted], token)] += weight * prob
    return dict(law)


def formula_law(p: np.ndarray, q: np.ndarray) -> dict[tuple, float]:
    g, vocab = q.shape
    both, resid = np.minimum(p[:g], q), np.maximum(p[:g] - q, 0.0)
    law = {}
    for k in range(1, g + 2):
        last = resid[k - 1] if k <= g else p[g]
        for s in itertools.product(range(vocab), repeat=k):
            law[s] = float(np.prod([both[i, s[i]] for i in range(k - 1)]) * last[s[-1]])
    return law


def check_chain(p: np.ndarray, q: np.ndarray, flaw: str | None = None) -> None:
    """All exact properties of one chain verification; raises AssertionError on any violation."""
    law, expected = emitted_law(p, q, flaw), formula_law(p, q)
    assert_close_law(law, expected, tol=1e-9)
    impossible = [s for s, pr in law.items() if pr > 0 and expected[s] == 0]
    assert not impossible, f"emitted sequences that have probability 0: {impossible[:3]}"
    first: dict[tuple, float] = defaultdict(float)
    for s, pr in law.items():
        first[s[:1]] += pr
    assert_close_law(first, {(y,): float(p[0, y]) for y in range(p.shape[1])}, tol=1e-9)
    reach = 1.0  # P(N >= i) = prod_{j <= i} sum min(p_j, q_j)
    for i in range(q.shape[0]):
        reach *= float(np.minimum(p[i], q[i]).sum())
        got = sum(pr for s, pr in law.items() if len(s) >= i + 2)
        assert abs(got - reach) <= 1e-9, f"P(N >= {i + 1}) = {got}, expected {reach}"


def dist(vocab: int) -> st.SearchStrategy[np.ndarray]:
    """Distributions from integer weights in [0, 8] (zeros allowed) or one-hot rows."""
    weights = st.lists(st.integers(0, 8), min_size=vocab, max_size=vocab).filter(lambda w: sum(w) > 0)
    one_hot = st.integers(0, vocab - 1).map(lambda i: [int(j == i) for j in range(vocab)])
    return st.one_of(weights, one_hot).map(lambda w: np.array(w, dtype=np.float64) / sum(w))


@st.composite
def chains(draw: st.DrawFn, max_g: int = 3) -> tuple[np.ndarray, np.ndarray]:
    vocab, g = draw(st.integers(2, 6)), draw(st.integers(1, max_g))
    p = np.stack([draw(dist(vocab)) for _ in range(g + 1)])
    mode = draw(st.sampled_from(["independent", "equal", "zero_p_at_q"]))
    if mode == "equal":  # p == q: nothing is ever rejected
        q = p[:g].copy()
    else:
        q = np.stack([draw(dist(vocab)) for _ in range(g)])
        if mode == "zero_p_at_q":  # p vanishes where the draft puts mass: those drafts must always fail
            for i in range(g):
                keep = q[i] == 0
                if keep.any():
                    p[i] = np.where(keep, p[i] + keep, 0.0)
                    p[i] /= p[i].sum()
    return p, q


@SETTINGS
@given(chains())
def test_chain_verifier_is_exact(pq):
    check_chain(*pq)


@SETTINGS
@given(chains(max_g=1))
def test_single_position_identities(pq):
    """P(accept and emit y) = min(p, q)(y); P(reject and emit y) = (p - q)^+(y); acceptance = sum min(p, q)."""
    p, q = pq
    vocab = p.shape[1]
    acc, rej = np.zeros(vocab), np.zeros(vocab)
    for x in np.flatnonzero(q[0]):
        for accepted, token, _fb, prob in chain_law(p, q, np.array([x], dtype=np.int64)):
            if accepted:
                acc[x] += q[0, x] * prob
            else:
                rej[token] += q[0, x] * prob
    np.testing.assert_allclose(acc, np.minimum(p[0], q[0]), atol=1e-12)
    np.testing.assert_allclose(rej, np.maximum(p[0] - q[0], 0), atol=1e-12)
    assert abs(acc.sum() - np.minimum(p[0], q[0]).sum()) <= 1e-12


def test_fallback_is_reported_and_harmless():
    """q exceeds p at the draft by rounding only (q sums to 1 + 1e-12): a rejection then leaves an all-zero
    residual; the verifier falls back to p, says so, and the event has the tiny probability it should."""
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert not any(fb for _, _, fb, _ in chain_law(p, p[:1].copy(), np.array([0])))  # p == q: never rejects
    q = np.array([[0.5 + 1e-12, 0.5]])
    rejected = [(fb, pr) for accepted, _, fb, pr in chain_law(p, q, np.array([0])) if accepted == 0]
    assert rejected and all(fb for fb, _ in rejected)
    assert 0 < sum(pr for _, pr in rejected) < 1e-11
