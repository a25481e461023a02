"""Malformed input to the Rust verifier raises ValueError naming the problem; it never crashes or panics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specref._sampler import NORM_TOLERANCE, SeededCoin, chain_law, verify_chain


def valid(b: int = 2, g: int = 3, vocab: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random((b, g + 1, vocab)) + 0.01
    q = rng.random((b, g, vocab)) + 0.01
    p /= p.sum(-1, keepdims=True)
    q /= q.sum(-1, keepdims=True)
    return p, q, rng.integers(0, vocab, (b, g))


CORRUPTIONS = {
    "p wrong ndim": lambda p, q, x: (p[0], q, x),
    "q wrong ndim": lambda p, q, x: (p, q[..., None], x),
    "tokens wrong ndim": lambda p, q, x: (p, q, x[0]),
    "p int dtype": lambda p, q, x: (p.astype(np.int64), q, x),
    "tokens float dtype": lambda p, q, x: (p, q, x.astype(np.float64)),
    "p is a list": lambda p, q, x: (p.tolist(), q, x),
    "p rows != gamma + 1": lambda p, q, x: (p[:, :-1], q, x),
    "tokens length != gamma": lambda p, q, x: (p, q, x[:, :-1]),
    "batch mismatch": lambda p, q, x: (p[:1], q, x),
    "vocab mismatch": lambda p, q, x: (p, q[..., :-1] / q[..., :-1].sum(-1, keepdims=True), x),
    "empty batch": lambda p, q, x: (p[:0], q[:0], x[:0]),
    "empty vocab": lambda p, q, x: (p[..., :0], q[..., :0], x),
    "NaN in p": lambda p, q, x: (np.where(np.arange(p.size).reshape(p.shape) == 3, np.nan, p), q, x),
    "Inf in q": lambda p, q, x: (p, np.where(np.arange(q.size).reshape(q.shape) == 1, np.inf, q), x),
    "negative entry": lambda p, q, x: (p - p.max(), q, x),
    "unnormalised p": lambda p, q, x: (p * 1.01, q, x),
    "token too large": lambda p, q, x: (p, q, x + p.shape[-1]),
    "negative token": lambda p, q, x: (p, q, x - p.shape[-1] - 1),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_raises_value_error(name):
    p, q, x = CORRUPTIONS[name](*valid())
    with pytest.raises(ValueError) as info:
        verify_chain(p, q, x, SeededCoin(0))
    assert str(info.value), "the message must name the problem"


def test_zero_draft_probability_is_rejected():
    p, q, x = valid()
    q[0, 0, :] = 0.0
    q[0, 0, (x[0, 0] + 1) % q.shape[-1]] = 1.0
    with pytest.raises(ValueError, match="zero probability"):
        verify_chain(p, q, x, SeededCoin(0))


def test_bad_flaw_seed_and_tolerance():
    p, q, x = valid(b=1)
    with pytest.raises(ValueError):
        verify_chain(p, q, x, SeededCoin(0), flaw="lenient")
    with pytest.raises(ValueError):
        chain_law(p[0], q[0], x[0], flaw="bogus")
    for seed in (-1, 2**64):
        with pytest.raises((ValueError, OverflowError)):
            SeededCoin(seed)
    off = p.copy()
    off[0, 0] *= 1 + NORM_TOLERANCE / 2  # within the documented tolerance: accepted
    verify_chain(off, q, x, SeededCoin(0))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(b=st.integers(0, 3), g=st.integers(0, 4), vocab=st.integers(0, 6), data=st.data())
def test_fuzzed_inputs_never_crash(b, g, vocab, data):
    """Arbitrary shapes and values: either a valid result or a ValueError, nothing else."""
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.floats(0, 1)
    p_rows, q_rows = g + data.draw(st.integers(0, 2)), g + data.draw(st.integers(-1, 1))
    p = np.array(data.draw(st.lists(floats, min_size=b * p_rows * vocab, max_size=b * p_rows * vocab)),
                 dtype=np.float64).reshape(b, p_rows, vocab) if p_rows >= 0 else np.zeros((b, 0, vocab))
    q = np.array(data.draw(st.lists(floats, min_size=b * max(q_rows, 0) * vocab,
                                    max_size=b * max(q_rows, 0) * vocab)),
                 dtype=np.float64).reshape(b, max(q_rows, 0), vocab)
    if data.draw(st.booleans()):  # often make the distributions valid so deeper checks are reached
        with np.errstate(all="ignore"):  # huge finite entries overflow the row sums: malformed too
            p = np.abs(np.nan_to_num(p, nan=1.0, posinf=1.0, neginf=1.0)) + 1e-3
            p /= p.sum(-1, keepdims=True) if vocab else 1
            q = np.abs(np.nan_to_num(q, nan=1.0, posinf=1.0, neginf=1.0)) + 1e-3
            q /= q.sum(-1, keepdims=True) if vocab else 1
    x = np.array(data.draw(st.lists(st.integers(-2, 8), min_size=b * g, max_size=b * g)),
                 dtype=np.int64).reshape(b, g)
    if data.draw(st.booleans()):
        with np.errstate(over="ignore"):  # huge float64 values become inf: also malformed
            p = p.astype(np.float32)
    try:
        accepted, token, fallback = verify_chain(p, q, x, SeededCoin(1))
    except ValueError:
        return
    assert accepted.shape == token.shape == fallback.shape == (b,)
    assert ((accepted >= 0) & (accepted <= g)).all() and ((token >= 0) & (token < vocab)).all()


def test_verify_chain_accepts_strided_and_mixed_dtypes():
    """Layout does not change the result (same seed, same draws); float32 p with float64 q is accepted."""
    p, q, x = valid(b=3, g=2, vocab=7)
    expected = verify_chain(p, q, x, SeededCoin(5))
    strided = verify_chain(np.asfortranarray(p), np.concatenate([q, q], -1)[..., :7], x.T.copy().T, SeededCoin(5))
    for a, b in zip(expected, strided, strict=True):
        np.testing.assert_array_equal(a, b)
    accepted, token, _ = verify_chain(p.astype(np.float32), q, x, SeededCoin(5))
    assert accepted.dtype == token.dtype == np.int64 and ((token >= 0) & (token < 7)).all()
