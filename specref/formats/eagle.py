"""EAGLE-1/2, HASS and EAGLE-3 heads on disk, in their original layouts (and in speculators', through
`formats/speculators.py`).

The keys decide what a checkpoint is (`fc.*` plus `layers.0.*` for EAGLE-1/2 and HASS, `midlayer.*` or
`midlayer.{i}.*` for EAGLE-3, `norm`, `lm_head`, `d2t`); the config only fills gaps, since EAGLE's own configs
are known to disagree with their weights (an fc bias present in the weights but absent from the config).
`save_head` writes the same layout plus a `config.json` that `load_head` reads back.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from specref.eagle import EagleHead, HeadConfig, default_layer_ids
from specref.formats.files import atomic_directory, check_savable, check_tensors, read_json_config
from specref.formats.hf import WEIGHT_FILES, config_to_hf, fuse_hf, parse_rope, read_weights, split_hf
from specref.formats.speculators import is_speculators, original_layout
from specref.model import Llama, ModelConfig


def _our_names(key: str, kind: str) -> str:
    """Checkpoint key -> module name: EAGLE-3's `midlayer.` (one layer) or `midlayer.{i}.` become `layers.{i}.`."""
    if kind == "eagle3" and key.startswith("midlayer."):
        rest = key.removeprefix("midlayer.")
        head = rest.partition(".")[0]
        return f"layers.{rest}" if head.isdigit() else f"layers.0.{rest}"
    return key


def _count_layers(keys: set[str], prefix: str) -> int:
    indices = {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}
    numeric = {i for i in indices if i.isdigit()}
    return len(numeric) if numeric else 1


def head_config_from(cfg: dict[str, Any], weights: dict[str, Tensor], target: ModelConfig) -> HeadConfig:
    """Infer the head's kind and shapes from its checkpoint: the keys decide, the config only fills gaps."""
    keys = set(weights)
    if "fc.weight" not in keys:
        raise ValueError("not an EAGLE head: no fc.weight (an MTP module or a plain model is no EAGLE head)")
    kind = "eagle3" if any(k.startswith("midlayer.") for k in keys) else "eagle"
    if kind == "eagle" and not any(k.startswith("layers.0.") for k in keys):
        raise ValueError("not an EAGLE head: neither layers.0.* (EAGLE-1/2, HASS) nor midlayer.* (EAGLE-3)")
    hidden = weights["fc.weight"].shape[0]
    heads = int(cfg.get("num_attention_heads", target.num_attention_heads))
    theta, scaling = parse_rope(cfg)  # the head's own RoPE: EAGLE assumes theta 10000 when absent
    layer = replace(
        target,
        hidden_size=hidden,
        intermediate_size=int(cfg.get("intermediate_size", target.intermediate_size)),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        num_hidden_layers=_count_layers(keys, "midlayer." if kind == "eagle3" else "layers."),
        max_position_embeddings=int(cfg.get("max_position_embeddings", target.max_position_embeddings)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", target.rms_norm_eps)),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=any(k.endswith(("q_proj.bias", "qkv_proj.bias")) for k in keys),
        o_bias=any(k.endswith("o_proj.bias") for k in keys),
        tie_word_embeddings=False, head_vocab_size=None, shares_target_embeddings=False,
    )
    width = weights["fc.weight"].shape[1]
    expected = (2 if kind == "eagle" else 3) * target.hidden_size
    if width != expected:
        raise ValueError(f"head fc takes {width} inputs but this target needs {expected} "
                         f"({'2' if kind == 'eagle' else '3'} x hidden size {target.hidden_size})")
    if kind == "eagle" and hidden != target.hidden_size:
        raise ValueError(f"EAGLE-1 head hidden size {hidden} differs from the target's {target.hidden_size}")
    vocab = int(cfg.get("vocab_size", target.vocab_size))
    if vocab != target.vocab_size:
        raise ValueError(f"head vocab size {vocab} differs from the target's {target.vocab_size}")
    if kind == "eagle":
        return HeadConfig(kind=kind, layer=layer, fc_bias="fc.bias" in keys)
    if "lm_head.weight" not in keys:
        raise ValueError("EAGLE-3 head has no lm_head.weight")
    draft_vocab = weights["lm_head.weight"].shape[0]
    if cfg.get("draft_vocab_size") not in (None, draft_vocab):
        raise ValueError(f"head config says draft_vocab_size {cfg['draft_vocab_size']} but lm_head.weight has "
                         f"{draft_vocab} rows")
    ids = (cfg.get("eagle_aux_hidden_state_layer_ids") or (cfg.get("eagle_config") or {}).get(
        "eagle_aux_hidden_state_layer_ids") or default_layer_ids(target.num_hidden_layers))  # ModelOpt nests them
    if len(ids) != 3 or not all(isinstance(i, int) and 0 <= i < target.num_hidden_layers for i in ids):
        raise ValueError(f"eagle_aux_hidden_state_layer_ids must be three layers of the target's "
                         f"{target.num_hidden_layers}, got {ids}")
    # Eagle 3.1 options: the norms' weights say they exist; the other two only the config can say.
    options = {"norm_before_fc": bool(cfg.get("norm_before_fc")) or "input_norm.weight" in keys,
               "fc_norm": bool(cfg.get("fc_norm")) or any(k.startswith("fc_norm.") for k in keys),
               "norm_before_residual": bool(cfg.get("norm_before_residual")),
               "norm_output": bool(cfg.get("norm_output"))}
    return HeadConfig(kind=kind, layer=layer, fc_bias="fc.bias" in keys, draft_vocab_size=draft_vocab,
                      layer_ids=tuple(ids), **options)


def check_head_dir(path: str | Path) -> dict[str, Any]:
    """The head's config, once its directory is known to hold a JSON config and weights; checked before any
    model is built."""
    path = Path(path)
    cfg = read_json_config(path, "an EAGLE head directory")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise FileNotFoundError(f"no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}")
    return cfg


def read_head_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A head directory's config and tensors as the original EAGLE layout names them (a speculators directory
    mapped back), without `model.` prefixes or RoPE buffers."""
    cfg = check_head_dir(path)
    weights = {k.removeprefix("model."): v for k, v in read_weights(path).items()
               if not k.endswith("rotary_emb.inv_freq")}
    return original_layout(cfg, weights) if is_speculators(cfg) else (cfg, weights)


def read_head(path: str | Path, target: ModelConfig) -> tuple[HeadConfig, dict[str, Tensor], bool]:
    """A head directory read and checked against the target's config: (its config, its tensors under specref's
    names, whether it has its own input embedding). Needs no target weights, so the command line runs it
    before building the target."""
    return head_from(*read_head_dir(path), target)


def head_from(cfg: dict[str, Any], weights: dict[str, Tensor],
              target: ModelConfig) -> tuple[HeadConfig, dict[str, Tensor], bool]:
    """`read_head` on a config and tensors already read by `read_head_dir`."""
    weights = {k: v for k, v in weights.items() if k != "t2d"}  # t2d only serves training
    config = head_config_from(cfg, weights, target)
    own_embedding = "embed_tokens.weight" in weights
    if own_embedding and tuple(weights["embed_tokens.weight"].shape) != (config.layer.vocab_size, config.hidden):
        raise ValueError(f"head embed_tokens has shape {tuple(weights['embed_tokens.weight'].shape)}")
    if config.kind == "eagle3" and "d2t" not in weights:
        if config.draft_vocab_size != target.vocab_size:
            raise ValueError("EAGLE-3 head has a reduced vocabulary but no d2t table")
        weights["d2t"] = torch.zeros(config.draft_vocab_size, dtype=torch.long)
    state = fuse_hf({_our_names(k, config.kind): v for k, v in weights.items()})
    with torch.device("meta"):
        head = EagleHead(config, Llama(target), own_embedding)
    check_tensors(f"{config.kind} head checkpoint", state, head.state_dict())
    if config.kind == "eagle3":
        ids = torch.arange(len(state["d2t"])) + state["d2t"]
        if int(ids.min()) < 0 or int(ids.max()) >= target.vocab_size:
            raise ValueError("head d2t maps draft tokens outside the target vocabulary")
    return config, state, own_embedding


def load_head(path: str | Path, target: Llama, dtype: torch.dtype | None = None) -> EagleHead:
    """Load an EAGLE-1/2, HASS or EAGLE-3 head directory (config.json + weights) for `target`."""
    return place_head(read_head(path, target.config), target, dtype)


def place_head(read: tuple[HeadConfig, dict[str, Tensor], bool], target: Llama,
               dtype: torch.dtype | None = None) -> EagleHead:
    """The head that `read_head` read, on the target's device and in `dtype` (default: the target's), sharing its
    embedding (and for EAGLE-1/2 its output layer)."""
    config, state, own_embedding = read
    with torch.device("meta"):
        head = EagleHead(config, target, own_embedding)
    dtype, device = dtype or target.dtype, target.device
    head.load_state_dict({k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                          for k, v in state.items()}, assign=True)
    return head.eval()


def save_head(head: EagleHead, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write the head in the original EAGLE layout (config.json + model.safetensors), atomically."""
    check_savable(head)
    c = head.config
    state = split_hf(head.state_dict(), c.layer)
    if c.kind == "eagle3":
        single = c.layer.num_hidden_layers == 1
        state = {(k.replace("layers.0.", "midlayer.", 1) if single else k.replace("layers.", "midlayer.", 1))
                 if k.startswith("layers.") else k: v for k, v in state.items()}
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in state.items()}
    cfg = {**config_to_hf(c.layer), "num_hidden_layers": c.layer.num_hidden_layers, "bias": c.fc_bias,
           "architectures": ["LlamaForCausalLMEagle3" if c.kind == "eagle3" else "LlamaForCausalLM"]}
    if c.kind == "eagle3":
        cfg.update(draft_vocab_size=c.draft_vocab_size, eagle_aux_hidden_state_layer_ids=list(c.layer_ids),
                   target_hidden_size=head.fc.weight.shape[1] // 3, norm_before_fc=c.norm_before_fc,
                   fc_norm=c.fc_norm, norm_before_residual=c.norm_before_residual, norm_output=c.norm_output)
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
