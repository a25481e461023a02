"""EAGLE speculative decoding: a draft head grows a token tree from the target's features, one target forward
scores every node under an ancestor mask, and the Rust verifier keeps a root-to-node path plus one token.

One round, with x_0..x_{L-1} committed (the target cache holds all but the last, which is the tree's root):

    grow    the head, started from its output at the root, drafts a tree (static or EAGLE-2 dynamic);
    score   the target runs [root, nodes] at positions L-1 + depth under the ancestor mask: p per node;
    verify  delta-verification, node by node: accept child x with the residual probability r(x), else zero
            r(x) and renormalise; stop with y ~ r (Li et al. 2024, EAGLE-2; lossless.md Lemma 2);
    keep    the target's K/V rows of the accepted path are gathered into place (`KVCache.keep`); the head
            re-reads the accepted tokens with the target's real features, and its tree rows are dropped.

The output is distributed exactly as autoregressive sampling from the target, whatever the head.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from specref._sampler import tree_buffers, verify_tree
from specref.autoregressive import tensors
from specref.checks import check_count, check_request
from specref.eagle import EagleHead
from specref.logits import SamplingParams, process_logits
from specref.model import Llama
from specref.seeds import streams
from specref.sequences import Sequences, Stream
from specref.stats import Generation, Stats
from specref.tree import TreeSpec, grow_dynamic, grow_static


def last_of(x: torch.Tensor, count: np.ndarray) -> torch.Tensor:
    """Row b's entry at index count[b] - 1 of x (B, T, ...)."""
    idx = torch.from_numpy(count - 1).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), idx]


@torch.inference_mode()
def generate_batch(target: Llama, head: EagleHead, prompts: Sequence[Sequence[int]], *, tree: TreeSpec,
                   max_new_tokens: int, params: SamplingParams = SamplingParams(), seed: int = 0,
                   eos_token_ids: Sequence[int] = (), stream: Stream | None = None) -> Generation:
    """Continue every prompt once with the target's distribution, drafting trees with an EAGLE head."""
    if head.target is not target:
        raise ValueError("the EAGLE head was loaded for another target model")
    prompts = check_request(prompts, [target.config], max_new_tokens, seed)
    if min(map(len, prompts)) < 2:
        raise ValueError("EAGLE decoding needs prompts of at least 2 tokens (the head reads a target feature)")
    start, stats = time.perf_counter(), Stats()
    _, coin = streams(seed, target.device)
    seqs = Sequences(prompts, max_new_tokens, eos_token_ids, stream)
    batch, dev, taps = len(prompts), target.device, head.target_layers
    nodes = len(tree.choices) + 1 if tree.kind == "static" else tree.total_tokens
    capacity = int(seqs.limits.max()) + max(nodes, tree.depth * tree.top_k) + 2
    tcache, hcache = target.new_cache(batch, capacity), head.new_cache(batch, capacity)

    # Prefill: the target caches x_0..x_{P-2} and gives their features f_j; the head reads the pairs
    # (f_j, x_{j+1}) at positions j; its output at j = P-2 drafts the root's children.
    width = int(seqs.prompt_lens.max()) - 1
    ids, pos = tensors(target, seqs.tokens[:, : width + 1], np.arange(width + 1)[None].repeat(batch, 0))
    out = target(ids[:, :width], pos[:, :width], tcache, return_logits=False, layer_inputs=taps)
    tcache.keep(torch.from_numpy(seqs.prompt_lens - 1))
    g, logits = head(ids[:, 1:], head.features(out.hidden, out.layer_inputs), pos[:, :width], hcache)
    hcache.keep(torch.from_numpy(seqs.prompt_lens - 1))
    root_g, root_logits = last_of(g, seqs.prompt_lens - 1), last_of(logits, seqs.prompt_lens - 1)

    while seqs.active.any():
        lengths = seqs.lengths.copy()
        root_pos = torch.from_numpy(lengths - 2).to(dev)[:, None]

        def step(tok: torch.Tensor, feat: torch.Tensor, p: torch.Tensor, m: torch.Tensor) -> tuple:
            return head(tok, feat, p, hcache, m)

        if tree.kind == "static":
            parents, tree_tokens = grow_static(tree.choices, root_g, root_logits, step, root_pos)
        else:
            parents, tree_tokens = grow_dynamic(tree, root_g, root_logits, step, root_pos)
        hcache.keep(torch.from_numpy(lengths - 1))  # the tree's head rows were scratch
        stats.draft_calls += 1

        depth, mask, _ = tree_buffers(parents)
        last = torch.from_numpy(seqs.last(1)[0]).to(dev)
        tree_tokens[:, :1] = last
        out = target(tree_tokens, torch.from_numpy(lengths[:, None] - 1 + depth).to(dev), tcache,
                     mask=torch.from_numpy(mask).to(dev), layer_inputs=taps)
        p = process_logits(out.logits, params)
        tok = tree_tokens.cpu().numpy()
        path, path_len, token, _ = verify_tree(parents, tok, np.zeros_like(parents), p.cpu().numpy(), None, coin)

        width = int(path_len.max())
        safe = np.where(path[:, :width] >= 0, path[:, :width], 0)
        new = np.concatenate([np.take_along_axis(tok, safe[:, 1:], 1), token[:, None]], 1)
        new[np.arange(batch), path_len - 1] = token  # accepted drafts, then the correction or bonus token
        stats.record_round(tree.max_depth, (path_len - 1)[seqs.active].tolist())
        stats.tree_nodes += (nodes - 1) * int(seqs.active.sum())
        stats.target_calls += 1
        seqs.commit(new, path_len)

        base = torch.from_numpy(lengths - 1).to(dev)
        tcache.keep(torch.from_numpy(seqs.lengths - 1), start=base, rows=base[:, None] + torch.from_numpy(safe).to(dev))
        # The head re-reads the accepted path with the target's real features: pair (f_node, next token).
        feats = head.features(out.hidden, out.layer_inputs)
        feats = feats.gather(1, torch.from_numpy(safe).to(dev)[..., None].expand(-1, -1, feats.shape[-1]))
        g, logits = head(torch.from_numpy(new).to(dev), feats, base[:, None] + torch.arange(width, device=dev),
                         hcache)
        hcache.keep(torch.from_numpy(seqs.lengths - 1))
        root_g, root_logits = last_of(g, path_len), last_of(logits, path_len)
    stats.new_tokens = seqs.new_tokens
    stats.wall_time = time.perf_counter() - start
    return Generation(seqs.outputs(), stats)


def generate(target: Llama, head: EagleHead, prompt_ids: Sequence[int], *, tree: TreeSpec, max_new_tokens: int,
             params: SamplingParams = SamplingParams(), seed: int = 0, num_samples: int = 1,
             eos_token_ids: Sequence[int] = (), stream: Stream | None = None) -> Generation:
    """Sample `num_samples` continuations of `prompt_ids` from the target with EAGLE tree drafting."""
    return generate_batch(target, head, [list(prompt_ids)] * check_count("num_samples", num_samples), tree=tree,
                          max_new_tokens=max_new_tokens, params=params, seed=seed, eos_token_ids=eos_token_ids,
                          stream=stream)
