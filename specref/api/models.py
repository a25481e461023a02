"""Model names for the façades: a local checkpoint directory, or the embedded default pair's names.

A Llama-family directory (model_type llama, mistral or qwen2) loads into specref's own decoder; any other
`transformers` causal LM (GPT-2, OPT, ...) loads through `formats/hf_adapter.py`. No model hub is reachable
from specref, so a name that is neither a directory nor a default's name is refused, saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from specref.formats.default_model import DEFAULT_TARGET, default_draft_dir, default_target_dir
from specref.formats.files import read_json_config
from specref.formats.hf import SUPPORTED_MODEL_TYPES, load_draft, load_model, load_tokenizer
from specref.formats.hf_adapter import HFCausalLM

DEFAULT_DRAFT = "smollm2-draft"  # the shipped draft of the default target


def resolve(name: str) -> Path:
    """The checkpoint directory a model name stands for."""
    if name == DEFAULT_TARGET:
        return default_target_dir()
    if name == DEFAULT_DRAFT:
        return default_draft_dir()
    path = Path(name)
    if not path.is_dir():
        raise ValueError(f"model {name!r} is neither a local checkpoint directory nor {DEFAULT_TARGET!r} / "
                         f"{DEFAULT_DRAFT!r}; no model hub is reachable here: download it and pass its path")
    return path


def load_named(name: str, device: str | torch.device = "cpu", *, target: Any = None) -> Any:
    """The model a name stands for, on `device`: specref's decoder for Llama-family checkpoints, the adapter for
    other transformers causal LMs. The default draft borrows `target`'s embedding, so it needs the target."""
    path = resolve(name)
    if name == DEFAULT_DRAFT:
        if target is None or not hasattr(target, "embed_tokens"):
            raise ValueError(f"{DEFAULT_DRAFT!r} drafts for {DEFAULT_TARGET!r} only: use that target")
        return load_draft(path, target)
    if read_json_config(path, "a checkpoint directory").get("model_type") in SUPPORTED_MODEL_TYPES:
        return load_model(path, device=device)
    from transformers import AutoModelForCausalLM

    return HFCausalLM(AutoModelForCausalLM.from_pretrained(path).to(device))


def tokenizer_for(name: str) -> Any:
    """The tokenizer saved with a model (the default draft shares the default target's)."""
    return load_tokenizer(default_target_dir() if name == DEFAULT_DRAFT else resolve(name))


def pick_device(device: str | None) -> torch.device:
    """`device`, with CUDA falling back to the CPU when absent (as the seed libraries do)."""
    if device is None or str(device).startswith("cuda"):
        return torch.device(device or "cuda") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)
