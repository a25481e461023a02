"""Rust core of specref (built from rust_sampler/ by maturin): the lossless chain verifier.

Modified rejection sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318):
draft x_i is accepted iff u * q_i(x_i) < p_i(x_i) for a fresh uniform u in [0, 1); the first rejection
emits y ~ norm((p_i - q_i)+), or y ~ p_i if that residual has no mass (reported as ``fallback``); if all G
drafts are accepted the bonus is y ~ p_G (the (G+1)-th row). All arithmetic is float64.

Every function validates its arguments before drawing any randomness and raises ``ValueError`` naming
the argument, the position and the problem; an internal panic surfaces as ``RuntimeError``.
"""

from typing import Final

import numpy as np
import numpy.typing as npt

_Probs = npt.NDArray[np.float32] | npt.NDArray[np.float64]

NORM_TOLERANCE: Final[float]
"""Largest accepted |sum(row) - 1| for every row of p and q: 1e-4."""

class SeededCoin:
    """Reproducible randomness: xoshiro256++ with its state seeded from ``seed`` through splitmix64.

    Each decision consumes one 53-bit uniform; the same seed gives the same stream on every platform.
    """

    def __init__(self, seed: int) -> None:
        """``seed`` must satisfy 0 <= seed < 2**64 (else ValueError; a non-int raises TypeError)."""

    def uniform(self) -> float:
        """The next uniform in [0, 1), a multiple of 2**-53 (advances the stream like one decision)."""

def verify_chain(
    p: _Probs,
    q: _Probs,
    draft_tokens: npt.NDArray[np.int64],
    coin: SeededCoin,
    *,
    flaw: str | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Verify a batch of drafted chains.

    Args:
        p: (B, G+1, V) target probabilities, float32 or float64; row i is the law of token i+1 given
            the prefix and drafts x_1..x_i.
        q: (B, G, V) draft probabilities, float32 or float64 (may differ from p's dtype): the laws the
            drafts were actually sampled from (one-hot rows for argmax drafts).
        draft_tokens: (B, G) int64 draft token ids; each must have q > 0.
        coin: randomness; rows b = 0..B-1 are verified in order, each with fresh draws.
        flaw: test-only re-injection of a known bug: None (correct), "non_strict" (accept on
            u * q <= p) or "bonus_row_off" (bonus from row G-1).

    Returns:
        (accepted, next_token, fallback), each of shape (B,): the number of accepted drafts in [0, G],
        the token emitted after them (correction or bonus), and whether the residual was degenerate.

    Arrays may have any strides and are read in place with the GIL released; do not write to them from
    another thread during the call.
    """

def chain_law(
    p: _Probs,
    q: _Probs,
    draft_tokens: npt.NDArray[np.int64],
    *,
    flaw: str | None = None,
) -> list[tuple[int, int, bool, float]]:
    """Exact output law of one chain's verification, by enumerating every coin outcome.

    Args:
        p: (G+1, V), q: (G, V), draft_tokens: (G,); dtypes and validation as in ``verify_chain``.
        flaw: as in ``verify_chain``.

    Returns:
        (accepted, token, fallback, probability) tuples sorted by outcome, one per reachable outcome,
        probabilities summing to 1 up to float64 rounding.
    """
