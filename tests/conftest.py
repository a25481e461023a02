"""Tiny float64 model factories, the exact autoregressive law by enumeration, and the G-test."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import power_divergence

from specref import Llama, ModelConfig, SamplingParams, process_logits, random_model

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
def exact_law(model: Llama, prompt: list[int], length: int, params: SamplingParams) -> dict[tuple, float]:
    """P(first `length` new tokens = s) for every s in V^length, by no-cache forwards over all prefixes."""
    vocab = model.config.vocab_size
    seqs = torch.tensor([prompt + list(s) for s in itertools.product(range(vocab), repeat=length)])
    pos = torch.arange(seqs.shape[1]).expand_as(seqs)
    logits = model(seqs[:, :-1], pos[:, :-1]).logits[:, len(prompt) - 1 :]
    probs = process_logits(logits, params)  # (V^length, length, V)
    chosen = probs.gather(2, seqs[:, len(prompt) :, None])[..., 0].prod(dim=1)
    return {tuple(s[len(prompt) :].tolist()): float(pr) for s, pr in zip(seqs, chosen, strict=True)}


def g_test(samples: list[list[int]], law: dict[tuple, float], length: int) -> float:
    """p-value of a G-test of the samples' first `length` tokens against `law` (cells with expected < 5
    merged); also asserts the support: no sample may have probability 0 under the law."""
    n = len(samples)
    counts = Counter(tuple(s[:length]) for s in samples)
    impossible = [s for s in counts if law.get(s, 0.0) == 0.0]
    assert not impossible, f"sampled sequences with probability 0 under the AR law: {impossible[:5]}"
    cells = sorted(law, key=law.get, reverse=True)
    obs, exp = [], []
    rest_obs, rest_exp = 0.0, 0.0
    for c in cells:
        if law[c] * n >= 5:
            obs.append(counts.get(c, 0))
            exp.append(law[c] * n)
        else:
            rest_obs += counts.get(c, 0)
            rest_exp += law[c] * n
    if rest_exp > 0:
        obs.append(rest_obs)
        exp.append(rest_exp)
    exp_arr = np.array(exp) * n / sum(exp)  # renormalise away fp64 rounding of the law's total
    if len(obs) < 2:
        return 1.0
    return float(power_divergence(np.array(obs, dtype=float), exp_arr, lambda_="log-likelihood").pvalue)


def total_variation(samples: list[list[int]], law: dict[tuple, float], length: int) -> float:
    counts = Counter(tuple(s[:length]) for s in samples)
    return 0.5 * sum(abs(counts.get(c, 0) / len(samples) - p) for c, p in law.items())


def assert_close_law(law: dict, expected: dict, tol: float = 1e-9) -> None:
    keys = set(law) | set(expected)
    worst = max(abs(law.get(k, 0.0) - expected.get(k, 0.0)) for k in keys)
    assert worst <= tol, f"laws differ by {worst:.3g} > {tol}"
    assert math.isclose(sum(law.values()), 1.0, abs_tol=tol)
