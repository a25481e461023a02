"""EAGLE heads in the `speculators` layout, the one vLLM serves: written, and read back.

* EAGLE-3: exactly what speculators 0.9.0 writes (`config.json` fields and their JSON formatting, no top-level
  `model_type`, `midlayer.` renamed `layers.0.`, floats in the source dtype, `d2t` int64, `t2d` bool), except
  that `norm_before_residual` and `eagle_aux_hidden_state_layer_ids` are always written explicitly: vLLM
  assumes `norm_before_residual` true when it is absent and guesses the fused layers when the ids are.
* EAGLE-1/2 and HASS: the legacy `"eagle"` layout of speculators <= 0.6 (`fusion_fc.*`, `transformer.*`, no
  embedding, float32). speculators >= 0.7 refuses it and no vLLM release serves it; it is written for the
  tools that still read it.

Reading maps a speculators directory back to the original EAGLE key names and config fields, so that one
reader (`formats/eagle.py::read_head`) checks every head, whatever its layout. Fields specref does not
implement are refused by name.
"""

from __future__ import annotations

import json
from typing import Any

from torch import Tensor

from specref.eagle import HeadConfig
from specref.formats.hf import config_to_hf

SPECULATORS_VERSION = "0.9.0"  # the release whose EAGLE-3 output this module reproduces
LEGACY_VERSION = "0.6.0.2"  # the last release with the EAGLE-1/2/HASS ("eagle") layout
PROPOSAL = {"accept_tolerance": 0.0, "proposal_type": "greedy", "speculative_tokens": 3, "verifier_accept_k": 1}
OPTIONS = ("norm_before_fc", "fc_norm", "norm_before_residual", "norm_output")  # the Eagle 3.1 fields
# Top-level fields of speculators configs that specref reads or may ignore (they change nothing at inference).
EAGLE3_FIELDS = {"architectures", "auto_map", "draft_vocab_size", "dtype", "torch_dtype",
                 "eagle_aux_hidden_state_layer_ids", "embed_requires_grad", "speculators_config",
                 "speculators_model_type", "speculators_version", "target_hidden_size", "tie_word_embeddings",
                 "transformer_layer_config", "transformers_version", "has_no_defaults_at_init", *OPTIONS}
LEGACY_FIELDS = {"architectures", "auto_map", "dtype", "torch_dtype", "fusion_bias", "layernorms",
                 "speculators_config", "speculators_model_type", "speculators_version", "tie_word_embeddings",
                 "transformer_layer_architecture", "transformer_layer_config", "transformers_version",
                 "has_no_defaults_at_init"}
LEGACY_RENAMES = (("fc.", "fusion_fc."), ("layers.0.", "transformer."))


def is_speculators(cfg: dict[str, Any]) -> bool:
    return "speculators_model_type" in cfg


def dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def layer_config(head: HeadConfig, *, max_positions: int, bos_eos: tuple[Any, Any]) -> dict[str, Any]:
    """`transformer_layer_config`: the head's decoder-layer shapes as a LlamaConfig dict (transformers 5 style)."""
    hf = config_to_hf(head.layer)
    return {"attention_bias": hf["attention_bias"], "attention_dropout": 0.0, "bos_token_id": bos_eos[0],
            "eos_token_id": bos_eos[1], "head_dim": head.layer.head_dim, "hidden_act": "silu",
            "hidden_size": head.hidden, "initializer_range": 0.02, "intermediate_size": head.layer.intermediate_size,
            "max_position_embeddings": max_positions, "mlp_bias": False, "model_type": "llama",
            "num_attention_heads": head.layer.num_attention_heads, "num_hidden_layers": head.layer.num_hidden_layers,
            "num_key_value_heads": head.layer.num_key_value_heads, "pad_token_id": None, "pretraining_tp": 1,
            "rms_norm_eps": head.layer.rms_norm_eps, "rope_parameters": hf["rope_parameters"],
            "tie_word_embeddings": False, "use_cache": True, "vocab_size": head.layer.vocab_size}


def speculators_config(head: HeadConfig, *, verifier: dict[str, Any], dtype: str, max_positions: int,
                       bos_eos: tuple[Any, Any], target_hidden: int, transformers_version: str) -> dict[str, Any]:
    """The `config.json` speculators writes for this head (EAGLE-3: 0.9.0; EAGLE-1/2/HASS: 0.6 legacy)."""
    algorithm = "eagle3" if head.kind == "eagle3" else "eagle"
    common = {"speculators_config": {"algorithm": algorithm, "default_proposal_method": "greedy",
                                     "proposal_methods": [dict(PROPOSAL)], "verifier": verifier},
              "speculators_model_type": algorithm, "tie_word_embeddings": False, "dtype": dtype,
              "transformers_version": transformers_version}
    layer = layer_config(head, max_positions=max_positions, bos_eos=bos_eos)
    if head.kind == "eagle":
        layer["num_hidden_layers"] = 1
        return {**common, "architectures": ["EagleSpeculator"],
                "auto_map": {"": "eagle_legacy_model.EagleSpeculatorConfig"}, "fusion_bias": head.fc_bias,
                "layernorms": False, "speculators_version": LEGACY_VERSION,
                "transformer_layer_architecture": "LlamaDecoderLayer", "transformer_layer_config": layer}
    return {**common, "architectures": ["Eagle3Speculator"], "auto_map": {"": "config.Eagle3SpeculatorConfig"},
            "draft_vocab_size": head.draft_vocab_size, "eagle_aux_hidden_state_layer_ids": list(head.layer_ids),
            "embed_requires_grad": False, "fc_norm": head.fc_norm, "norm_before_fc": head.norm_before_fc,
            "norm_before_residual": head.norm_before_residual, "norm_output": head.norm_output,
            "speculators_version": SPECULATORS_VERSION,
            "target_hidden_size": target_hidden if target_hidden != head.hidden else None,
            "transformer_layer_config": layer}


def speculators_tensors(head: HeadConfig, state: dict[str, Tensor], vocab: int) -> dict[str, Tensor]:
    """The head's tensors under speculators' names (`state`: HF names with `layers.{i}.` prefixes). EAGLE-3
    keeps every name and adds `t2d`; the legacy layout renames fc and layer 0 and drops the embedding."""
    if head.kind == "eagle3":
        out = dict(state)
        if "d2t" in out and (head.draft_vocab_size != vocab or out["d2t"].any()):
            t2d = out["d2t"].new_zeros(vocab, dtype=bool)
            t2d[out["d2t"] + out["d2t"].new_tensor(range(len(out["d2t"])))] = True
            out["t2d"] = t2d
        elif "d2t" in out and not out["d2t"].any():
            del out["d2t"]  # the identity over the full vocabulary: speculators writes neither table
        return out
    out = {}
    for key, value in state.items():
        if key == "embed_tokens.weight":
            continue
        for ours, theirs in LEGACY_RENAMES:
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        out[key] = value
    return out


def original_layout(cfg: dict[str, Any], weights: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A speculators directory's config and tensors as the original EAGLE layout has them, for `read_head`:
    refuses fields and variants specref does not implement, naming them."""
    kind = cfg.get("speculators_model_type")
    if kind not in ("eagle3", "eagle"):
        raise ValueError(f"speculators_model_type {kind!r} is not supported; specref reads eagle3 and eagle")
    unknown = sorted(set(cfg) - (EAGLE3_FIELDS if kind == "eagle3" else LEGACY_FIELDS))
    if unknown:
        raise ValueError(f"speculators config field(s) {', '.join(unknown)} are not implemented by specref")
    layer = cfg.get("transformer_layer_config")
    if not isinstance(layer, dict):
        raise ValueError("speculators config: transformer_layer_config must be an object")
    flat = {**layer, "eagle_aux_hidden_state_layer_ids": cfg.get("eagle_aux_hidden_state_layer_ids"),
            "draft_vocab_size": cfg.get("draft_vocab_size"), "speculators_model_type": kind}
    if kind == "eagle":
        if cfg.get("layernorms"):
            raise ValueError("the speculators 'layernorms' EAGLE variant (embedding/hidden/lm-head norms) is not "
                             "implemented by specref")
        if bool(cfg.get("fusion_bias", False)) != ("fusion_fc.bias" in weights):
            raise ValueError(f"speculators config says fusion_bias {cfg.get('fusion_bias')} but fusion_fc.bias is "
                             f"{'present' if 'fusion_fc.bias' in weights else 'absent'}")
        renamed = {}
        for key, value in weights.items():
            for ours, theirs in LEGACY_RENAMES:
                if key.startswith(theirs):
                    key = ours + key.removeprefix(theirs)
                    break
            renamed[key] = value
        return flat, renamed
    for option in OPTIONS:
        flat[option] = cfg.get(option, False)
    single = not any(k.startswith("layers.1.") for k in weights)
    renamed = {(k.replace("layers.0.", "midlayer.", 1) if single else k.replace("layers.", "midlayer.", 1))
               if k.startswith("layers.") else k: v for k, v in weights.items()}
    return flat, renamed


def dump(cfg: dict[str, Any]) -> str:
    """JSON as transformers writes configs: indent 2, keys sorted at every level, a trailing newline."""
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"
