"""End to end: every sampler's first three tokens follow the exact autoregressive law (G-test, alpha 1e-6).

The target and draft are tiny random float64 Llamas with 8-token vocabularies; the law of all 512 three-token
continuations is enumerated exactly. N = 20,000 samples per configuration are drawn as one batch.
"""

from __future__ import annotations

import pytest
from conftest import ALPHA_TEST, exact_law, g_test, total_variation

from specref import SamplingParams, generate_ar, generate_sps

N = 20_000
LENGTH = 3
PROMPT = [3, 1, 4]

# gamma x temperature, each paired with a different filter; with the AR control this covers the matrix
# {1, 3, 6} x {1, 0.7} x {no filter, top-k, top-p, both}.
SPS_CASES = [
    (1, SamplingParams(1.0)),
    (3, SamplingParams(1.0, top_k=3)),
    (6, SamplingParams(1.0, top_p=0.8)),
    (1, SamplingParams(0.7, top_k=4, top_p=0.9)),
    (3, SamplingParams(0.7)),
    (6, SamplingParams(0.7, top_k=3)),
]


def sps_samples(pair, gamma: int, params: SamplingParams, seed: int, **kw) -> list[list[int]]:
    target, draft = pair
    out = generate_sps(target, draft, PROMPT, gamma=gamma, max_new_tokens=LENGTH, params=params, seed=seed,
                       num_samples=N, **kw)
    assert all(len(s) == LENGTH for s in out.token_ids)
    return out.token_ids


@pytest.mark.parametrize("params", [SamplingParams(1.0), SamplingParams(0.7, top_k=3, top_p=0.9)])
def test_autoregressive_matches_exact_law(pair, params):
    """Control: plain AR sampling passes the same test, so the test itself is calibrated."""
    target, _ = pair
    out = generate_ar(target, PROMPT, max_new_tokens=LENGTH, params=params, seed=5, num_samples=N)
    law = exact_law(target, PROMPT, LENGTH, params)
    assert g_test(out.token_ids, law, LENGTH) > ALPHA_TEST


@pytest.mark.parametrize(("gamma", "params"), SPS_CASES)
def test_sps_matches_exact_law(pair, gamma, params):
    samples = sps_samples(pair, gamma, params, seed=gamma)
    law = exact_law(pair[0], PROMPT, LENGTH, params)
    pvalue = g_test(samples, law, LENGTH)
    assert pvalue > ALPHA_TEST, f"G-test p = {pvalue:.3g}, TV = {total_variation(samples, law, LENGTH):.4f}"


@pytest.mark.parametrize("params", [SamplingParams(1.0), SamplingParams(0.7, top_k=3)])
def test_sps_with_greedy_draft_matches_exact_law(pair, params):
    """Argmax drafts verified with a one-hot q (sample-and-match) are lossless too."""
    samples = sps_samples(pair, 3, params, seed=9, greedy_draft=True)
    assert g_test(samples, exact_law(pair[0], PROMPT, LENGTH, params), LENGTH) > ALPHA_TEST


def test_sps_acceptance_is_informative(pair):
    """A draft that is the target itself is always accepted; the tiny random draft is not."""
    target, draft = pair
    same = generate_sps(target, target, PROMPT, gamma=3, max_new_tokens=12, params=SamplingParams(1.0),
                        seed=1, num_samples=200)
    assert same.stats.alpha == 1.0 and same.stats.residual_fallbacks == 0
    other = generate_sps(target, draft, PROMPT, gamma=3, max_new_tokens=12, params=SamplingParams(1.0),
                         seed=1, num_samples=200)
    assert 0.0 < other.stats.alpha < 0.9


def test_sps_with_reduced_vocabulary_draft_matches_exact_law(pair):
    """A draft that can only propose 5 of the 8 tokens (q = 0 elsewhere) is still lossless."""
    import torch
    from conftest import tiny_config

    from specref import random_model

    draft = random_model(tiny_config(hidden=8, layers=1, heads=2, kv_heads=2, head_vocab_size=5), seed=13,
                         dtype=torch.float64, scale=3.0)
    draft.vocab_ids.copy_(torch.tensor([0, 2, 3, 5, 6]))
    params = SamplingParams(0.9, top_k=6)
    out = generate_sps(pair[0], draft, PROMPT, gamma=3, max_new_tokens=LENGTH, params=params, seed=4, num_samples=N)
    assert out.stats.accepted > 0
    assert g_test(out.token_ids, exact_law(pair[0], PROMPT, LENGTH, params), LENGTH) > ALPHA_TEST


def test_same_seed_same_samples_different_seed_different_samples(pair):
    run = lambda seed: generate_sps(pair[0], pair[1], PROMPT, gamma=2, max_new_tokens=6,  # noqa: E731
                                    params=SamplingParams(1.0), seed=seed, num_samples=50).token_ids
    assert run(7) == run(7) and run(7) != run(8)
