"""Malformed input to the tree functions (the Rust verifier, Python layouts) raises ValueError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specref._sampler import SeededCoin, tree_law, verify_tree
from specref.tree import DEFAULT_CHOICES, MAX_TREE_NODES, MEDUSA_CHOICES, static_tree, tree_buffers

#       0 (WOR)
#     1 (IID)   2
#    3   4       5
PARENTS = [-1, 0, 0, 1, 1, 2]
TOKENS = [0, 0, 1, 2, 2, 1]
KINDS = [2, 1, 0, 0, 2, 0]


def valid(b: int = 2, vocab: int = 4, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A valid batch: the tree above b times, with full-support p and q rows."""
    rng = np.random.default_rng(seed)
    n = len(PARENTS)
    p = rng.random((b, n, vocab)) + 0.01
    q = rng.random((b, n, vocab)) + 0.01
    p /= p.sum(-1, keepdims=True)
    q /= q.sum(-1, keepdims=True)
    ints = [np.tile(np.array(a, dtype=np.int64), (b, 1)) for a in (PARENTS, TOKENS, KINDS)]
    return (*ints, p, q)


def at(a: np.ndarray, index: tuple, value: float) -> np.ndarray:
    a = a.copy()
    a[index] = value
    return a


CORRUPTIONS = {
    "parents wrong ndim": lambda par, tok, kin, p, q: (par[0], tok, kin, p, q),
    "tokens wrong ndim": lambda par, tok, kin, p, q: (par, tok[..., None], kin, p, q),
    "kinds wrong ndim": lambda par, tok, kin, p, q: (par, tok, kin[0], p, q),
    "p wrong ndim": lambda par, tok, kin, p, q: (par, tok, kin, p[0], q),
    "q wrong ndim": lambda par, tok, kin, p, q: (par, tok, kin, p, q[..., None]),
    "parents float dtype": lambda par, tok, kin, p, q: (par.astype(np.float64), tok, kin, p, q),
    "tokens int32 dtype": lambda par, tok, kin, p, q: (par, tok.astype(np.int32), kin, p, q),
    "kinds is a list": lambda par, tok, kin, p, q: (par, tok, kin.tolist(), p, q),
    "p int dtype": lambda par, tok, kin, p, q: (par, tok, kin, p.astype(np.int64), q),
    "q float16 dtype": lambda par, tok, kin, p, q: (par, tok, kin, p, q.astype(np.float16)),
    "parents[0] != -1": lambda par, tok, kin, p, q: (at(par, (1, 0), 0), tok, kin, p, q),
    "parent after its child": lambda par, tok, kin, p, q: (at(par, (0, 2), 3), tok, kin, p, q),
    "parent is itself": lambda par, tok, kin, p, q: (at(par, (0, 3), 3), tok, kin, p, q),
    "parent -1 below the root": lambda par, tok, kin, p, q: (at(par, (0, 3), -1), tok, kin, p, q),
    "tokens shorter": lambda par, tok, kin, p, q: (par, tok[:, :-1], kin, p, q),
    "kinds batch mismatch": lambda par, tok, kin, p, q: (par, tok, kin[:1], p, q),
    "p rows != n": lambda par, tok, kin, p, q: (par, tok, kin, p[:, :-1], q),
    "p batch mismatch": lambda par, tok, kin, p, q: (par, tok, kin, p[:1], q),
    "q vocab mismatch": lambda par, tok, kin, p, q: (par, tok, kin, p, q[..., :-1] / q[..., :-1].sum(-1)[..., None]),
    "empty batch": lambda par, tok, kin, p, q: (par[:0], tok[:0], kin[:0], p[:0], q[:0]),
    "empty tree": lambda par, tok, kin, p, q: (par[:, :0], tok[:, :0], kin[:, :0], p[:, :0], q[:, :0]),
    "empty vocab": lambda par, tok, kin, p, q: (par, tok, kin, p[..., :0], q[..., :0]),
    "kind 3": lambda par, tok, kin, p, q: (par, tok, at(kin, (1, 4), 3), p, q),
    "kind -1 at a leaf": lambda par, tok, kin, p, q: (par, tok, at(kin, (0, 5), -1), p, q),
    "token == V": lambda par, tok, kin, p, q: (par, at(tok, (1, 5), p.shape[-1]), kin, p, q),
    "negative token": lambda par, tok, kin, p, q: (par, at(tok, (0, 3), -1), kin, p, q),
    "NaN in the root's p row": lambda par, tok, kin, p, q: (par, tok, kin, at(p, (0, 0, 1), np.nan), q),
    "Inf in the root's q row": lambda par, tok, kin, p, q: (par, tok, kin, p, at(q, (1, 0, 2), np.inf)),
    "negative p at the root": lambda par, tok, kin, p, q: (par, tok, kin, p - p.max(), q),
    "unnormalised p": lambda par, tok, kin, p, q: (par, tok, kin, p * 1.01, q),
    "unnormalised q": lambda par, tok, kin, p, q: (par, tok, kin, p, q * 0.98),
    "q None with sampled kinds": lambda par, tok, kin, p, q: (par, tok, kin, p, None),
    "q zero at a sampled child": lambda par, tok, kin, p, q: (par, tok, kin, p, at(q, (1, 0, 1), 0.0)),
    "duplicate without-replacement siblings": lambda par, tok, kin, p, q: (par, at(tok, (0, 2), 0), kin, p, q),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_raises_value_error(name):
    args = CORRUPTIONS[name](*valid())
    with pytest.raises(ValueError) as info:
        verify_tree(*args, SeededCoin(0))
    assert str(info.value), "the message must name the problem"


@pytest.mark.parametrize("name", sorted(k for k in CORRUPTIONS if "batch" not in k and "ndim" not in k))
def test_each_corruption_raises_value_error_in_tree_law(name):
    """The same corruptions, one tree at a time: at least one of the two trees must be refused."""
    args = CORRUPTIONS[name](*valid())
    refused = 0
    for b in range(2):
        one = [a[b] if isinstance(a, np.ndarray) and a.ndim == (2 if i < 3 else 3) else a for i, a in enumerate(args)]
        try:
            tree_law(*one)
        except ValueError as e:
            assert str(e)
            refused += 1
    assert refused


def test_tree_law_wants_one_tree():
    par, tok, kin, p, q = valid(b=1)
    with pytest.raises(ValueError, match="parents must have 1 dimensions, got 2"):
        tree_law(par, tok, kin, p, q)
    with pytest.raises(ValueError, match="p must have 2 dimensions, got 3"):
        tree_law(par[0], tok[0], kin[0], p, q[0])


def test_messages_name_the_argument_and_position():
    cases = {
        "parents after": ("parent after its child", r"parents\[0, 2\] is 3; node 2's parent must be an earlier node"),
        "root": ("parents[0] != -1", r"parents\[1, 0\] is 0; node 0 is the root"),
        "kind": ("kind 3", r"kinds\[1, 4\] is 3"),
        "token": ("token == V", r"tokens\[1, 5\] is 4, outside the vocabulary \[0, 4\)"),
        "nan": ("NaN in the root's p row", r"p\[0, 0, 1\] is NaN"),
        "q none": ("q None with sampled kinds", r"q is None, but node \[0, 0\] has WithoutReplacement children"),
        "zero": ("q zero at a sampled child", r"tokens\[1, 2\] = 1 has zero probability under q\[1, 0\]"),
        "dup": ("duplicate without-replacement siblings", r"tokens\[0, 2\] = 0 repeats the token of its sibling"),
    }
    for name, pattern in cases.values():
        with pytest.raises(ValueError, match=pattern):
            verify_tree(*CORRUPTIONS[name](*valid()), SeededCoin(0))


def test_rows_are_checked_only_where_read():
    """A malformed row the walk never reads is not an error (lazy validation), but becomes one when read."""
    par, tok, kin, p, q = (a[:1] for a in valid(b=1))
    kin = np.zeros_like(kin)  # all Deterministic: q is never read
    verify_tree(par, tok, kin, p, np.full_like(q, np.nan), SeededCoin(0))
    p = p.copy()
    p[0, 0] = np.eye(p.shape[-1])[TOKENS[1]]  # the root certainly accepts node 1 (token 0), never node 2
    p[0, 2] = np.nan
    p[0, 5] = -1.0
    assert verify_tree(par, tok, kin, p, None, SeededCoin(0))[0][0, 1] == 1
    assert all(path[:2] == (0, 1) for path, *_ in tree_law(par[0], tok[0], kin[0], p[0], None))
    p[0, 0] = np.eye(p.shape[-1])[TOKENS[2]]
    with pytest.raises(ValueError, match=r"p\[0, 2, 0\] is NaN"):
        verify_tree(par, tok, kin, p, None, SeededCoin(0))


def test_bad_flaw_and_tolerance():
    par, tok, kin, p, q = valid(b=1)
    with pytest.raises(ValueError, match="unknown flaw"):
        verify_tree(par, tok, kin, p, q, SeededCoin(0), flaw="lenient")
    with pytest.raises(ValueError, match="unknown flaw"):
        tree_law(par[0], tok[0], kin[0], p[0], q[0], flaw="bogus")
    with pytest.raises(ValueError, match="topk_with_ratio"):
        tree_law(par[0], tok[0], np.zeros_like(kin[0]), p[0], None, flaw="topk_with_ratio")
    off = p.copy()
    off[0, 0] *= 1 + 1e-4 / 2  # within NORM_TOLERANCE: accepted
    verify_tree(par, tok, kin, off, q, SeededCoin(0))
    path, length, nxt, fallback = verify_tree(par, tok, kin, p.astype(np.float32), q, SeededCoin(0))
    assert path.dtype == length.dtype == nxt.dtype == np.int64 and fallback.dtype == np.bool_


BAD_CHOICES = {
    "not a list": "[[0]]",
    "an int": 3,
    "None": None,
    "inner not a list": [[0], 1],
    "inner a string": [[0], "01"],
    "a float rank": [[0], [0, 1.0]],
    "a bool rank": [[True]],
    "a huge rank": [[2**64]],
    "an empty path": [[0], []],
    "a negative rank": [[0], [0, -1]],
    "a duplicate path": [[0], [1], [0]],
    "a missing parent prefix": [[0], [1, 0, 0], [1]],
    "too many nodes": [[i] for i in range(4096)],
}


@pytest.mark.parametrize("name", sorted(BAD_CHOICES))
def test_bad_choices_raise_value_error(name):
    with pytest.raises(ValueError, match="choices"):
        static_tree(BAD_CHOICES[name])


def test_static_tree_accepts_tuples_and_numpy_ints_and_the_limit():
    parents, ranks = static_tree(((np.int64(0),), (0, 0), [1]))
    assert parents.tolist() == [-1, 0, 0, 1] and ranks.tolist() == [-1, 0, 1, 0]
    assert parents.dtype == ranks.dtype == np.int64
    assert len(static_tree([[i] for i in range(MAX_TREE_NODES - 1)])[0]) == MAX_TREE_NODES == 4096
    assert static_tree([])[0].tolist() == [-1]


@pytest.mark.parametrize("choices", [DEFAULT_CHOICES, MEDUSA_CHOICES, [[0] * n for n in range(1, 5)],
                                     [[3], [1], [3, 5], [3, 0]]], ids=["default", "medusa", "chain", "gappy"])
def test_static_tree_layout(choices):
    """Every node's path, rebuilt from parents and ranks, is a choice, in (length, path) order; siblings come in
    rank order (gaps in ranks allowed)."""
    parents, ranks = static_tree(choices)
    paths: list[list[int]] = [[]]
    for i in range(1, len(parents)):
        assert 0 <= parents[i] < i
        paths.append(paths[parents[i]] + [int(ranks[i])])
    assert paths[1:] == sorted(map(list, choices), key=lambda path: (len(path), path))
    for node in range(len(parents)):
        kid_ranks = ranks[parents == node]
        assert (np.diff(kid_ranks) > 0).all()


def test_static_tree_names_the_malformed_path():
    for choices, message in (([[0], []], "choices[1] is empty; every path needs at least one rank"),
                             ([[0], [0, -2]], "choices[1] has rank -2 at position 1; ranks must be >= 0"),
                             ([[0], [1], [0]], "choices[2] repeats choices[0]"),
                             ([[0], [1, 0], [0, 0, 1]], "choices[1] has no parent: the path without its last rank"),
                             ([[i] for i in range(MAX_TREE_NODES)], "4097 nodes (root included); at most 4096")):
        with pytest.raises(ValueError) as e:
            static_tree(choices)
        assert message in str(e.value)


BAD_PARENTS = {
    "3-D": np.full((1, 1, 1), -1),
    "float": np.array([-1.0, 0.0]),
    "list": [-1, 0],
    "root not -1": np.array([0, 0]),
    "not topological": np.array([-1, 2, 0]),
    "empty": np.zeros(0, dtype=np.int64),
    "empty batch": np.zeros((0, 3), dtype=np.int64),
    "empty rows": np.zeros((2, 0), dtype=np.int64),
    "bad second row": np.array([[-1, 0, 1], [-1, 0, 5]]),
}


@pytest.mark.parametrize("name", sorted(BAD_PARENTS))
def test_bad_parents_raise_value_error_in_tree_buffers(name):
    with pytest.raises(ValueError, match="parents"):
        tree_buffers(BAD_PARENTS[name])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(b=st.integers(1, 3), n=st.integers(1, 5), vocab=st.integers(1, 4), data=st.data())  # empty axes: above
def test_fuzzed_inputs_never_crash(b, n, vocab, data):
    """Arbitrary parents, tokens, kinds and values: either a valid result or a ValueError, nothing else."""
    ints = [np.array(data.draw(st.lists(st.integers(lo, hi), min_size=b * n, max_size=b * n)),
                     dtype=np.int64).reshape(b, n) for lo, hi in ((-2, n), (-1, vocab + 1), (-1, 3))]
    sanity = 2 - data.draw(st.integers(0, 2))  # often valid structure, so that deeper checks are reached
    if sanity >= 1:
        ints[0] = np.tile(np.array([-1] + [data.draw(st.integers(0, i - 1)) for i in range(1, n)]), (b, 1))
    if sanity >= 2:
        ints[1], ints[2] = ints[1] % vocab, ints[2] % 3
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.floats(0, 1)
    size = b * n * vocab
    p, q = (np.array(data.draw(st.lists(floats, min_size=size, max_size=size)), dtype=np.float64).reshape(b, n, vocab)
            for _ in range(2))
    if data.draw(st.booleans()):  # often valid distributions
        with np.errstate(all="ignore"):
            p = np.abs(np.nan_to_num(p, nan=1.0, posinf=1.0, neginf=1.0)) + 1e-3
            q = np.abs(np.nan_to_num(q, nan=1.0, posinf=1.0, neginf=1.0)) + 1e-3
            p /= p.sum(-1, keepdims=True) if vocab else 1
            q /= q.sum(-1, keepdims=True) if vocab else 1
    q_arg = None if data.draw(st.booleans()) else q
    flaw = data.draw(st.sampled_from([None, "topk_with_ratio", "sorted_siblings", "no_renorm", "skip_dup_update"]))
    try:
        path, length, nxt, fallback = verify_tree(*ints, p, q_arg, SeededCoin(1), flaw=flaw)
    except ValueError:
        pass
    else:
        assert path.shape == (b, n) and length.shape == nxt.shape == fallback.shape == (b,)
        assert ((length >= 1) & (length <= n)).all() and (path[:, 0] == 0).all()
        assert ((nxt >= 0) & (nxt < vocab)).all()
    if b:
        try:
            law = tree_law(*(a[0] for a in ints), p[0], None if q_arg is None else q[0], flaw=flaw)
        except ValueError:
            pass
        else:
            assert abs(sum(pr for *_, pr in law) - 1.0) < 1e-9
    try:
        depth, mask = tree_buffers(ints[0])
    except ValueError:
        pass
    else:
        assert depth.shape == (b, n) and mask.shape == (b, n, n)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.recursive(st.integers(-2, 5) | st.booleans() | st.floats() | st.text(max_size=2),
                    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner), max_leaves=12))
def test_fuzzed_choices_never_crash(choices):
    try:
        parents, ranks = static_tree(choices)
    except ValueError:
        return
    assert parents[0] == -1 and ranks[0] == -1 and (parents[1:] < np.arange(1, len(parents))).all()
    depth, mask = tree_buffers(parents)
    assert mask.diagonal().all() and mask[:, 0].all() and (mask.sum(1) == depth + 1).all()


def test_buffers_of_the_example_tree_and_a_batch():
    depth, mask = tree_buffers(np.array(PARENTS))
    assert depth.tolist() == [0, 1, 1, 2, 2, 2] and depth.dtype == np.int64 and mask.dtype == np.bool_
    assert [np.flatnonzero(row).tolist() for row in mask] == [[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 4], [0, 2, 5]]
    depth, mask = tree_buffers(np.array([-1, 0, 0, 1, 1, 2, 5]))  # a leaf two below node 2
    assert depth.tolist() == [0, 1, 1, 2, 2, 2, 3] and np.flatnonzero(mask[6]).tolist() == [0, 2, 5, 6]
    assert tree_buffers(np.array([-1]))[1].tolist() == [[True]]
    depth, mask = tree_buffers(np.array([PARENTS, [-1, 0, 1, 2, 3, 4]]))
    assert depth.tolist() == [[0, 1, 1, 2, 2, 2], [0, 1, 2, 3, 4, 5]] and mask.shape == (2, 6, 6)
    assert mask[1].tolist() == np.tril(np.ones((6, 6), dtype=bool)).tolist()
    assert mask[1].tolist() == np.tril(np.ones((6, 6), dtype=bool)).tolist()
