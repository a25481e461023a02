"""Mutation tests: re-inject bugs that public implementations shipped and show the checks above catch them.

A check that cannot fail proves nothing; each bug below must make an exact-law or G-test check fail.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import ALPHA_TEST, exact_law, g_test
from test_distribution import LENGTH, PROMPT, sps_samples
from test_exact_law import check_chain

import specref.sps
from specref import SamplingParams
from specref._sampler import SeededCoin, verify_chain

T1 = SamplingParams(1.0)


def sps_pvalue(pair, gamma: int, params: SamplingParams = T1, **kw) -> float:
    samples = sps_samples(pair, gamma, params, seed=123, **kw)
    return g_test(samples, exact_law(pair[0], PROMPT, LENGTH, params), LENGTH)


def test_non_strict_acceptance_is_caught():
    """`u * q <= p` accepts a draft with p(x) = 0 when u == 0 (vLLM v1, HF): the exact support check fails."""
    p = np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])
    q = np.array([[0.5, 0.25, 0.25]])
    check_chain(p, q)  # the production rule passes
    with pytest.raises(AssertionError, match="probability 0"):
        check_chain(p, q, flaw="non_strict")


def test_bonus_from_row_gamma_is_caught(pair, monkeypatch):
    p = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(AssertionError):
        check_chain(p, q, flaw="bonus_row_off")
    monkeypatch.setattr(specref.sps, "verify_chain", functools.partial(verify_chain, flaw="bonus_row_off"))
    assert sps_pvalue(pair, gamma=1) < ALPHA_TEST


def test_softmax_q_for_argmax_drafts_is_caught(pair, monkeypatch):
    """An argmax draft verified against its softmax instead of one-hot (transformers #32867)."""

    def flawed(logits, params, greedy_draft, generator):
        q = specref.sps.process_logits(logits, params)
        return logits.argmax(-1), q

    assert sps_pvalue(pair, gamma=3, greedy_draft=True) > ALPHA_TEST
    monkeypatch.setattr(specref.sps, "propose", flawed)
    assert sps_pvalue(pair, gamma=3, greedy_draft=True) < ALPHA_TEST


def test_reseeding_every_step_is_caught(pair, monkeypatch):
    """Seeding before every draw (feifeibear/LLMSpeculativeSampling): each round repeats the last one's
    uniforms, so draws are no longer independent."""
    sample = specref.sps.sample

    def reseeded_sample(probs, generator):
        generator.manual_seed(0)
        return sample(probs, generator)

    monkeypatch.setattr(specref.sps, "sample", reseeded_sample)
    monkeypatch.setattr(specref.sps, "verify_chain",
                        lambda p, q, x, coin, **kw: verify_chain(p, q, x, SeededCoin(0), **kw))
    assert sps_pvalue(pair, gamma=1) < ALPHA_TEST
