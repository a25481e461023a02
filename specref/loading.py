"""Load and save Llama-family checkpoints in Hugging Face's layout.

A checkpoint directory holds `config.json` and weights as `model.safetensors`, as shards listed by
`model.safetensors.index.json`, or as `pytorch_model.bin` (read with `weights_only=True`, never a full
unpickle). Tensor names are `LlamaForCausalLM`'s; specref's modules carry the same names minus `model.`.
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
from safetensors.torch import load_file, save_file
from torch import Tensor

from specref.model import Llama, ModelConfig

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
            weights.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f} is corrupt or truncated: {e}") from None
    return weights


def build_model(config: ModelConfig, weights: dict[str, Any], *, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> Llama:
    """A `Llama` holding exactly `weights` (HF names, `model.` prefix optional), checked name by name."""
    state = {k.removeprefix("model."): v for k, v in weights.items() if not k.endswith(IGNORED_SUFFIXES)}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = Llama(config)
    expected = {k: v.shape for k, v in model.state_dict().items()
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
    model.load_state_dict({k: v.to(device, dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def load_model(path: str | Path, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Llama:
    """Load a Hugging Face Llama-family checkpoint directory into specref's decoder."""
    config = read_config(path)
    return build_model(config, read_weights(path), dtype=dtype, device=device)


def load_tokenizer(path: str | Path) -> Any:
    """The checkpoint's tokenizer, or None when the directory has none (then prompts are token ids)."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def atomic_directory(path: str | Path) -> tuple[Path, Path]:
    """A fresh temporary directory beside `path`; `commit_directory` renames it into place."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path, Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))


def save_model(model: Llama, path: str | Path) -> None:
    """Write `config.json` + `model.safetensors` (HF layout) atomically: all or nothing at `path`."""
    path, tmp = atomic_directory(path)
    try:
        (tmp / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2, sort_keys=True) + "\n")
        state = {f"model.{k}" if k != "lm_head.weight" else k: v.detach().contiguous().cpu()
                 for k, v in model.state_dict().items()
                 if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
