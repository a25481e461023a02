"""The same code on CUDA: logits agree with the CPU, greedy SpS equals greedy AR, sampling stays exact."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHA_TEST, exact_law, g_test, tiny_draft, tiny_target

from specref import SamplingParams, generate_ar, generate_sps

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def cuda_pair():
    return tiny_target(16).to("cuda"), tiny_draft(16).to("cuda")


def test_logits_match_cpu(cuda_pair):
    cpu = tiny_target(16)
    ids = torch.randint(0, 16, (3, 20), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(20).expand(3, -1)
    with torch.no_grad():
        expected = cpu(ids, pos).logits
        got = cuda_pair[0](ids.cuda(), pos.cuda()).logits.cpu()
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)


def test_greedy_sps_equals_greedy_ar_on_cuda(cuda_pair):
    target, draft = cuda_pair
    greedy = SamplingParams(0.0)
    ar = generate_ar(target, [1, 2, 3], max_new_tokens=48, params=greedy)
    for gamma in (1, 4):
        assert generate_sps(target, draft, [1, 2, 3], gamma=gamma, max_new_tokens=48,
                            params=greedy).token_ids == ar.token_ids


def test_sps_sampling_on_cuda_matches_exact_law(cuda_pair):
    target, draft = cuda_pair
    params = SamplingParams(0.8, top_k=6)
    out = generate_sps(target, draft, [4, 2], gamma=3, max_new_tokens=2, params=params, seed=1,
                       num_samples=20_000)
    assert g_test(out.token_ids, exact_law(target, [4, 2], 2, params), 2) > ALPHA_TEST


def test_bfloat16_runs_on_cuda():
    target = tiny_target(16).to("cuda", torch.bfloat16)
    draft = tiny_draft(16).to("cuda", torch.bfloat16)
    out = generate_sps(target, draft, [1], gamma=3, max_new_tokens=16, params=SamplingParams(0.7), seed=0)
    assert len(out.token_ids[0]) == 16
