"""Reproducible randomness: one user seed, two independent streams.

Token draws (autoregressive sampling, draft proposals) use a `torch.Generator` on the model's device; the
verifier's acceptance coins and residual draws use the Rust `SeededCoin` (xoshiro256++). Streams are
created once per call and never re-seeded inside the loop: re-seeding makes later coins copies of earlier
ones, which biases the output (lossless.md §2.2; feifeibear/LLMSpeculativeSampling seeds every coin).
"""

from __future__ import annotations

import torch

from specref._sampler import SeededCoin

_GOLDEN = 0x9E3779B97F4A7C15  # decorrelates the coin's seed from the torch seed


def streams(seed: int, device: torch.device | str) -> tuple[torch.Generator, SeededCoin]:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator, SeededCoin((seed * _GOLDEN + 1) % 2**64)
