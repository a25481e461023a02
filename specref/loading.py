"""Load and save Llama-family checkpoints in Hugging Face's layout.

A checkpoint directory holds `config.json` and weights as `model.safetensors`, as shards listed by
`model.safetensors.index.json`, or as `pytorch_model.bin` (read with `weights_only=True`, never a full
unpickle). Tensor names are `LlamaForCausalLM`'s; specref's modules carry the same names minus `model.`.
llama.cpp's GGUF files are read too (`read_gguf`): tensors are dequantized and llama.cpp's interleaved
q/k rows are permuted back to the half-split RoPE layout this decoder uses.
Every problem (missing files, corrupt weights, missing or extra tensors, wrong shapes) raises an error that
names the file or tensor, before the model is used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import Tensor

from specref.model import Llama, ModelConfig, fuse_hf, split_hf

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(path: str | Path) -> ModelConfig:
    file = Path(path) / "config.json"
    if not Path(path).is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: not a Hugging Face checkpoint directory")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return ModelConfig.from_hf(cfg)


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory, keyed as in the files."""
    path = Path(path)
    index, single, pickled = (path / "model.safetensors.index.json", path / "model.safetensors",
                              path / "pytorch_model.bin")
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid shard index ({e!r})") from None
        files = [path / s for s in shards]
    elif single.is_file():
        files = [single]
    elif pickled.is_file():
        try:
            return dict(torch.load(pickled, map_location="cpu", weights_only=True))
        except Exception as e:
            raise ValueError(f"{pickled} is corrupt or not a plain state dict: {e}") from None
    else:
        raise FileNotFoundError(f"no weights in {path}: expected model.safetensors, "
                                "model.safetensors.index.json or pytorch_model.bin")
    weights: dict[str, Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"shard {f} listed in the index is missing")
        try:
            # Read into memory rather than mmap: one surviving tensor (a tied embedding, say) would keep the
            # whole mapped file resident after the other weights are packed or fused and dropped.
            weights.update(load(f.read_bytes()))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is corrupt or truncated: {e}") from None
    return weights


def build_model(config: ModelConfig, weights: dict[str, Any], *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Llama:
    """A `Llama` holding exactly `weights` (HF names, `model.` prefix optional), checked name by name.

    Takes the tensors out of `weights` (the dict is left empty), so that memory is not held twice while
    q/k/v and gate/up are fused.
    """
    state = {k.removeprefix("model."): weights.pop(k) for k in list(weights)}
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(config)
    expected = {k: v.shape for k, v in split_hf(model.state_dict(), config).items()
                if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"checkpoint does not match its config: missing tensors {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}, unexpected tensors {extra[:5]}"
                         f"{' ...' if len(extra) > 5 else ''}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"tensor {name} has shape {tuple(state[name].shape)}, the config implies "
                             f"{tuple(shape)}")
    state = fuse_hf(state)
    for k in list(state):
        v = state[k]
        state[k] = v.to(device, dtype) if v.is_floating_point() else v.to(device)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Llama:
    """Load a Hugging Face Llama-family checkpoint directory into specref's decoder."""
    config = read_config(path)
    return build_model(config, read_weights(path), dtype=dtype, device=device)


def load_draft(path: str | Path, target: Llama, *, dtype: torch.dtype | None = None) -> Llama:
    """Load a draft for `target`, filling in the input embedding when the draft borrows the target's."""
    config, weights = read_config(path), read_weights(path)
    if config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft {path} has vocab size {config.vocab_size}, the target {target.config.vocab_size}: "
                         "the two models must share one tokenizer")
    if config.shares_target_embeddings:
        if config.hidden_size != target.config.hidden_size:
            raise ValueError(f"draft {path} borrows the target's embeddings but its hidden size "
                             f"{config.hidden_size} differs from the target's {target.config.hidden_size}")
        weights["model.embed_tokens.weight"] = target.embed_tokens.weight
    return build_model(config, weights, dtype=dtype or target.dtype, device=target.device)


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's tokenizer, or None when the directory has none (then prompts are token ids)."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


GGUF_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Llama-architecture GGUF file as an HF `config.json` dict and dequantized fp32 tensors (HF names)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        arch = meta["general.architecture"]
        if arch != "llama":
            raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
        if f"{arch}.rope.scaling.type" in meta:
            raise ValueError(f"{path}: GGUF RoPE scaling is not supported")
        heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
        names = {t.name for t in reader.tensors}
        config = {
            "model_type": "llama",
            "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
            "hidden_size": meta["llama.embedding_length"],
            "intermediate_size": meta["llama.feed_forward_length"],
            "num_hidden_layers": meta["llama.block_count"],
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": meta.get("llama.rope.dimension_count", meta["llama.embedding_length"] // heads),
            "max_position_embeddings": meta["llama.context_length"],
            "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
            "rope_theta": meta.get("llama.rope.freq_base", 10000.0),
            "tie_word_embeddings": "output.weight" not in names,
            "bos_token_id": reader.fields["tokenizer.ggml.bos_token_id"].contents(),
            "eos_token_id": reader.fields["tokenizer.ggml.eos_token_id"].contents(),
        }
        weights = {}
        for t in reader.tensors:
            block, _, rest = t.name.partition(".")
            if block == "blk":
                layer, part, kind = rest.split(".")
                name = f"model.layers.{layer}.{GGUF_NAMES[part]}.{kind}"
            else:
                name = ("" if block == "output" else "model.") + f"{GGUF_NAMES[block]}.{rest}"
            w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
            if block == "blk" and part in ("attn_q", "attn_k"):
                # llama.cpp's converter reorders each head's rows from (half, pair) to (pair, half) so that
                # interleaved RoPE applies; swap them back for the half-split layout.
                n = heads if part == "attn_q" else kv_heads
                w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
            weights[name] = w
    except (KeyError, ValueError, IndexError, OSError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable Llama GGUF file: {e!r}") from None
    return config, weights


def atomic_directory(path: str | Path) -> tuple[Path, Path]:
    """A fresh temporary directory beside `path`; `commit_directory` renames it into place."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def save_model(model: Llama, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write `config.json` + `model.safetensors` (HF layout) atomically: all or nothing at `path`.

    Weights are stored in `dtype` (default: the model's); borrowed or tied tensors are left out.
    """
    config = model.config
    left_out = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if config.shares_target_embeddings:
        left_out.add("embed_tokens.weight")
    path, tmp = atomic_directory(path)
    try:
        (tmp / "config.json").write_text(json.dumps(config.to_hf(), indent=2, sort_keys=True) + "\n")
        state = {f"model.{k}" if k != "lm_head.weight" else k:
                 (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
                 for k, v in split_hf(model.state_dict(), config).items() if k not in left_out}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
