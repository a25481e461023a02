"""specref's decoder reproduces transformers' own modeling on the same random weights (fp32, <= 1e-5)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from specref import load_model
from specref.formats.hf import config_to_hf, read_config

TOL = 1e-5

BASE = {"vocab_size": 96, "hidden_size": 64, "intermediate_size": 112, "num_hidden_layers": 3,
        "num_attention_heads": 4, "max_position_embeddings": 256}

CASES = {
    "llama-gqa-untied": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 2, "rope_theta": 500000.0}),
    "llama-mha-tied": (LlamaConfig, LlamaForCausalLM, {"num_key_value_heads": 4, "tie_word_embeddings": True}),
    "llama3-rope-scaling": (LlamaConfig, LlamaForCausalLM, {
        "num_key_value_heads": 1,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32, "rope_theta": 500000.0}}),
    "llama-attention-bias-head-dim": (LlamaConfig, LlamaForCausalLM, {
        "num_key_value_heads": 2, "attention_bias": True, "head_dim": 32}),
    "qwen2-qkv-bias": (Qwen2Config, Qwen2ForCausalLM, {"num_key_value_heads": 2, "tie_word_embeddings": True}),
}


def make_hf(tmp_path, name: str, shard: bool = False):
    config_cls, model_cls, extra = CASES[name]
    torch.manual_seed(0)
    hf = model_cls(config_cls(**BASE, **extra)).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so a dropped term shows
        for n, p in hf.named_parameters():
            if n.endswith(("norm.weight", "bias")):
                p.normal_(1.0 if n.endswith("norm.weight") else 0.0, 0.2)
    path = tmp_path / name
    hf.save_pretrained(path, max_shard_size="100KB" if shard else "5GB")
    return hf, path


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_match_transformers(tmp_path, name):
    hf, path = make_hf(tmp_path, name)
    ours = load_model(path)
    ids = torch.randint(0, BASE["vocab_size"], (2, 40), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(40).expand(2, -1)
    with torch.no_grad():
        expected = hf(ids).logits
        full = ours(ids, pos).logits
        cache = ours.new_cache(2, 64)
        first = ours(ids[:, :25], pos[:, :25], cache).logits
        rest = torch.cat([ours(ids[:, i : i + 5], pos[:, i : i + 5], cache).logits for i in range(25, 40, 5)], 1)
    torch.testing.assert_close(full, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(torch.cat([first, rest], 1), expected, atol=TOL, rtol=0)


def test_sharded_checkpoint_loads(tmp_path):
    hf, path = make_hf(tmp_path, "llama-gqa-untied", shard=True)
    assert (path / "model.safetensors.index.json").is_file()
    ours = load_model(path)
    ids = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, ids).logits, hf(ids).logits, atol=TOL, rtol=0)


def test_hidden_states_and_layer_inputs_match(tmp_path):
    hf, path = make_hf(tmp_path, "llama-gqa-untied")
    ours = load_model(path)
    ids = torch.arange(12)[None] % BASE["vocab_size"]
    with torch.no_grad():
        ref = hf(ids, output_hidden_states=True).hidden_states  # [embeddings, layer 1 input, ..., final normed]
        out = ours(ids, torch.arange(12)[None], layer_inputs=(2, 0, 1))
    torch.testing.assert_close(out.hidden, ref[-1], atol=TOL, rtol=0)
    for got, layer in zip(out.layer_inputs, (2, 0, 1), strict=True):
        torch.testing.assert_close(got, ref[layer], atol=TOL, rtol=0)


def test_config_round_trip(tmp_path):
    _, path = make_hf(tmp_path, "llama3-rope-scaling")
    config = read_config(path)
    assert config.rope_scaling["rope_type"] == "llama3" and config.rope_theta == 500000.0
    assert LlamaConfig(**config_to_hf(config)).rope_parameters["factor"] == 8.0
    assert json.loads((path / "config.json").read_text())["num_key_value_heads"] == config.num_key_value_heads
