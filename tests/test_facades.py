"""Any transformers causal LM through specref's loops, and the seed libraries' entry points over the core: lossless
(the conformance kit's G-test on tiny models) and greedy-identical to greedy autoregressive decoding."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from specref import SamplingParams, generate_ar, generate_sps, random_model, save_model
from specref.api.models import load_named
from specref.api.specdec import SpeculativeDecoder
from specref.api.specdec import main as specdec_main
from specref.api.speculoos import SpeculativeSampler, auto_regressive_sampling, speculative_sampling
from specref.conformance import check_sampler, exact_law
from specref.formats.hf_adapter import HFCausalLM

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "a", "mat", "dog"]
PROMPT = [3, 4, 5]
T1 = SamplingParams(1.0)


def gpt2(hidden: int, layers: int, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_positions=64, n_embd=hidden, n_layer=layers,
                                       n_head=2, bos_token_id=1, eos_token_id=None)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # peaked, context-dependent next-token laws, as the tiny Llamas have
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny GPT-2 target and draft and a tiny Llama target, saved as checkpoints with one word tokenizer."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("facades")
    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")
    gpt2(16, 2, 0).save_pretrained(root / "gpt2-target")
    gpt2(8, 1, 1).save_pretrained(root / "gpt2-draft")
    save_model(random_model(tiny_config(vocab=len(WORDS)), seed=3, dtype=torch.float64, scale=3.0),
               root / "llama-target")
    for name in ("gpt2-target", "gpt2-draft", "llama-target"):
        tokenizer.save_pretrained(root / name)
    return {name: str(root / name) for name in ("gpt2-target", "gpt2-draft", "llama-target")}


def test_gpt2_pair_runs_specref_sps_losslessly_and_greedy_equals_transformers(models):
    target, draft = (load_named(models[n]) for n in ("gpt2-target", "gpt2-draft"))
    assert isinstance(target, HFCausalLM) and isinstance(draft, HFCausalLM)
    ours = generate_sps(target, draft, PROMPT, gamma=3, max_new_tokens=12, params=SamplingParams(0.0))
    theirs = target.model.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert ours.token_ids[0] == theirs[0, 3:].tolist() and ours.stats.alpha < 1  # rejections and corrections
    same = generate_sps(target, target, PROMPT, gamma=3, max_new_tokens=12, params=SamplingParams(0.0))
    assert same.token_ids == ours.token_ids and same.stats.alpha == 1  # every draft accepted: the bonus path

    def sample(prompt, n, seed):
        return generate_sps(target, draft, prompt, gamma=3, max_new_tokens=3, params=T1, seed=seed,
                            num_samples=n).token_ids

    r = check_sampler(sample, target.model, PROMPT, 3, T1)
    assert r.passed and r.cells > 50, r.summary()
    ar = generate_ar(target, PROMPT, max_new_tokens=3, params=T1, seed=1, num_samples=5000).token_ids
    assert check_sampler(lambda p, n, s: ar, target.model, PROMPT, 3, T1, n=5000).passed


def test_the_adapter_refuses_a_tree_path_gather(models):
    """Its cache keeps token ids only: EAGLE's path gather would be ignored, so it is refused."""
    cache = load_named(models["gpt2-draft"]).new_cache(1, 8)
    cache.keep(torch.tensor([2]))
    assert cache.lengths.tolist() == [2]
    with pytest.raises(ValueError, match="not EAGLE's tree paths"):
        cache.keep(torch.tensor([2]), start=torch.tensor([1]), rows=torch.tensor([[1, 2]]))


def test_a_gpt2_draft_for_a_llama_target(models):
    target = load_named(models["llama-target"])
    draft = load_named(models["gpt2-draft"])
    assert not isinstance(target, HFCausalLM) and isinstance(draft, HFCausalLM)

    def sample(prompt, n, seed):
        return generate_sps(target, draft, prompt, gamma=2, max_new_tokens=3, params=T1, seed=seed,
                            num_samples=n).token_ids

    r = check_sampler(sample, target, PROMPT, 3, T1)
    assert r.passed, r.summary()
    greedy = generate_sps(target, draft, PROMPT, gamma=2, max_new_tokens=10, params=SamplingParams(0.0))
    assert greedy.token_ids == generate_ar(target, PROMPT, max_new_tokens=10, params=SamplingParams(0.0)).token_ids


def test_speculoos_entry_points_are_lossless_and_greedy_identical(models):
    sampler = SpeculativeSampler(models["gpt2-draft"], models["gpt2-target"], K=3, seed=5)
    assert (sampler.K, sampler.params) == (3, SamplingParams(1.0, top_k=50, top_p=0.9))  # Speculoos' defaults
    ids = sampler.encode("the cat sat")
    assert ids.tolist() == [PROMPT]
    out = sampler.sample(ids, 6)
    assert out.shape == (1, 9) and out[0, :3].tolist() == PROMPT  # exactly T new tokens, prompt included
    law = exact_law(sampler.target_model.model, PROMPT, 3, sampler.params)
    r = check_sampler(lambda p, n, s: sampler.sample(ids.expand(n, -1), 3)[:, 3:].tolist(), None, PROMPT, 3,
                      law=law)
    assert r.passed, r.summary()
    assert not torch.equal(sampler.sample(ids, 6), sampler.sample(ids, 6))  # every call draws afresh
    greedy = SpeculativeSampler(models["gpt2-draft"], models["gpt2-target"], K=3, temperature=0.0)
    assert torch.equal(greedy.sample(ids, 8), greedy.auto_regressive_sample(ids, 8))
    text = greedy.sample_and_decode("the cat sat", 4)
    assert text.startswith("the cat sat") and text == greedy.auto_regressive_sample_and_decode("the cat sat", 4)
    assert speculative_sampling("the cat", models["gpt2-draft"], models["gpt2-target"], 3, K=2, return_ids=True,
                                seed=1).shape == (1, 5)
    assert auto_regressive_sampling("the cat", models["gpt2-target"], 3, seed=1).startswith("the cat")
    with pytest.raises(ValueError, match="no model hub is reachable"):
        SpeculativeSampler("gpt2", models["gpt2-target"])


def test_sps_specdec_entry_points_are_lossless_and_greedy_identical(models, capsys):
    decoder = SpeculativeDecoder(models["gpt2-draft"], models["llama-target"], gamma=3, max_tokens=3, device="cpu")
    # It returns text, special tokens dropped: test the law of the words it shows, padded with -1 to 3 places.
    shown, special = {}, set(decoder.tokenizer.all_special_ids)
    for cell, p in exact_law(decoder.target_model, PROMPT, 3, T1).items():
        words = tuple(t for t in cell if t not in special)
        shown[words + (-1,) * (3 - len(words))] = shown.get(words + (-1,) * (3 - len(words)), 0.0) + p

    def sample(prompt, n, seed):
        decoder.seed = seed
        texts = decoder.speculative_sample(["the cat sat"] * n)
        return [[WORDS.index(w) for w in t.split()[3:]] + [-1] * (6 - len(t.split())) for t in texts]

    r = check_sampler(sample, None, PROMPT, 3, law=shown)
    assert r.passed, r.summary()
    greedy = SpeculativeDecoder(models["gpt2-draft"], models["llama-target"], max_tokens=6, device="cpu",
                                temperature=0.0)
    expected = generate_ar(decoder.target_model, PROMPT, max_new_tokens=6, params=SamplingParams(0.0)).token_ids[0]
    assert greedy.speculative_sample("the cat sat") == " ".join(WORDS[i] for i in PROMPT + expected)
    out = specdec_main(["--input", "the cat sat", "--approx_model_name", models["gpt2-draft"], "--target_model_name",
                        models["llama-target"], "-M", "4", "--device", "cpu", "--seed", "3", "-b", "-v"])
    printed = capsys.readouterr().out
    assert "Execution time:" in printed and f"Generated Text: {out}" in printed and out.startswith("the cat sat")
