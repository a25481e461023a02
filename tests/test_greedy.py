"""Greedy speculative decoding is token-identical to greedy autoregressive decoding (fp64 models)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_draft, tiny_target
from hypothesis import given, settings
from hypothesis import strategies as st

from specref import Llama, SamplingParams, generate_ar, generate_sps

GREEDY = SamplingParams(temperature=0.0)
VOCAB = 16


def partly_agreeing(target: Llama, noise: float) -> Llama:
    """The target with noise added to its output head: it agrees with the target's argmax only sometimes."""
    draft = copy.deepcopy(target)
    draft.lm_head.weight = torch.nn.Parameter(draft.lm_head.weight.detach().clone())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draft.lm_head.weight += noise * torch.randn(draft.lm_head.weight.shape, generator=g,
                                                     dtype=draft.lm_head.weight.dtype)
    return draft


@pytest.fixture(scope="module")
def models() -> dict[str, Llama]:
    target = tiny_target(VOCAB, seed=21)
    return {"target": target, "same": target, "random": tiny_draft(VOCAB, seed=22),
            "partly": partly_agreeing(target, noise=0.2)}


@settings(max_examples=25, deadline=None, derandomize=True)
@given(draft_name=st.sampled_from(["same", "random", "partly"]), gamma=st.integers(1, 6),
       prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=6), max_new=st.integers(1, 40))
def test_greedy_sps_equals_greedy_ar(models, draft_name, gamma, prompt, max_new):
    target, draft = models["target"], models[draft_name]
    ar = generate_ar(target, prompt, max_new_tokens=max_new, params=GREEDY)
    sps = generate_sps(target, draft, prompt, gamma=gamma, max_new_tokens=max_new, params=GREEDY)
    assert sps.token_ids == ar.token_ids
    assert len(ar.token_ids[0]) == max_new


def test_greedy_acceptance_by_draft(models):
    """draft = target accepts everything (bonus path); a random draft few; a noisy copy some."""
    stats = {}
    for name in ("same", "random", "partly"):
        out = generate_sps(models["target"], models[name], [1, 2], gamma=4, max_new_tokens=64, params=GREEDY)
        stats[name] = out.stats
    assert stats["same"].alpha == 1.0 and stats["same"].tau == pytest.approx(64 / 13)
    assert stats["random"].alpha < 0.1
    assert 0.3 < stats["partly"].alpha < 0.9


def test_greedy_stops_at_eos_inside_a_block(models):
    target = models["target"]
    ar = generate_ar(target, [5], max_new_tokens=40, params=GREEDY).token_ids[0]
    eos = ar[len(ar) // 2]  # a token that greedy decoding emits mid-way
    cut = ar[: ar.index(eos) + 1]
    for name in ("same", "partly"):
        out = generate_sps(target, models[name], [5], gamma=5, max_new_tokens=40, params=GREEDY,
                           eos_token_ids=[eos])
        assert out.token_ids[0] == cut
    assert generate_ar(target, [5], max_new_tokens=40, params=GREEDY, eos_token_ids=[eos]).token_ids[0] == cut


def test_greedy_batch_rows_are_identical(models):
    out = generate_sps(models["target"], models["partly"], [3, 3], gamma=3, max_new_tokens=30, params=GREEDY,
                       num_samples=4)
    assert all(row == out.token_ids[0] for row in out.token_ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precisions_run(models, dtype):
    """fp32 and bf16 decode with the same code (near-ties may flip, so only validity is asserted in bf16)."""
    target = copy.deepcopy(models["target"]).to(dtype)
    draft = copy.deepcopy(models["partly"]).to(dtype)
    sps = generate_sps(target, draft, [1, 2], gamma=3, max_new_tokens=24, params=GREEDY)
    ar = generate_ar(target, [1, 2], max_new_tokens=24, params=GREEDY)
    assert len(sps.token_ids[0]) == 24 and all(0 <= t < VOCAB for t in sps.token_ids[0])
    if dtype == torch.float32:
        assert sps.token_ids == ar.token_ids
    sampled = generate_sps(target, draft, [1], gamma=2, max_new_tokens=24, params=SamplingParams(0.9), seed=2)
    assert len(sampled.token_ids[0]) == 24


def test_ragged_prompt_batches_equal_one_by_one(models):
    """Prompts of different lengths in one batch give what each gives alone (prefill padding is dropped)."""
    from specref.autoregressive import generate_batch as ar_batch
    from specref.sps import generate_batch as sps_batch

    prompts = [[1], [4, 2, 9, 9, 3, 1], [7, 7], [0, 15, 3]]
    alone = [generate_ar(models["target"], p, max_new_tokens=20, params=GREEDY).token_ids[0] for p in prompts]
    assert ar_batch(models["target"], prompts, max_new_tokens=20, params=GREEDY).token_ids == alone
    assert sps_batch(models["target"], models["partly"], prompts, gamma=3, max_new_tokens=20,
                     params=GREEDY).token_ids == alone
