"""Autoregressive decoding, the baseline every speculative method must reproduce in distribution.

x_t ~ p(· | x_<t) with p = process_logits(model(x_<t)) (temperature, top-k, top-p; argmax at T = 0). The
KV cache holds every committed token but the last, which is each step's input.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from specref.checks import check_request, samples_of
from specref.kv_cache import KVCache
from specref.logits import SamplingParams, process_logits, sample
from specref.model import Llama
from specref.seeds import streams
from specref.sequences import Sequences, Stream
from specref.stats import Generation, Stats


def prefill(model: Llama, cache: KVCache, seqs: Sequences) -> None:
    """Cache each prompt minus its last token, which becomes the first decoding input.

    Prompts of different lengths run as one padded batch: padding sits after each prompt, where causal
    attention keeps it from touching the prompt, and the cache then drops it.
    """
    width = int(seqs.prompt_lens.max()) - 1
    if width > 0:
        ids = torch.from_numpy(seqs.tokens[:, :width]).to(model.device)
        model(ids, torch.arange(width, device=model.device).expand_as(ids), cache, return_logits=False)
        cache.keep(torch.from_numpy(seqs.prompt_lens - 1))


def tensors(model: Llama, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(a).to(model.device) for a in arrays)


@torch.inference_mode()
def generate_batch(model: Llama, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   params: SamplingParams = SamplingParams(), seed: int = 0,
                   eos_token_ids: Sequence[int] = (), stream: Stream | None = None) -> Generation:
    """Continue every prompt of `prompts` once, all in one batch (greedy when params.temperature == 0)."""
    prompts = check_request(prompts, [model.config], max_new_tokens, seed)
    start, stats = time.perf_counter(), Stats()
    generator, _ = streams(seed, model.device)
    seqs = Sequences(prompts, max_new_tokens, eos_token_ids, stream)
    cache = model.new_cache(len(prompts), int(seqs.limits.max()))
    prefill(model, cache, seqs)
    while seqs.active.any():
        p = process_logits(model(*tensors(model, *seqs.last(1)), cache).logits[:, -1], params)  # p(· | x_<t)
        token = sample(p, generator).cpu().numpy()  # x_t ~ p
        stats.target_calls += 1
        stats.rounds += int(seqs.active.sum())
        seqs.commit(token[:, None], np.ones(len(prompts), dtype=np.int64))
        cache.keep(torch.from_numpy(seqs.lengths - 1))  # x_t is the next input, not yet cached
    stats.new_tokens = seqs.new_tokens
    stats.wall_time = time.perf_counter() - start
    return Generation(seqs.outputs(), stats)


def generate(model: Llama, prompt_ids: Sequence[int], *, num_samples: int = 1, **kw: Any) -> Generation:
    """Sample `num_samples` independent continuations of `prompt_ids` (keywords as in `generate_batch`)."""
    return generate_batch(model, samples_of(prompt_ids, num_samples), **kw)
