"""Speculative sampling (SpS): Leviathan, Kalman & Matias 2023 (arXiv 2211.17192); Chen et al. 2023
(arXiv 2302.01318).

One round, with p = target and q = draft distributions after the same logits processing:

    draft   x_i ~ q_i = q(· | prefix, x_<i)                          i = 1..gamma (q one-hot for argmax drafts)
    score   p_1..p_{gamma+1} from one target forward over [last token, x_1..x_gamma]
    verify  accept x_i iff u_i q_i(x_i) < p_i(x_i), u_i ~ U[0, 1) fresh      (strict: p(x) = 0 never passes)
            first rejection at i: emit y ~ norm(max(0, p_i - q_i)) and stop
            all accepted:         emit the bonus y ~ p_{gamma+1}
    keep    the target's K/V rows of the last token and the accepted drafts

P(emit y at position i) = min(p_i, q_i)(y) + (p_i - q_i)^+(y) = p_i(y), so the output is distributed exactly
as autoregressive sampling from p, whatever the draft. The verify step runs in Rust:
`rust_sampler/src/chain.rs::verify_chain`, one function that reads like the lines above.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specref._sampler import verify_chain
from specref.autoregressive import prefill, tensors
from specref.checks import check_count, check_pair, check_request, samples_of
from specref.kv_cache import KVCache
from specref.logits import GREEDY, SamplingParams, process_logits, sample
from specref.memory import check_fits, round_bytes
from specref.model import Llama
from specref.seeds import streams
from specref.sequences import Sequences, Stream
from specref.stats import Generation, Round, Stats, Trace

# Default drafts per round by device. CPU: with the shipped draft (alpha ~0.35, c ~0.07-0.09) gamma = 1 was the
# fastest in 4 of the 6 comparisons (T = 0 and 1) of the three AMD benchmark runs, 1.13x specref AR on average
# against 1.09x for gamma = 2 and 1.08x for 3 (README, "Speed levers"), though tau / (gamma c + 1) puts 2 ahead by
# 2-4%: each drafted position adds per-round work, and on Zen 3 the target's cost grew from 2 to 3 rows. CUDA's (3,
# the former default) is unmeasured.
DEVICE_GAMMAS = {"cpu": 1, "cuda": 3}


def device_gamma(device_type: str) -> int:
    """The default gamma of a device type (`DEVICE_GAMMAS`; types not listed take CUDA's)."""
    return DEVICE_GAMMAS.get(device_type, DEVICE_GAMMAS["cuda"])


def propose(logits: Tensor, params: SamplingParams, greedy_draft: bool,
            generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A draft token per row and the exact law q it was drawn from (one-hot on the argmax for greedy drafts).

    Reporting any other q (say the softmax behind an argmax draft) breaks losslessness (transformers #32867).
    """
    q = process_logits(logits, GREEDY if greedy_draft else params)
    return sample(q, generator), q


def draft_chain(draft: Llama, cache: KVCache, seqs: Sequences, feed: int, gamma: int, params: SamplingParams,
                greedy_draft: bool, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Step 1: x_1..x_gamma (B, gamma) and the laws q_1..q_gamma (B, gamma, V) they were drawn from.

    The draft first reads the last `feed` committed tokens. Re-reading the second-to-last one re-writes its K/V
    when the draft already had them and adds them when it was the previous round's last draft, which the
    draft sampled but never read.
    """
    cache.keep(torch.from_numpy(seqs.lengths - feed))
    ids, pos = tensors(draft, *seqs.last(feed))
    drafts, qs = [], []
    for _ in range(gamma):
        x, q = propose(draft(ids, pos, cache).logits[:, -1], params, greedy_draft, generator)
        drafts.append(x)
        qs.append(q)
        ids, pos = x[:, None], pos[:, -1:] + 1
    return torch.stack(drafts, dim=1), torch.stack(qs, dim=1)


def score(target: Llama, cache: KVCache, seqs: Sequences, x: Tensor, params: SamplingParams) -> Tensor:
    """Step 2: p_1..p_{gamma+1} (B, gamma+1, V) from one target forward over [last token, x_1..x_gamma]."""
    last, last_pos = tensors(target, *seqs.last(1))
    positions = last_pos + torch.arange(x.shape[1] + 1, device=x.device)
    return process_logits(target(torch.cat([last, x], dim=1), positions, cache).logits, params)


@torch.inference_mode()
def generate_batch(target: Llama, draft: Llama, prompts: Sequence[Sequence[int]], *, gamma: int,
                   max_new_tokens: int, params: SamplingParams = SamplingParams(), seed: int = 0,
                   eos_token_ids: Sequence[int] = (), greedy_draft: bool = False,
                   stream: Stream | None = None, trace: Trace | None = None) -> Generation:
    """Continue every prompt once with the target's distribution, drafting `gamma` tokens a round."""
    check_count("gamma", gamma)
    check_pair(target.config, draft.config)
    if draft.device != target.device:
        raise ValueError(f"draft is on {draft.device} but the target is on {target.device}")
    prompts = check_request(prompts, [target.config, draft.config], max_new_tokens, seed)
    start, stats = time.perf_counter(), Stats()
    generator, coin = streams(seed, target.device)
    seqs = Sequences(prompts, max_new_tokens, eos_token_ids, stream)
    batch, capacity = len(prompts), int(seqs.limits.max()) + gamma + 1
    check_fits(round_bytes(batch * (2 * gamma + 1), target.config.vocab_size), f"probabilities for {gamma} drafts")
    tcache, dcache = (m.new_cache(batch, capacity) for m in (target, draft))
    prefill(target, tcache, seqs)
    prefill(draft, dcache, seqs)
    feed = 1  # committed tokens the draft reads first: the last one, later also the one before
    while seqs.active.any():
        x, q = draft_chain(draft, dcache, seqs, feed, gamma, params, greedy_draft, generator)  # 1. draft
        feed = 2
        p = score(target, tcache, seqs, x, params)  # 2. score
        x = x.cpu().numpy()
        accepted, token, fallback = verify_chain(p.cpu().numpy(), q.cpu().numpy(), x, coin)  # 3-5. verify
        if trace is not None and seqs.active[0]:  # the first sequence's round, for pictures
            trace(Round(x[0].tolist(), list(range(1, accepted[0] + 1)), int(token[0])))
        new = np.concatenate([x, token[:, None]], axis=1)
        new[np.arange(batch), accepted] = token  # x_1..x_n, then the correction or bonus token
        stats.record_round(gamma, accepted[seqs.active].tolist())
        stats.residual_fallbacks += int(fallback[seqs.active].sum())
        stats.target_calls += 1
        stats.draft_calls += gamma
        seqs.commit(new, accepted + 1)
        tcache.keep(torch.from_numpy(seqs.lengths - 1))  # keep: K/V of the last token and accepted drafts
    stats.new_tokens = seqs.new_tokens
    stats.wall_time = time.perf_counter() - start
    return Generation(seqs.outputs(), stats)


def generate(target: Llama, draft: Llama, prompt_ids: Sequence[int], *, num_samples: int = 1,
             **kw: Any) -> Generation:
    """Sample `num_samples` continuations of `prompt_ids` from the target (keywords as in `generate_batch`)."""
    return generate_batch(target, draft, samples_of(prompt_ids, num_samples), **kw)
