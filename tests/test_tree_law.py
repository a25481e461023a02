"""The production Rust tree verifier under the enumerating coin source: the exact law of emitted tokens.

A toy context-dependent target is a table from each prefix (the tokens after the context) to a distribution
over V <= 4 tokens; a toy draft is another such table. A draft tree is grown from a template (a shape with
a kind per node): Deterministic children are the top-k of q (ties by token id), IidSampled children k
i.i.d. draws from q, WithoutReplacement children k ordered draws without replacement (fewer if q's support
is smaller), each subtree grown from its node's own token path. Every such draft, weighted by its
probability, is verified exactly with ``tree_law``; the emitted tokens (path tokens, then next_token) are
completed autoregressively from the target table to M = depth + 1 tokens. Losslessness says the result is
exactly the autoregressive law prod_i p(s_i | s_<i) (lossless.md, Lemmas 2 and 3, by induction over depth).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specref._sampler import SeededCoin, chain_law, tree_law, verify_tree

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)

DET, IID, WOR = 0, 1, 2

# A template: (kind of the node's children, templates of its children). Leaves carry a kind too; it is unused.
Shape = tuple[int, tuple["Shape", ...]]
Table = dict[tuple[int, ...], np.ndarray]
# One drafted node: (parent index or -1, token, kind, token path from the root).
Node = tuple[int, int, int, tuple[int, ...]]

MAX_DRAFTS = 1000  # drafts enumerated per template at most (keeps every example fast)


def depth(shape: Shape) -> int:
    return 1 + max(map(depth, shape[1])) if shape[1] else 0


def child_draws(kind: int, k: int, q: np.ndarray) -> Iterator[tuple[tuple[int, ...], float]]:
    """Every ordered tuple of children tokens a node of `kind` drafts from q, with its probability."""
    vocab = len(q)
    if kind == DET:
        yield tuple(sorted(range(vocab), key=lambda t: (-q[t], t))[:k]), 1.0
    elif kind == IID:
        for xs in itertools.product(range(vocab), repeat=k):
            w = math.prod(q[x] for x in xs)
            if w > 0:
                yield xs, w
    else:
        for xs in itertools.permutations(range(vocab), min(k, int(np.count_nonzero(q)))):
            w, left = 1.0, list(range(vocab))
            for x in xs:
                w *= q[x] / sum(q[t] for t in left)
                left.remove(x)
            if w > 0:
                yield xs, w


def drafts(shape: Shape, qtable: Table, path: tuple[int, ...] = ()) -> list[tuple[list[Node], float]]:
    """Every draft of the subtree `shape` below the node at token `path`, with its probability; nodes in
    preorder (so parents come first and siblings in draw order), the subtree's root first with parent -1."""
    kind, kids = shape
    me: Node = (-1, path[-1] if path else 0, kind, path)
    if not kids:
        return [([me], 1.0)]
    out = []
    for tokens, w in child_draws(kind, len(kids), qtable[path]):
        options = [drafts(kids[j], qtable, (*path, x)) for j, x in enumerate(tokens)]
        for combo in itertools.product(*options):
            nodes, weight = [me], w
            for sub, sw in combo:
                base = len(nodes)
                nodes += [(par + base if par >= 0 else 0, t, k, pth) for par, t, k, pth in sub]
                weight *= sw
            out.append((nodes, weight))
    return out


def conditional(ptable: Table, vocab: int, m: int) -> Callable[[tuple[int, ...]], np.ndarray]:
    """cond(s): the AR law of the remaining m - len(s) tokens given prefix s, over V^(m - len(s)) cells."""
    memo: dict[tuple[int, ...], np.ndarray] = {}

    def cond(s: tuple[int, ...]) -> np.ndarray:
        if len(s) == m:
            return np.ones(1)
        if s not in memo:
            memo[s] = np.concatenate([ptable[s][y] * cond((*s, y)) for y in range(vocab)])
        return memo[s]

    return cond


def arrays(nodes: list[Node], ptable: Table, qtable: Table, vocab: int) -> tuple[np.ndarray, ...]:
    parents = np.array([n[0] for n in nodes], dtype=np.int64)
    tokens = np.array([n[1] for n in nodes], dtype=np.int64)
    kinds = np.array([n[2] for n in nodes], dtype=np.int64)
    p = np.stack([ptable[n[3]] for n in nodes])
    q = np.stack([qtable.get(n[3], np.full(vocab, 1.0 / vocab)) for n in nodes])
    return parents, tokens, kinds, p, q


def check_outcome(parents: np.ndarray, tokens: np.ndarray, p: np.ndarray, path: tuple[int, ...], nxt: int) -> None:
    """Per-outcome invariants: a root-to-node path, a next token the target allows at the stopping node, and
    never the token of one of its (all tried, all rejected) children."""
    assert path[0] == 0 and all(parents[b] == a for a, b in itertools.pairwise(path)), f"not a path: {path}"
    stop = path[-1]
    assert p[stop, nxt] > 0, f"next token {nxt} has p = 0 at node {stop}"
    rejected = {int(tokens[c]) for c in np.flatnonzero(parents == stop)}
    assert nxt not in rejected, f"next token {nxt} is a rejected child of node {stop} (children {rejected})"


def emitted_law(shape: Shape, ptable: Table, qtable: Table, vocab: int, *, q_none: bool = False,
                flaw: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(law of the first M emitted tokens with AR completion, AR law), both over V^M cells, M = depth + 1.
    Also checks every outcome's invariants and that fallbacks have negligible mass."""
    m = depth(shape) + 1
    cond = conditional(ptable, vocab, m)
    law, fallback = np.zeros(vocab**m), 0.0
    for nodes, weight in drafts(shape, qtable):
        parents, tokens, kinds, p, q = arrays(nodes, ptable, qtable, vocab)
        for path, nxt, fb, pr in tree_law(parents, tokens, kinds, p, None if q_none else q, flaw=flaw):
            check_outcome(parents, tokens, p, path, nxt)
            s = (*(int(tokens[i]) for i in path[1:]), nxt)
            start = int(np.ravel_multi_index(s, (vocab,) * len(s))) * vocab ** (m - len(s))
            block = cond(s)
            law[start : start + len(block)] += weight * pr * block
            fallback += weight * pr * fb
    assert fallback <= 1e-9, f"P(fallback) = {fallback}"
    return law, cond(())


def check_tree(shape: Shape, ptable: Table, qtable: Table, vocab: int, *, q_none: bool = False,
               flaw: str | None = None) -> None:
    """The exact losslessness check; raises AssertionError on any violation."""
    law, ar = emitted_law(shape, ptable, qtable, vocab, q_none=q_none, flaw=flaw)
    assert abs(law.sum() - 1.0) <= 1e-9, f"law sums to {law.sum()}"
    impossible = np.flatnonzero((ar == 0) & (law > 0))
    assert not len(impossible), f"emitted sequences that have probability 0: cells {impossible[:3]}"
    worst = float(np.abs(law - ar).max())
    assert worst <= 1e-9, f"emitted law differs from the AR law by {worst:.3g}"


def dist(vocab: int) -> st.SearchStrategy[np.ndarray]:
    """Distributions from integer weights in [0, 6] (zeros allowed), in [1, 6] (full support, which
    Hypothesis would otherwise rarely produce), or one-hot rows."""
    weights = st.lists(st.integers(0, 6), min_size=vocab, max_size=vocab).filter(lambda w: sum(w) > 0)
    full = st.lists(st.integers(1, 6), min_size=vocab, max_size=vocab)
    one_hot = st.integers(0, vocab - 1).map(lambda i: [int(j == i) for j in range(vocab)])
    return st.one_of(weights, full, one_hot).map(lambda w: np.array(w, dtype=np.float64) / sum(w))


def n_drafts_bound(kind: int, k: int, vocab: int) -> int:
    return 1 if kind == DET else vocab**k if kind == IID else math.perm(vocab, min(k, vocab))


ANY_KIND = st.integers(0, 2)


@st.composite
def templates(draw: st.DrawFn, kinds: st.SearchStrategy[int] = ANY_KIND,
              max_nodes: int = 7) -> tuple[Shape, Table, Table, int]:
    """A template (depth <= 3, <= max_nodes nodes, 1-3 children per internal node, random kinds), target
    and draft tables over V in [2, 4]."""
    vocab = draw(st.integers(2, 4))
    kids: list[list[int]] = [[]]
    level = [0]
    frontier = [0]
    while frontier:
        node = frontier.pop(0)
        room = min(3, max_nodes - len(kids))
        if level[node] == 3 or room == 0:
            continue
        for _ in range(draw(st.integers(1 if node == 0 else 0, room))):
            kids[node].append(len(kids))
            frontier.append(len(kids))
            kids.append([])
            level.append(level[node] + 1)
    kind = [draw(kinds) for _ in kids]
    budget = 1
    for node, children in enumerate(kids):  # keep the number of enumerated drafts small
        if children:
            bound = n_drafts_bound(kind[node], len(children), vocab)
            if budget * bound > MAX_DRAFTS:
                kind[node], bound = DET, 1
            budget *= bound

    def build(i: int) -> Shape:
        return kind[i], tuple(build(c) for c in kids[i])

    shape = build(0)
    m = depth(shape) + 1
    ptable = {s: draw(dist(vocab)) for n in range(m) for s in itertools.product(range(vocab), repeat=n)}
    if draw(st.sampled_from(["independent", "equal"])) == "equal":  # q == p: nothing is ever rejected
        qtable = {s: ptable[s].copy() for s in ptable if len(s) < m - 1}
    else:
        qtable = {s: draw(dist(vocab)) for n in range(m - 1) for s in itertools.product(range(vocab), repeat=n)}
    return shape, ptable, qtable, vocab


@SETTINGS
@given(templates())
def test_tree_verification_emits_the_autoregressive_law(case):
    check_tree(*case)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(templates(kinds=st.just(DET)))
def test_deterministic_trees_need_no_q(case):
    check_tree(*case, q_none=True)


@st.composite
def greedy_trees(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic trees with arbitrary tokens (duplicates allowed) and one-hot (greedy) target rows."""
    vocab, n = draw(st.integers(2, 4)), draw(st.integers(1, 8))
    parents = np.array([-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)], dtype=np.int64)
    tokens = np.array([0] + [draw(st.integers(0, vocab - 1)) for _ in range(1, n)], dtype=np.int64)
    p = np.eye(vocab)[[draw(st.integers(0, vocab - 1)) for _ in range(n)]]
    return parents, tokens, p


@settings(max_examples=150, deadline=None, derandomize=True)
@given(greedy_trees())
def test_greedy_target_takes_the_longest_agreeing_path(tree):
    """With one-hot p, the walk descends into the first child whose token is the argmax and emits the
    argmax at the first node where no child matches: one outcome with probability 1, whatever the coin."""
    parents, tokens, p = tree
    kinds = np.zeros_like(parents)
    path = [0]
    while True:
        match = [c for c in np.flatnonzero(parents == path[-1]) if tokens[c] == p[path[-1]].argmax()]
        if not match:
            break
        path.append(int(match[0]))
    expected = (tuple(path), int(p[path[-1]].argmax()), False, 1.0)
    assert tree_law(parents, tokens, kinds, p, None) == [expected]
    b = 3
    got = verify_tree(np.tile(parents, (b, 1)), np.tile(tokens, (b, 1)), np.tile(kinds, (b, 1)),
                      np.tile(p, (b, 1, 1)), None, SeededCoin(len(path)))
    for i in range(b):
        assert tuple(got[0][i, : got[1][i]]) == expected[0] and got[2][i] == expected[1] and not got[3][i]
        assert (got[0][i, got[1][i] :] == -1).all()


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(2, 4).flatmap(lambda v: st.tuples(st.just(v), st.integers(1, 3))), st.data())
def test_a_chain_of_iid_nodes_is_the_chain_verifier(vg, data):
    """tree_law on a path of IidSampled nodes equals chain_law on the same drafts."""
    vocab, g = vg
    p = np.stack([data.draw(dist(vocab)) for _ in range(g + 1)])
    q = np.stack([data.draw(dist(vocab)) for _ in range(g)])
    draft = np.array([data.draw(st.sampled_from(np.flatnonzero(row).tolist())) for row in q], dtype=np.int64)
    law = tree_law(np.arange(-1, g), np.concatenate([[0], draft]), np.ones(g + 1, dtype=np.int64), p,
                   np.concatenate([q, np.full((1, vocab), 1.0 / vocab)]))
    assert [(len(path) - 1, t, fb, pr) for path, t, fb, pr in law] == chain_law(p, q, draft)


def example_tree() -> tuple[np.ndarray, ...]:
    """Root with three i.i.d. children (a duplicate among them), the first with two children drawn without
    replacement and the third with a top-k child."""
    parents = np.array([-1, 0, 0, 0, 1, 1, 3])
    tokens = np.array([0, 1, 1, 2, 0, 2, 1])
    kinds = np.array([IID, WOR, DET, DET, DET, DET, DET])
    p = np.array([[0.2, 0.3, 0.5], [0.5, 0.1, 0.4], [1, 0, 0], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1],
                  [0.6, 0.2, 0.2], [0.25, 0.25, 0.5]])
    q = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [1, 0, 0], [0.5, 0.5, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])
    return parents, tokens, kinds, p, q


def test_sampled_outcomes_follow_the_exact_law():
    parents, tokens, kinds, p, q = example_tree()
    law = {(path, t): pr for path, t, _, pr in tree_law(parents, tokens, kinds, p, q)}
    b = 4000
    path, length, nxt, fallback = verify_tree(*(np.tile(a, (b, 1)) for a in (parents, tokens, kinds)),
                                              np.tile(p, (b, 1, 1)), np.tile(q, (b, 1, 1)), SeededCoin(7))
    assert not fallback.any() and ((length >= 1) & (length <= 3)).all()
    counts = Counter((tuple(path[i, : length[i]].tolist()), int(nxt[i])) for i in range(b))
    assert set(counts) <= {k for k, pr in law.items() if pr > 0}
    tv = 0.5 * sum(abs(counts.get(k, 0) / b - pr) for k, pr in law.items())
    assert tv < 0.05, tv  # sd of the TV estimate is about 0.01 here


def test_batch_equals_tree_by_tree_with_one_coin():
    parents, tokens, kinds, _, q = example_tree()
    rng = np.random.default_rng(0)
    b = 12
    ps = rng.dirichlet(np.ones(3), size=(b, len(parents)))
    args = [np.tile(a, (b, 1)) for a in (parents, tokens, kinds)]
    qs = np.tile(q, (b, 1, 1))
    batched = verify_tree(*args, ps, qs, SeededCoin(3))
    coin = SeededCoin(3)
    for i in range(b):
        one = verify_tree(*(a[i : i + 1] for a in args), ps[i : i + 1], qs[i : i + 1], coin)
        for whole, part in zip(batched, one, strict=True):
            np.testing.assert_array_equal(whole[i : i + 1], part)
    # Layout and dtype do not change the draws.
    again = verify_tree(*(np.asfortranarray(a) for a in args), ps.astype(np.float32).astype(np.float64),
                        np.ascontiguousarray(qs[:, :, ::-1])[:, :, ::-1], SeededCoin(3))
    for whole, part in zip(batched, again, strict=True):
        np.testing.assert_array_equal(whole, part)


# Mutation tests: each flaw (lossless.md §4) must make the exact check fail on a hand-made case on which the
# production rule passes. Each case is a root whose children are leaves, V = 3, M = 2.
def one_node(kind: int, k: int, p_root: list[float], q_root: list[float]) -> tuple[Shape, Table, Table, int]:
    vocab = len(p_root)
    ptable = {(): np.array(p_root)} | {(y,): np.eye(vocab)[(y + 1) % vocab] for y in range(vocab)}
    return (kind, ((DET, ()),) * k), ptable, {(): np.array(q_root)}, vocab


FLAW_CASES = {
    # top-2 of q = {0, 1}; the ratio rule accepts token 0 w.p. min(1, 0.2 / 0.5) = 0.4 > p(0) = 0.2.
    "topk_with_ratio": one_node(DET, 2, [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]),
    # i.i.d. pairs tried in descending q order: the more likely draw is always tried first.
    "sorted_siblings": one_node(IID, 2, [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]),
    # the second child without replacement has law q / (1 - q(x_1)), not q.
    "no_renorm": one_node(WOR, 2, [0.1, 0.4, 0.5], [0.6, 0.2, 0.2]),
    # duplicates under i.i.d. drafting must still update the residual.
    "skip_dup_update": one_node(IID, 2, [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]),
}


@pytest.mark.parametrize("flaw", sorted(FLAW_CASES))
def test_each_flaw_is_caught(flaw):
    case = FLAW_CASES[flaw]
    check_tree(*case)
    with pytest.raises(AssertionError, match="differs from the AR law"):
        check_tree(*case, flaw=flaw)


def test_flaws_keep_the_other_kinds_exact():
    """A flaw only changes the nodes it is about: on a tree of the other kinds the check still passes."""
    check_tree(*one_node(IID, 2, [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]), flaw="topk_with_ratio")
    check_tree(*one_node(DET, 2, [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]), flaw="sorted_siblings")
    check_tree(*one_node(IID, 2, [0.1, 0.4, 0.5], [0.6, 0.2, 0.2]), flaw="no_renorm")
    check_tree(*one_node(WOR, 2, [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]), flaw="skip_dup_update")
