"""Draft trees for EAGLE: static trees from "choices" lists and EAGLE-2's dynamic trees.

A tree is a parent array plus tokens: node 0 is the root (the last committed token), `parents[i] < i`, a
node's children are listed in rank order. Everything else (depths, the ancestor mask that lets one target
forward score every node, the path to keep) derives from the parent array, in `specref._sampler`.

* Static (EAGLE-1, Li et al. 2024, arXiv 2401.15077; Medusa's tree format): a fixed list of paths of child
  ranks, `[0, 1]` = the second most likely child of the most likely child of the root.
* Dynamic (EAGLE-2, Li et al. 2024, arXiv 2406.16858): expand the `top_k` best nodes per level for `depth`
  levels, score every candidate by its path's cumulative draft log-probability, and keep the
  `total_tokens - 1` best. A child never scores above its parent, so the kept set is a tree.

Children are the draft's top-ranked tokens by default: deterministic given the context, so verification
uses delta-verification (accept child x with the residual target probability r(x)), never a q ratio. A static
tree may instead *sample* its children at T > 0 (`children="sampled"`): each node's children are draws one
after another without replacement from the head's law q, verified by recursive rejection sampling against q
(SpecInfer, Miao et al. 2024). At T = 1 a top-ranked child is accepted with probability p(x), a sampled one
with sum min(p, q), which is larger when the laws are flat and alike. EAGLE-2's dynamic trees keep the
candidates with the best scores, which would bias sampled ones, so they always take top-ranked children.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from specref.checks import check_count
from specref.eagle import EagleHead
from specref.kv_cache import KVCache
from specref.logits import SamplingParams, process_logits

# SafeAILab/EAGLE's default (named `mc_sim_7b_63` there): 25 paths, 4 / 8 / 8 / 3 / 2 nodes at depths 1-5.
DEFAULT_CHOICES: list[list[int]] = [
    [0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [0, 0, 0], [0, 0, 1],
    [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2],
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
]
# Medusa's `mc_sim_7b_63` (Cai et al. 2024, arXiv 2401.10774), the 63-node tree it was named for:
# 10 / 28 / 22 / 3 nodes at depths 1-4.
MEDUSA_CHOICES: list[list[int]] = [
    [0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0], [0, 5], [0, 0, 1],
    [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0], [0, 9], [8], [9], [1, 0, 0],
    [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 6],
    [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9], [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 1],
    [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5], [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 2],
    [1, 6], [0, 7, 0],
]
# A small tree for CPUs, near the size of the CPU's default dynamic tree (7 drafted nodes against 5): 3 / 3 / 1
# nodes at depths 1-3, siblings ranked 0..m-1 so that it can also sample its children.
SMALL_CHOICES: list[list[int]] = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
MAX_TREE_NODES = 4096  # a static tree larger than this is surely a mistake, and its n x n mask would be huge
# The verifier's codes for how a node's children were drafted (rust_sampler/src/tree.rs::Kind).
DETERMINISTIC, WITHOUT_REPLACEMENT = 0, 2


class Tree(NamedTuple):
    """One round's drafted trees: parents (B, n), tokens (B, n; column 0 the root's placeholder), kinds (B, n)
    how each node's children were drafted, and q (B, n, V) the law each sampled node's children were drawn
    from (None when every node's children are top-ranked)."""

    parents: np.ndarray
    tokens: Tensor
    kinds: np.ndarray
    q: Tensor | None = None


def static_tree(choices: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Parents and ranks (int64, root first with -1 for both) of the static tree a choices list describes.

    Nodes are sorted by (path length, path), so every parent precedes its children and siblings come in rank
    order. Raises ValueError naming the first malformed path: not a list of ints >= 0, empty, repeated, or
    missing its parent (the path without its last rank)."""
    if not isinstance(choices, (list, tuple)):
        raise ValueError(f"choices must be a list of lists of ints, got {type(choices).__name__}")
    if len(choices) + 1 > MAX_TREE_NODES:
        raise ValueError(f"choices make a tree of {len(choices) + 1} nodes (root included); at most "
                         f"{MAX_TREE_NODES} are allowed")
    paths: dict[tuple[int, ...], int] = {}
    for i, path in enumerate(choices):
        if not isinstance(path, (list, tuple)):
            raise ValueError(f"choices[{i}] is {type(path).__name__}, not a list of ints")
        for j, rank in enumerate(path):
            if not isinstance(rank, numbers.Integral) or isinstance(rank, (bool, np.bool_)):
                raise ValueError(f"choices[{i}][{j}] is {type(rank).__name__}, not an int")
            if not 0 <= rank < 2**63:
                raise ValueError(f"choices[{i}] has rank {rank} at position {j}; ranks must be >= 0 and fit in int64")
        key = tuple(int(rank) for rank in path)
        if not key:
            raise ValueError(f"choices[{i}] is empty; every path needs at least one rank")
        if key in paths:
            raise ValueError(f"choices[{i}] repeats choices[{paths[key]}]")
        paths[key] = i
    for key, i in paths.items():
        if len(key) > 1 and key[:-1] not in paths:
            raise ValueError(f"choices[{i}] has no parent: the path without its last rank is not in the list")
    ordered = sorted(paths, key=lambda path: (len(path), path))
    node = {path: i for i, path in enumerate(ordered, start=1)}
    parents = [-1] + [node.get(path[:-1], 0) for path in ordered]
    ranks = [-1] + [path[-1] for path in ordered]
    return np.array(parents, dtype=np.int64), np.array(ranks, dtype=np.int64)


def tree_buffers(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depths (root 0) and the ancestor mask (row i set at i and at each of its ancestors, the root included) of
    the tree(s) with parent array `parents`, (n,) or (B, n) int64: one target forward scores every node when
    node i sees only itself and its ancestors, at position offset depth(i) (SpecInfer, Miao et al. 2024,
    arXiv 2305.09781). Returns depth (..., n) int64 and mask (..., n, n) bool; ValueError for a parent array
    that is not one (node 0 the root with -1, `0 <= parents[i] < i` otherwise)."""
    if not isinstance(parents, np.ndarray) or parents.dtype != np.int64 or parents.ndim not in (1, 2):
        raise ValueError(f"parents must be a 1-D or 2-D numpy.ndarray of dtype int64, got {parents!r:.80}")
    if 0 in parents.shape:
        raise ValueError(f"parents has an empty axis: shape {parents.shape}")
    rows = parents.reshape(-1, parents.shape[-1])
    n, nodes = rows.shape[1], np.arange(rows.shape[1])
    bad = np.argwhere(~np.where(nodes == 0, rows == -1, (rows >= 0) & (rows < nodes)))
    if len(bad):
        b, i = bad[0]
        where = f"parents[{b}, {i}]" if parents.ndim == 2 else f"parents[{i}]"
        rule = f"node {i}'s parent must be an earlier node, in [0, {i})" if i else "node 0 is the root with parent -1"
        raise ValueError(f"{where} is {rows[b, i]}; {rule}")
    batch = np.arange(len(rows))
    depth, mask = np.zeros_like(rows), np.zeros((len(rows), n, n), dtype=bool)
    mask[:, nodes, nodes] = True
    for i in range(1, n):  # parents precede children, so a parent's row is complete when its child's is built
        depth[:, i] = depth[batch, rows[:, i]] + 1
        mask[:, i] |= mask[batch, rows[:, i]]
    return depth.reshape(parents.shape), mask.reshape((*parents.shape, n))


@dataclass(frozen=True)
class TreeSpec:
    """How to grow the draft tree each round."""

    kind: str = "dynamic"  # "static" or "dynamic"
    choices: list[list[int]] = field(default_factory=lambda: DEFAULT_CHOICES)
    total_tokens: int = 16  # dynamic: nodes verified per round, root included
    depth: int = 4  # dynamic: expansion rounds
    top_k: int = 4  # dynamic: children per expanded node and nodes expanded per level
    children: str = "top"  # "top": the head's top-ranked tokens; "sampled" (static, T > 0): drawn from q

    def __post_init__(self) -> None:
        if self.kind not in ("static", "dynamic"):
            raise ValueError(f"tree must be static or dynamic (or sampled: static with sampled children), got "
                             f"{self.kind!r}")
        for name in ("total_tokens", "depth", "top_k"):
            check_count(name, getattr(self, name))
        if self.children not in ("top", "sampled"):
            raise ValueError(f"children must be top or sampled, got {self.children!r}")
        if self.children == "sampled" and self.kind != "static":
            raise ValueError("sampled children need a static tree: a dynamic tree keeps its best-scoring candidates, "
                             "which would bias sampled ones")
        if self.kind == "static":
            if not self.choices:
                raise ValueError("choices is empty: a static tree needs at least one path")
            parents, ranks = static_tree(self.choices)  # raises ValueError naming a malformed path
            if self.children == "sampled":
                for node in range(len(parents)):
                    got = sorted(ranks[parents == node].tolist())
                    if got != list(range(len(got))):
                        raise ValueError(f"sampled children are the first draws in order: the children of a node "
                                         f"must have ranks 0..m-1, but one has ranks {got}")

    def check_vocab(self, vocab: int, head_vocab: int | None = None) -> None:
        """Refuse a tree that asks for a child rank the vocabulary does not have, before any model work. A
        dynamic tree ranks children in the head's own output vocabulary (`head_vocab`, EAGLE-3's reduced one)."""
        widest = self.top_k if self.kind == "dynamic" else 1 + max(max(path) for path in self.choices)
        if self.kind == "dynamic" and head_vocab is not None and widest > head_vocab:
            raise ValueError(f"tree top_k {widest} needs at least {widest} tokens, but the head drafts from "
                             f"{head_vocab}")
        if widest > vocab:
            what = f"top_k {self.top_k}" if self.kind == "dynamic" else f"choices rank {widest - 1}"
            raise ValueError(f"tree {what} needs at least {widest} tokens, but the vocabulary has {vocab}")

    def samples(self, params: SamplingParams) -> bool:
        """Whether a round draws children from q: a sampled tree at T > 0 (at T = 0 q is one-hot, so a node
        could have only one sampled child; the top-ranked ones are used instead)."""
        return self.children == "sampled" and not params.greedy

    def law_rows(self, params: SamplingParams) -> int:
        """Probability rows a round holds per sequence: p for every node, and q too when children are sampled."""
        return self.nodes * (2 if self.samples(params) else 1)

    @property
    def nodes(self) -> int:
        """Nodes verified per round, the root included."""
        return len(self.choices) + 1 if self.kind == "static" else self.total_tokens

    @property
    def scratch_rows(self) -> int:
        """Cache rows a round may append past the committed tokens: the scored tree, or the head's expansions."""
        return max(self.nodes, self.depth * self.top_k) + 2

    @property
    def max_depth(self) -> int:
        return max(map(len, self.choices)) if self.kind == "static" else self.depth + 1


# Default dynamic trees per device type. CPU: measured by `python -m specref calibrate` on the 2-core CI
# machine with oneDNN-packed weights (every verified node and head step costs real time there). CUDA: EAGLE-2's
# published setting (60 nodes are nearly free on a GPU), not yet measured by specref; run `calibrate --device cuda`.
# "cpu-unpacked": a CPU target whose products are not packed (`cpu.packing_pays` says where PyTorch's default
# product is faster) pays for every row it verifies past the third: on the 2-thread Xeon a forward took 1.09
# one-token steps for 2 rows, 1.15 for 3 and 1.59 for 4. Its trees are therefore tiny: in the bench there
# (`benchmarks/results/cpu-product-xeon-default.json`) the dynamic tree of 2 drafted nodes ran 1.07x its AR at
# T = 0 (tau 1.60) and one sampled child 1.19x at T = 1 (tau 1.43), where the 6/3/4 tree ran 0.84x and 0.69x.
# (Exploratory runs, not stored, put a chain of 2 and two root children level with the 2-node dynamic tree at
# T = 0, and a sampled chain of 2 a little behind one child at T = 1.)
DEVICE_TREES = {"cpu": TreeSpec(total_tokens=6, depth=3, top_k=4),
                "cpu-unpacked": TreeSpec(total_tokens=3, depth=2, top_k=2),
                "cuda": TreeSpec(total_tokens=60, depth=5, top_k=10)}
# Two sampled children at the root, a chain of two below the first and one below the second: as many nodes (5)
# as the CPU's dynamic tree verifies, and two head steps instead of three.
FORK_CHOICES: list[list[int]] = [[0], [1], [0, 0], [1, 0], [0, 0, 0]]
CHAIN1_CHOICES: list[list[int]] = [[0]]
# Default trees at T > 0 where one was measured faster than the dynamic tree (an interleaved `bench
# --temperatures 1`, no top-k/top-p). A sampled child is accepted with probability sum min(p, q), a top-ranked
# one with p(x) only: on the CPU at T = 1 the 5-node fork reached tau 1.68 and 1.16x AR where the dynamic 6/3/4
# tree reached 1.41 and 1.04x (README, "Speed levers"). Devices without a measured tree take the CPU's.
SAMPLING_TREES = {"cpu": TreeSpec("static", FORK_CHOICES, children="sampled"),
                  "cpu-unpacked": TreeSpec("static", CHAIN1_CHOICES, children="sampled")}


def device_tree(device_type: str, params: SamplingParams | None = None, *, packed: bool = True) -> TreeSpec:
    """The default tree of a device type for decoding with `params` (default greedy): its sampled tree at T > 0
    where one was measured, else its dynamic tree; types without measured trees get the CPU's. `packed`: whether a
    CPU target's products are oneDNN-packed (`cpu.pack_linears`), whose cost stays flat to 8 rows on AVX-512 CPUs
    (AVX2 Zen 3: +35% at 6 rows); without, the CPU's trees are the small "cpu-unpacked" ones."""
    kind = "cpu-unpacked" if device_type == "cpu" and not packed else device_type
    measured = kind if kind in DEVICE_TREES else "cpu"
    if params is not None and not params.greedy and measured in SAMPLING_TREES:
        return SAMPLING_TREES[measured]
    return DEVICE_TREES[measured]


def sample_children(logits: Tensor, m: int, params: SamplingParams, generator: torch.Generator
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """m children per row, drawn one after another without replacement from q = process_logits(logits): the
    Gumbel-top-k trick (Kool et al. 2019, arXiv 1903.06059), whose keys log q + Gumbel noise, sorted, are such
    a sequence of draws. Rows whose q has fewer than m tokens take their m top-ranked tokens instead (a set
    chosen from q alone, so delta-verification keeps them lossless). Returns tokens (B, m), q (B, V) and
    whether each row sampled (B,)."""
    q = process_logits(logits, params)
    positive = q > 0
    sampled, top = positive.sum(-1) >= m, logits.topk(m, dim=-1).indices
    if not sampled.any():
        return top, q, sampled
    # Keys only where some row's q is positive (a head's reduced vocabulary, less after top-k/top-p): a token
    # with q = 0 has key -inf and is never drawn, so the law is the same at a fraction of the noise.
    support = positive.any(0).nonzero()[:, 0]
    # float64 uniforms in (0, 1): float32 ones would bound the noise and leave tokens below ~1e-9 of the top
    # one undrawable, a law slightly off the q the verifier is given
    u = torch.rand((q.shape[0], len(support)), generator=generator, dtype=torch.float64,
                   device=q.device).clamp(1e-300, 1 - 2**-53)
    drawn = support[(q[:, support].double().log() - torch.log(-torch.log(u))).topk(m, dim=-1).indices]
    return torch.where(sampled[:, None], drawn, top), q, sampled


def grow_static(choices: list[list[int]], head: EagleHead, cache: KVCache, root_g: Tensor, root_logits: Tensor,
                root_pos: Tensor, sampling: tuple[SamplingParams, torch.Generator] | None = None) -> Tree:
    """A static tree: node i takes rank ranks[i] of its parent's draft logits or, with `sampling`, the
    ranks[i]-th of its parent's children drawn by `sample_children`. Only nodes with children run the head."""
    parents, ranks = static_tree(choices)
    depth, mask = tree_buffers(parents)
    n, b = len(parents), root_g.shape[0]
    tokens = torch.zeros(b, n, dtype=torch.long, device=root_g.device)
    g = root_g.new_zeros(b, n, root_g.shape[-1])
    logits = root_logits.new_zeros(b, n, root_logits.shape[-1])
    g[:, 0], logits[:, 0] = root_g, root_logits
    kinds = np.full((b, n), DETERMINISTIC, dtype=np.int64)
    law_dtype = torch.promote_types(root_logits.dtype, torch.float32)  # process_logits' dtype: no q rounds to 0
    q = logits.new_zeros(b, n, logits.shape[-1], dtype=law_dtype) if sampling else None
    expanded: list[int] = []  # nodes whose head step is in the cache this round, in cache order
    for level in range(1, int(depth.max()) + 1):
        nodes = np.flatnonzero(depth == level)
        for par in sorted(set(parents[nodes].tolist())):
            kids = nodes[parents[nodes] == par]
            m = int(ranks[kids].max()) + 1
            if q is None:
                drawn = logits[:, par].topk(m, dim=-1).indices
            else:
                drawn, q[:, par], sampled = sample_children(logits[:, par], m, *sampling)
                kinds[:, par] = np.where(sampled.cpu().numpy(), WITHOUT_REPLACEMENT, DETERMINISTIC)
            tokens[:, kids] = drawn[:, torch.from_numpy(ranks[kids]).to(drawn.device)]
        parents_of_next = set(parents[depth == level + 1].tolist())
        stepped = [int(i) for i in nodes if i in parents_of_next]
        if not stepped:
            continue
        cols = expanded + stepped
        sub = torch.from_numpy(mask[np.ix_(stepped, cols)]).to(root_g.device)
        out_g, out_logits = head(tokens[:, stepped], g[:, parents[stepped]],
                                 root_pos + torch.as_tensor(level, device=root_pos.device).expand(b, len(stepped)),
                                 cache, sub[None])
        g[:, stepped], logits[:, stepped] = out_g, out_logits
        expanded = cols
    return Tree(np.broadcast_to(parents, (b, n)).copy(), tokens, kinds, q)


def grow_dynamic(spec: TreeSpec, head: EagleHead, cache: KVCache, root_g: Tensor, root_logits: Tensor,
                 root_pos: Tensor) -> Tree:
    """EAGLE-2's dynamic tree, per sequence: n = total_tokens nodes of top-ranked (deterministic) children."""
    b, k, dev = root_g.shape[0], spec.top_k, root_g.device
    ids = head.vocab_ids  # children are ranked in the head's own vocabulary, then named by token id
    top = root_logits.float().log_softmax(-1).topk(k, dim=-1)
    # Every recorded candidate: token, score (cumulative log-prob), parent candidate (-1 = root), depth.
    tokens, scores = [top.indices], [top.values]
    parent = [torch.full((b, k), -1, device=dev)]
    depth = [torch.ones(b, k, dtype=torch.long, device=dev)]
    frontier = torch.arange(k, device=dev).expand(b, k)  # candidate indices expanded next
    front_g = root_g[:, None].expand(b, k, -1)
    expanded_rows: Tensor | None = None  # candidate index of each row appended to the head cache this round
    for level in range(1, spec.depth + 1):
        all_parent = torch.cat(parent, 1)
        count = all_parent.shape[1]
        # ancestors of each frontier candidate (itself included), among candidates
        anc = torch.zeros(b, k, count, dtype=torch.bool, device=dev)
        node = frontier.clone()
        for _ in range(level):
            valid = node >= 0
            anc.scatter_(2, node.clamp_min(0)[..., None], valid[..., None])
            node = torch.where(valid, all_parent.gather(1, node.clamp_min(0)), node)
        cols = frontier if expanded_rows is None else torch.cat([expanded_rows, frontier], 1)
        sub = anc.gather(2, cols[:, None, :].expand(b, k, cols.shape[1]))
        out_g, out_logits = head(torch.cat(tokens, 1).gather(1, frontier), front_g,
                                 root_pos + torch.as_tensor(level, device=dev).expand(b, k), cache, sub,
                                 draft_vocab=True)
        expanded_rows = cols
        child = out_logits.float().log_softmax(-1).topk(k, dim=-1)  # (B, k, k)
        child_scores = torch.cat(scores, 1).gather(1, frontier)[..., None] + child.values
        start = count
        tokens.append((child.indices if ids is None else ids[child.indices]).reshape(b, k * k))
        scores.append(child_scores.reshape(b, k * k))
        parent.append(frontier[..., None].expand(b, k, k).reshape(b, k * k))
        depth.append(torch.full((b, k * k), level + 1, device=dev))
        best = scores[-1].topk(k, dim=-1).indices
        frontier = start + best
        front_g = out_g.gather(1, (best // k)[..., None].expand(b, k, out_g.shape[-1]))
    parents, kept = select(spec.total_tokens, torch.cat(tokens, 1), torch.cat(scores, 1), torch.cat(parent, 1),
                           torch.cat(depth, 1))
    return Tree(parents, kept, np.full_like(parents, DETERMINISTIC))


def select(total: int, tokens: Tensor, scores: Tensor, parent: Tensor, depth: Tensor) -> tuple[np.ndarray, Tensor]:
    """Keep the total - 1 best candidates (ties: shallower first, so a kept node's parent is kept too) and
    lay them out as trees: by depth, then candidate order; returns parents (B, n) and tokens (B, n)."""
    b, m = tokens.shape
    keep = min(total - 1, m)
    order = torch.argsort(-scores.double() + depth.double() * 1e-9, dim=1, stable=True)[:, :keep]
    order = order.gather(1, torch.argsort(depth.gather(1, order) * m + order, dim=1))  # by depth, then index
    node_of = torch.full((b, m), -1, dtype=torch.long, device=tokens.device)
    node_of.scatter_(1, order, torch.arange(1, keep + 1, device=tokens.device).expand(b, keep))
    par = parent.gather(1, order)
    parents = torch.where(par < 0, 0, node_of.gather(1, par.clamp_min(0)))
    out_tokens = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=tokens.device), tokens.gather(1, order)], 1)
    parents = torch.cat([torch.full((b, 1), -1, device=tokens.device), parents], 1)
    return parents.cpu().numpy(), out_tokens
