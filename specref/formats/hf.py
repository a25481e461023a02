"""Load and save Llama-family checkpoints in Hugging Face's layout.

A checkpoint directory holds `config.json` and weights as `model.safetensors`, as shards listed by
`model.safetensors.index.json`, or as `pytorch_model.bin` (read with `weights_only=True`, never a full
unpickle). Tensor names are `LlamaForCausalLM`'s; specref's modules carry the same names minus `model.`,
with q/k/v and gate/up each fused into one matrix (`fuse_hf` / `split_hf`); `config_from_hf` / `config_to_hf`
map `config.json` to a `ModelConfig` and back.
Every problem (missing files, corrupt weights, missing or extra tensors, wrong shapes) raises an error that
names the file or tensor, before the model is used.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import Tensor

from specref.formats.files import atomic_directory, check_savable, check_tensors, read_json_config
from specref.model import Llama, ModelConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")  # in order of preference


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """Read a Hugging Face `config.json` dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`)."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"config: model_type {model_type!r} is not supported; expected one of "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
    if model_type == "mistral" and cfg.get("sliding_window") is not None:
        raise ValueError("config: Mistral sliding-window attention is not supported")
    heads, hidden = field(cfg, "num_attention_heads", int), field(cfg, "hidden_size", int)
    theta, rope = parse_rope(cfg)
    eos = cfg.get("eos_token_id")
    eos_ids = tuple(field({"eos_token_id": e}, "eos_token_id", int)
                    for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
    bias = field(cfg, "attention_bias", bool, False)
    return ModelConfig(
        vocab_size=field(cfg, "vocab_size", int),
        hidden_size=hidden,
        intermediate_size=field(cfg, "intermediate_size", int),
        num_hidden_layers=field(cfg, "num_hidden_layers", int),
        num_attention_heads=heads,
        num_key_value_heads=field(cfg, "num_key_value_heads", int, heads),
        head_dim=field(cfg, "head_dim", int, hidden // heads),
        max_position_embeddings=field(cfg, "max_position_embeddings", int, 2048),
        rms_norm_eps=field(cfg, "rms_norm_eps", float, 1e-6),
        rope_theta=theta,
        rope_scaling=rope,
        qkv_bias=model_type == "qwen2" or bias,
        o_bias=bias,
        tie_word_embeddings=field(cfg, "tie_word_embeddings", bool, False),
        eos_token_id=eos_ids,
        bos_token_id=field(cfg, "bos_token_id", int, None),
        head_vocab_size=field(cfg, "specref_head_vocab_size", int, None),
        shares_target_embeddings=field(cfg, "specref_shares_target_embeddings", bool, False),
    )


REQUIRED = object()


def field(cfg: dict[str, Any], name: str, kind: type, default: Any = REQUIRED) -> Any:
    """`cfg[name]` as `kind` (int fields >= 1, except token ids >= 0), `default` when absent or null; a missing
    required field or a value of the wrong type is refused, naming the field."""
    value = cfg.get(name)
    if value is None:
        if default is REQUIRED:
            raise ValueError(f"config: required field {name!r} is missing")
        return default
    if kind is bool and isinstance(value, bool):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        if value < (0 if name.endswith("token_id") else 1):
            raise ValueError(f"config: {name} must be {'>= 0' if name.endswith('token_id') else '>= 1'}, "
                             f"got {value}")
        return value
    raise ValueError(f"config: {name} must be {'an integer' if kind is int else f'a {kind.__name__}'}, got {value!r}")


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A `config.json` dict that both specref and transformers' LlamaForCausalLM read back identically."""
    d = asdict(config)
    rope = {"rope_theta": d.pop("rope_theta"), **(d.pop("rope_scaling") or {"rope_type": "default"})}
    qkv_bias, o_bias = d.pop("qkv_bias"), d.pop("o_bias")
    if o_bias and not qkv_bias:
        raise ValueError("an o_proj bias without q/k/v biases has no Hugging Face config")
    qwen2 = qkv_bias and not o_bias  # Qwen2: biases on q/k/v only
    eos = list(d.pop("eos_token_id"))
    d["specref_head_vocab_size"], d["specref_shares_target_embeddings"] = (
        d.pop("head_vocab_size"), d.pop("shares_target_embeddings"))
    return {**d, "model_type": "qwen2" if qwen2 else "llama",
            "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"], "hidden_act": "silu",
            "attention_bias": o_bias, "mlp_bias": False, "rope_parameters": rope,
            "eos_token_id": eos[0] if len(eos) == 1 else (eos or None)}




# HF checkpoints keep q/k/v and gate/up apart; specref fuses each group into one matrix (rows concatenated).
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fuse_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF-named tensors (no `model.` prefix) -> specref's names, concatenating each fused group.

    Works in place on `state` (and returns it), so each group's parts are freed as soon as they are joined.
    """
    for key in list(state):
        for fused, parts in FUSED.items():
            head, sep, kind = key.partition(f".{parts[0]}.")
            if sep and all(f"{head}.{part}.{kind}" in state for part in parts):
                state[f"{head}.{fused}.{kind}"] = torch.cat([state.pop(f"{head}.{part}.{kind}") for part in parts])
    return state


def split_hf(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """specref-named tensors -> HF names (the inverse of `fuse_hf`)."""
    d = config.head_dim
    sizes = {"self_attn.qkv_proj": [config.num_attention_heads * d] + [config.num_key_value_heads * d] * 2,
             "mlp.gate_up_proj": [config.intermediate_size] * 2}
    out = {}
    for key, value in state.items():
        for fused, parts in FUSED.items():
            head, sep, kind = key.partition(f".{fused}.")
            if sep:
                out.update({f"{head}.{p}.{kind}": v for p, v in zip(parts, value.split(sizes[fused]), strict=True)})
                break
        else:
            out[key] = value
    return out


def parse_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling) from transformers 5's `rope_parameters` or 4.x's `rope_theta`/`rope_scaling`;
    theta is 10000 when absent (as EAGLE heads assume)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    theta = float(rope.pop("rope_theta", cfg.get("rope_theta") or 10000.0))
    if rope.get("rope_type", "default") == "default":
        rope = {}
    return theta, rope or None


def read_config(path: str | Path) -> ModelConfig:
    cfg = read_json_config(path, "a checkpoint directory")
    file = Path(path) / "config.json"
    try:
        return config_from_hf(cfg)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory, keyed as in the files."""
    path = Path(path)
    index, single, pickled = (path / name for name in WEIGHT_FILES)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid shard index ({e!r})") from None
        files = [path / s for s in shards]
        outside = [s for s, f in zip(shards, files, strict=True) if not f.resolve().is_relative_to(path.resolve())]
        if outside:
            raise ValueError(f"{index} names shards outside its directory: {outside}")
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
    expected = {k: v for k, v in split_hf(model.state_dict(), config).items()
                if not (config.tie_word_embeddings and k == "lm_head.weight")}
    check_tensors("checkpoint", state, expected)
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


def save_model(model: Llama, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write `config.json` + `model.safetensors` (HF layout) atomically: all or nothing at `path`.

    Weights are stored in `dtype` (default: the model's); borrowed or tied tensors are left out. A model whose
    layers were packed or quantized (`cpu.py`) is refused: its weights are no longer plain tensors.
    """
    check_savable(model)
    config = model.config
    left_out = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if config.shares_target_embeddings:
        left_out.add("embed_tokens.weight")
    state = {f"model.{k}" if k != "lm_head.weight" else k:
             (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in split_hf(model.state_dict(), config).items() if k not in left_out}
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(config_to_hf(config), indent=2, sort_keys=True) + "\n")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})


def standalone_draft(draft: Llama, target: Llama) -> Llama:
    """The draft as a plain Llama over the full vocabulary, for engines that cannot borrow the target's
    embeddings or map a reduced output vocabulary: its own layers and norm, the target's embedding and output
    head. (With a reduced head this is a different draft; any draft keeps lossless decoding lossless.)"""
    model = Llama(replace(target.config, num_hidden_layers=draft.config.num_hidden_layers)).to(target.dtype)
    own = {k: v for k, v in draft.state_dict().items() if k.startswith(("layers.", "norm."))}
    shared = {k: v for k, v in target.state_dict().items() if not k.startswith(("layers.", "norm."))}
    model.load_state_dict({**shared, **own})
    return model.to(target.device)


def to_transformers(model: Llama) -> Any:
    """The same weights as a `transformers` LlamaForCausalLM (through an HF checkpoint in a temporary
    directory), in the model's dtype and on its device, in eval mode."""
    from transformers import LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, Path(tmp) / "model")
        hf = LlamaForCausalLM.from_pretrained(Path(tmp) / "model", dtype=model.dtype)
    return hf.to(model.device, model.dtype).eval()
