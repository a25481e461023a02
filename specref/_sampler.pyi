"""Rust core of specref (built from rust_sampler/ by maturin): the lossless chain and tree verifiers.

Modified rejection sampling (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023, arXiv 2302.01318):
draft x_i is accepted iff u * q_i(x_i) < p_i(x_i) for a fresh uniform u in [0, 1); the first rejection
emits y ~ norm((p_i - q_i)+), or y ~ p_i if that residual has no mass (reported as ``fallback``); if all G
drafts are accepted the bonus is y ~ p_G (the (G+1)-th row). All arithmetic is float64.

Trees (parent array plus tokens; node 0 is the root, the last committed token; ``0 <= parents[i] < i``; a
node's children are the nodes whose parent it is, in increasing index) are verified from the root: with
r = p[node], children are tried in order by the rule of the node's kind (``kinds[node]``):

* 0 Deterministic (top-k, any set chosen without the target's randomness): accept x w.p. r(x), else zero
  r(x) and renormalise;
* 1 IidSampled (children drawn i.i.d. from q[node]): accept x iff u * q(x) < r(x), else
  r <- norm((r - q)+); duplicates are tried too;
* 2 WithoutReplacement (drawn one after another without replacement from q[node]): the same, with q_j = q
  with the earlier siblings zeroed and renormalised.

Acceptance descends with r = p[child]; at a leaf or after rejecting every child, y ~ r is emitted. The chain
verifier is this walk on a path of IidSampled nodes.

Every function validates its arguments before drawing any randomness and raises ``ValueError`` naming
the argument, the position and the problem; an internal panic surfaces as ``RuntimeError``. The ``flaw``
arguments re-inject known bugs for the mutation tests (``rust_sampler/src/mutants.rs``): a different coin,
tree or p rows handed to the unchanged verifiers; production calls never pass one.
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
        """``seed`` must satisfy 0 <= seed < 2**64 (else OverflowError; a non-int raises TypeError)."""

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


def verify_tree(
    parents: npt.NDArray[np.int64],
    tokens: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int64],
    p: _Probs,
    q: _Probs | None,
    coin: SeededCoin,
    *,
    flaw: str | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Verify a batch of draft trees.

    Args:
        parents: (B, n) int64 parent arrays, ``-1`` at node 0 and ``0 <= parents[b, i] < i`` elsewhere.
        tokens: (B, n) int64; ``tokens[b, i]`` in [0, V) for i >= 1 (the root's is not read).
        kinds: (B, n) int64 in {0, 1, 2}: how node i's children were drafted (see the module docstring).
        p: (B, n, V) float32 or float64; ``p[b, i]`` is the target law of the token after node i.
        q: (B, n, V) float32 or float64, ``q[b, i]`` the draft law node i's children were drawn from; or
            None, allowed when every node with children is Deterministic. A sampled child must have
            q > 0 in its parent's row; WithoutReplacement siblings must be distinct.
        coin: randomness; trees b = 0..B-1 are verified in order, each with fresh draws.
        flaw: test-only re-injection of a known bug: None (correct), "non_strict", "bonus_row_off" (the
            bonus from the leaf's parent's row), "topk_with_ratio" (Deterministic children verified with the
            ratio test against q), "sorted_siblings" (sampled children tried in descending q order),
            "no_renorm" (WithoutReplacement with q_j = q) or "skip_dup_update" (a duplicate IidSampled
            child rejected without its residual update).

    Returns:
        (path, path_len, next_token, fallback): path (B, n) the accepted node indices from the root
        (included), padded with -1; path_len (B,) >= 1; next_token (B,) the correction or bonus; fallback
        (B,) whether the residual was degenerate and next_token came from p instead.

    Structure is validated up front; probability rows lazily, when read (p rows of visited nodes, q rows
    of nodes whose children are tried: finite, >= 0, summing to 1 within NORM_TOLERANCE), so a malformed
    row in tree b raises ValueError after trees 0..b-1 drew from the coin.
    """

def tree_law(
    parents: npt.NDArray[np.int64],
    tokens: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.int64],
    p: _Probs,
    q: _Probs | None,
    *,
    flaw: str | None = None,
) -> list[tuple[tuple[int, ...], int, bool, float]]:
    """Exact output law of one tree's verification, by enumerating every coin outcome.

    Args:
        parents, tokens, kinds: (n,); p: (n, V); q: (n, V) or None; as in ``verify_tree``.
        flaw: as in ``verify_tree``.

    Returns:
        (path, next_token, fallback, probability) tuples sorted by outcome, path the node indices from the
        root (included); probabilities sum to 1 up to float64 rounding. Rows reachable with positive
        probability are validated.
    """
