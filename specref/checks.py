"""Argument checks shared by the decoding loops: every bad request fails here, before any model work."""

from __future__ import annotations

from collections.abc import Sequence

from specref.model import ModelConfig


def check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_request(prompt_ids: Sequence[int], configs: Sequence[ModelConfig], max_new_tokens: int,
                  num_samples: int, seed: int) -> list[int]:
    """Validate a generation request against every model that will run it; return the prompt as a list."""
    check_count("max_new_tokens", max_new_tokens)
    check_count("num_samples", num_samples)
    check_count("seed", seed, minimum=0)
    prompt = list(prompt_ids)
    if not prompt:
        raise ValueError("prompt is empty: at least one token is needed")
    for config in configs:
        vocab, max_pos = config.vocab_size, config.max_position_embeddings
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab}), got {prompt}")
        if len(prompt) + max_new_tokens > max_pos:
            raise ValueError(f"prompt length {len(prompt)} + max_new_tokens {max_new_tokens} exceeds the "
                             f"model's {max_pos} positions (max_position_embeddings)")
    return prompt


def check_pair(target: ModelConfig, draft: ModelConfig) -> None:
    if draft.vocab_size != target.vocab_size:
        raise ValueError(f"draft vocab size {draft.vocab_size} differs from the target's "
                         f"{target.vocab_size}: the two models must share one tokenizer")
