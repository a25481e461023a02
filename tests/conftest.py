"""Tiny float64 model factories, and the conformance kit's exact law and G-test as the tests use them."""

from __future__ import annotations

import math

import pytest
import torch

from specref import Llama, ModelConfig, random_model
from specref.conformance import exact_law as exact_law  # the tests' reference law is the kit's
from specref.conformance.kit import report
from specref.conformance.stats import counts_of

ALPHA_TEST = 1e-6  # G-test significance; seeds are fixed, so CI is deterministic


def tiny_config(vocab: int = 8, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 1,
                **kw: object) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       head_dim=hidden // heads, max_position_embeddings=128, **kw)


def tiny_target(vocab: int = 8, seed: int = 11) -> Llama:
    # scale 3 makes next-token distributions peaked and strongly context dependent
    return random_model(tiny_config(vocab), seed=seed, dtype=torch.float64, scale=3.0)


def tiny_draft(vocab: int = 8, seed: int = 12) -> Llama:
    return random_model(tiny_config(vocab, hidden=8, layers=1, heads=2, kv_heads=2), seed=seed,
                        dtype=torch.float64, scale=3.0)


@pytest.fixture(scope="session")
def pair() -> tuple[Llama, Llama]:
    return tiny_target(), tiny_draft()


@torch.inference_mode()
def g_test(samples: list[list[int]], law: dict[tuple, float], length: int) -> float:
    """p-value of the conformance kit's G-test of the samples' first `length` tokens against `law`; also asserts
    the support: no sample may have probability 0 under the law."""
    r = report(counts_of(samples, length), law, len(samples), length, ALPHA_TEST, "")
    assert not r.impossible, f"{r.impossible} samples have probability 0 under the AR law: {r.worst[:3]}"
    return r.p_value


def total_variation(samples: list[list[int]], law: dict[tuple, float], length: int) -> float:
    return report(counts_of(samples, length), law, len(samples), length, ALPHA_TEST, "").tv


def assert_close_law(law: dict, expected: dict, tol: float = 1e-9) -> None:
    keys = set(law) | set(expected)
    worst = max(abs(law.get(k, 0.0) - expected.get(k, 0.0)) for k in keys)
    assert worst <= tol, f"laws differ by {worst:.3g} > {tol}"
    assert math.isclose(sum(law.values()), 1.0, abs_tol=tol)
