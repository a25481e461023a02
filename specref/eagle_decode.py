"""EAGLE speculative decoding: a draft head grows a token tree from the target's features, one target forward
scores every node under an ancestor mask, and the Rust verifier keeps a root-to-node path plus one token.

One round, with x_0..x_{L-1} committed (the target cache holds all but the last, which is the tree's root):

    grow    the head, started from its output at the root, drafts a tree (static or EAGLE-2 dynamic) of the
            draft's top-ranked tokens;
    score   the target runs [root, nodes] at positions L-1 + depth under the ancestor mask: p per node;
    verify  δ-verification, node by node: accept child x with the residual probability r(x), else zero r(x)
            and renormalise; stop with y ~ r (Li et al. 2024, EAGLE-2). Top-ranked children are chosen
            without the target's randomness, so they need no q ratio; children a static tree sampled from the
            head's q take recursive rejection sampling instead (accept with min(1, r/q), r <- norm((r - q)+));
    keep    the target's K/V rows of the accepted path are gathered into place (`KVCache.keep`); the head
            re-reads the accepted tokens with the target's real features, and its tree rows are dropped.

The output is distributed exactly as autoregressive sampling from the target, whatever the head.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from specref._sampler import verify_tree
from specref.autoregressive import tensors
from specref.checks import check_request, samples_of
from specref.eagle import EagleHead
from specref.kv_cache import KVCache
from specref.logits import SamplingParams, process_logits
from specref.memory import check_fits, round_bytes
from specref.model import Llama, Output
from specref.seeds import streams
from specref.sequences import Sequences, Stream
from specref.stats import Generation, Round, Stats, Trace
from specref.tree import Tree, TreeSpec, grow_dynamic, grow_static, tree_buffers


def last_of(x: Tensor, count: np.ndarray) -> Tensor:
    """Row b's entry at index count[b] - 1 of x (B, T, ...)."""
    idx = torch.from_numpy(count - 1).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), idx]


def prefill(target: Llama, head: EagleHead, tcache: KVCache, hcache: KVCache, seqs: Sequences) -> tuple[Tensor, Tensor]:
    """Cache the prompts in both models; return the head's output and draft logits at the last prompt pair.

    The target caches x_0..x_{P-2} and gives their features f_j; the head reads the pairs (f_j, x_{j+1}) at
    positions j, and its output at j = P-2 drafts the root's children.
    """
    width, batch = int(seqs.prompt_lens.max()) - 1, len(seqs.prompt_lens)
    ids, pos = tensors(target, seqs.tokens[:, : width + 1], np.arange(width + 1)[None].repeat(batch, 0))
    out = target(ids[:, :width], pos[:, :width], tcache, return_logits=False, layer_inputs=head.target_layers)
    tcache.keep(torch.from_numpy(seqs.prompt_lens - 1))
    g, _ = head(ids[:, 1:], head.features(out.hidden, out.layer_inputs), pos[:, :width], hcache,
                return_logits=False)
    hcache.keep(torch.from_numpy(seqs.prompt_lens - 1))
    root_g = last_of(g, seqs.prompt_lens - 1)
    return root_g, head.logits(root_g)  # only the last pair's logits are used


def grow(tree: TreeSpec, head: EagleHead, hcache: KVCache, root_g: Tensor, root_logits: Tensor,
         lengths: np.ndarray, params: SamplingParams, generator: torch.Generator) -> Tree:
    """Grow: this round's trees (top-ranked children, or sampled ones for a sampled static tree at T > 0, where
    q one-hot would allow only one child). The head's tree rows are scratch."""
    root_pos = torch.from_numpy(lengths - 2).to(root_g.device)[:, None]
    if tree.kind == "static":
        sampling = (params, generator) if tree.samples(params) else None
        drafted = grow_static(tree.choices, head, hcache, root_g, root_logits, root_pos, sampling)
    else:
        drafted = grow_dynamic(tree, head, hcache, root_g, root_logits, root_pos)
    hcache.keep(torch.from_numpy(lengths - 1))
    return drafted


def score(target: Llama, tcache: KVCache, taps: tuple[int, ...], parents: np.ndarray, tokens: Tensor,
          lengths: np.ndarray) -> Output:
    """Score: one target forward over [root, nodes], node i at position L - 1 + depth(i), seeing the cache,
    its ancestors and itself (the ancestor mask). Tokens' column 0 must hold the root (the last token)."""
    depth, mask = tree_buffers(parents)
    positions = torch.from_numpy(lengths[:, None] - 1 + depth).to(target.device)
    return target(tokens, positions, tcache, mask=torch.from_numpy(mask).to(target.device), layer_inputs=taps)


class Path(NamedTuple):
    """What a round keeps: the emitted tokens (B, W), the accepted node indices from the root (B, W, padded
    with 0) and each path's length counting the root (B,); W is the longest path."""

    tokens: np.ndarray
    nodes: np.ndarray
    length: np.ndarray


def accepted_path(tree_tokens: np.ndarray, path: np.ndarray, path_len: np.ndarray, token: np.ndarray) -> Path:
    """The accepted nodes' tokens, then the correction or bonus `token`, from the verifier's padded paths."""
    width = int(path_len.max())
    nodes = np.where(path[:, :width] >= 0, path[:, :width], 0)
    new = np.concatenate([np.take_along_axis(tree_tokens, nodes[:, 1:], 1), token[:, None]], 1)
    new[np.arange(len(new)), path_len - 1] = token
    return Path(new, nodes, path_len)


def keep(head: EagleHead, tcache: KVCache, hcache: KVCache, out: Output, path: Path, lengths: np.ndarray,
         committed: np.ndarray) -> tuple[Tensor, Tensor]:
    """Keep: gather the target's K/V rows of the accepted path into place; the head re-reads the path with the
    target's real features, pairs (f_node, next token); return its output and logits at the last pair."""
    dev = out.hidden.device
    base, idx = torch.from_numpy(lengths - 1).to(dev), torch.from_numpy(path.nodes).to(dev)
    tcache.keep(torch.from_numpy(committed - 1), start=base, rows=base[:, None] + idx)
    feats = head.features(out.hidden, out.layer_inputs)
    feats = feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[-1]))
    pos = base[:, None] + torch.arange(path.nodes.shape[1], device=dev)
    g, _ = head(torch.from_numpy(path.tokens).to(dev), feats, pos, hcache, return_logits=False)
    hcache.keep(torch.from_numpy(committed - 1))
    root_g = last_of(g, path.length)
    return root_g, head.logits(root_g)  # only the last pair's logits are used


def check_prompt_lengths(prompts: Sequence[Sequence[int]]) -> None:
    """EAGLE's head reads a target feature and the token after it, so a prompt needs two tokens."""
    if min(map(len, prompts)) < 2:
        raise ValueError("EAGLE decoding needs prompts of at least 2 tokens (the head reads a target feature and the "
                         "token after it): use SpS or AR for a one-token prompt")


@torch.inference_mode()
def generate_batch(target: Llama, head: EagleHead, prompts: Sequence[Sequence[int]], *, tree: TreeSpec,
                   max_new_tokens: int, params: SamplingParams = SamplingParams(), seed: int = 0,
                   eos_token_ids: Sequence[int] = (), stream: Stream | None = None,
                   trace: Trace | None = None) -> Generation:
    """Continue every prompt once with the target's distribution, drafting trees with an EAGLE head."""
    if head.target is not target:
        raise ValueError("the EAGLE head was loaded for another target model")
    tree.check_vocab(target.config.vocab_size, head.config.draft_vocab_size)
    prompts = check_request(prompts, [target.config], max_new_tokens, seed)
    check_prompt_lengths(prompts)
    start, stats = time.perf_counter(), Stats()
    gen, coin = streams(seed, target.device)  # gen draws sampled children, coin makes the verifier's decisions
    seqs = Sequences(prompts, max_new_tokens, eos_token_ids, stream)
    capacity = int(seqs.limits.max()) + tree.scratch_rows
    rows = len(prompts) * tree.law_rows(params)
    check_fits(round_bytes(rows, target.config.vocab_size), f"probabilities of {tree.nodes} nodes")
    tcache, hcache = target.new_cache(len(prompts), capacity), head.new_cache(len(prompts), capacity)
    root_g, root_logits = prefill(target, head, tcache, hcache, seqs)
    while seqs.active.any():
        lengths = seqs.lengths.copy()
        parents, tokens, kinds, q = grow(tree, head, hcache, root_g, root_logits, lengths, params, gen)  # 1. grow
        tokens[:, 0] = torch.from_numpy(seqs.last(1)[0][:, 0]).to(tokens.device)  # the root is the last token
        out = score(target, tcache, head.target_layers, parents, tokens, lengths)  # 2. score
        p, tok = process_logits(out.logits, params).cpu().numpy(), tokens.cpu().numpy()
        q = None if q is None else q.cpu().numpy()
        path, path_len, token, _ = verify_tree(parents, tok, kinds, p, q, coin)  # 3. verify
        kept = accepted_path(tok, path, path_len, token)
        if trace is not None and seqs.active[0]:  # the first tree, each node's p given its parent (pictures)
            trace(Round(tok[0].tolist(), path[0, :path_len[0]].tolist(), int(token[0]), parents[0].tolist(),
                        [1.0] + [float(p[0, parents[0, i], tok[0, i]]) for i in range(1, tok.shape[1])]))
        stats.record_round(tree.max_depth, (path_len - 1)[seqs.active].tolist())
        stats.tree_nodes += (tree.nodes - 1) * int(seqs.active.sum())
        stats.target_calls += 1
        stats.draft_calls += 1
        seqs.commit(kept.tokens, path_len)
        root_g, root_logits = keep(head, tcache, hcache, out, kept, lengths, seqs.lengths)  # 4. keep
    stats.new_tokens = seqs.new_tokens
    stats.wall_time = time.perf_counter() - start
    return Generation(seqs.outputs(), stats)


def generate(target: Llama, head: EagleHead, prompt_ids: Sequence[int], *, num_samples: int = 1,
             **kw: Any) -> Generation:
    """Sample `num_samples` continuations of `prompt_ids` with EAGLE tree drafting (keywords as `generate_batch`)."""
    return generate_batch(target, head, samples_of(prompt_ids, num_samples), **kw)
