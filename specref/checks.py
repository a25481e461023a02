"""Argument checks shared by the decoding loops: every bad request fails here, before any model work."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from specref.memory import check_fits
from specref.model import ModelConfig


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_run(max_new_tokens: int, seed: int) -> None:
    """The settings of any decoding run: max_new_tokens >= 1, 0 <= seed < 2**64 (the coin's seed is 64 bits)."""
    check_count("max_new_tokens", max_new_tokens)
    check_count("seed", seed, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"seed must be below 2**64, got {seed}")


def check_request(prompts: Sequence[Sequence[int]], configs: Sequence[ModelConfig], max_new_tokens: int,
                  seed: int) -> list[list[int]]:
    """Validate a batch of prompts against every model that will run them; return them as lists."""
    check_run(max_new_tokens, seed)
    prompts = prompts if isinstance(prompts, str) else list(prompts)  # a generator is read once
    if isinstance(prompts, str) or any(isinstance(p, int | np.integer | str) for p in prompts):
        raise ValueError(f"prompts must be a list of token-id lists (one per sequence), got {str(prompts)[:80]}; "
                         "for a single prompt use generate(...)")
    prompts = [list(p) for p in prompts]
    if not prompts:
        raise ValueError("no prompts given")
    for prompt in prompts:
        if not prompt:
            raise ValueError("prompt is empty: at least one token is needed")
        for config in configs:
            vocab, max_pos = config.vocab_size, config.max_position_embeddings
            if any(isinstance(t, bool) or not isinstance(t, int | np.integer) or not 0 <= t < vocab for t in prompt):
                raise ValueError(f"prompt token ids must be integers in [0, {vocab}), got {prompt[:20]}")
            if len(prompt) + max_new_tokens > max_pos:
                raise ValueError(f"prompt length {len(prompt)} + max_new_tokens {max_new_tokens} exceeds the "
                                 f"model's {max_pos} positions (max_position_embeddings)")
    return prompts


def check_pair(target: ModelConfig, draft: ModelConfig) -> None:
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft vocab size {draft.vocab_size} differs from the target's "
                         f"{target.vocab_size}: the two models must share one tokenizer")


def samples_of(prompt_ids: Sequence[int], num_samples: int) -> list[list[int]]:
    """`num_samples` copies of one prompt: independent continuations are one batch."""
    if isinstance(prompt_ids, int | np.integer | str):  # arrays, tensors and tuples are fine
        raise ValueError(f"prompt_ids must be a list of token ids, got {prompt_ids!r}")
    prompt = list(prompt_ids)
    # At least a list per copy and 64 bytes per token of it (the copy, the committed tokens, some K/V).
    check_fits(check_count("num_samples", num_samples) * (256 + 64 * len(prompt)), f"{num_samples} samples")
    return [prompt] * num_samples
