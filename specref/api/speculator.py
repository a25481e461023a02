"""`Speculator`: an EAGLE head as one checkpoint object, read from any layout, saved in speculators', and run.

    spec = Speculator.from_pretrained("path/to/EAGLE3-head")          # original EAGLE/HASS/EAGLE-3 or speculators
    spec.save_pretrained("out/")                                       # the layout vLLM serves: vllm serve out/
    ids = spec.generate([[1, 2, 3]], max_new_tokens=32, verifier="path/to/target")   # lossless EAGLE decoding

The entry points follow the `speculators` library's (`from_pretrained`, `save_pretrained(push_to_hub=...)`,
`config.verifier`); unlike there, `generate` runs: it loads the verifier named in the config (or the one
passed) and decodes with specref's EAGLE tree loop, so every sample follows the verifier's own law.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from specref import eagle_decode
from specref.cpu import is_packed
from specref.eagle import EagleHead, HeadConfig
from specref.formats.default_model import DEFAULT_TARGET, default_target_dir
from specref.formats.eagle import check_head_dir, head_from, place_head, read_head_dir
from specref.formats.files import atomic_directory, read_json_config
from specref.formats.hf import config_from_hf, load_model, split_hf
from specref.formats.speculators import (
    dtype_name,
    dump,
    is_speculators,
    speculators_config,
    speculators_tensors,
)
from specref.logits import SamplingParams
from specref.model import Llama, ModelConfig
from specref.tree import TreeSpec, device_tree

ALGORITHMS = ("auto", "eagle", "hass", "eagle3")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Verifier:
    """The target model a speculator drafts for, as speculators records it."""

    name_or_path: str | None
    architectures: list[str] = field(default_factory=lambda: ["LlamaForCausalLM"])


@dataclass(frozen=True)
class SpeculatorConfig:
    algorithm: str  # "eagle3", "eagle" or "hass" (HASS heads have EAGLE-1's layout)
    head: HeadConfig
    verifier: Verifier
    source: str  # the layout it was read from: "speculators", "eagle3" or "eagle"
    dtype: torch.dtype  # the checkpoint's floating-point dtype
    target_hidden_size: int
    max_position_embeddings: int
    bos_eos: tuple[Any, Any] = (None, None)


def unpadded(rows: list[list[int]], attention_mask: Tensor | Sequence[int] | Sequence[Sequence[int]]
             ) -> list[list[int]]:
    """The prompt tokens of left-padded rows: those whose `attention_mask` entry is 1, checked first (a mask of
    the rows' (B, T) shape, each row 0s then at least one 1: right padding or holes would put padding inside
    a sequence, which transformers only warns about)."""
    if len({len(r) for r in rows}) > 1:
        raise ValueError("with attention_mask, input_ids must be padded to one width; its rows' lengths differ")
    mask = torch.as_tensor(attention_mask)
    if mask.dim() == 1 and len(rows) == 1:
        mask = mask[None]
    shape = (len(rows), len(rows[0]) if rows else 0)
    if tuple(mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; input_ids has {shape}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (a prompt token)")
    if mask.shape[1] == 0 or not bool((mask.long().diff(dim=1) >= 0).all() & mask.bool()[:, -1].all()):
        raise ValueError("attention_mask must be left padding: in each row 0s, then at least one 1 to the end "
                         "(a tokenizer with padding_side=\"left\")")
    return [r[len(r) - int(n):] for r, n in zip(rows, mask.long().sum(1).tolist(), strict=True)]


def resolve_verifier(verifier: str | Path | Llama | None) -> Path | Llama | None:
    """A loaded model, a local checkpoint directory, or the embedded default's name; a hub id is refused with
    the reason (no model hub is reachable from specref)."""
    if verifier is None or isinstance(verifier, Llama):
        return verifier
    if str(verifier) == DEFAULT_TARGET:
        return default_target_dir()
    path = Path(verifier)
    if not path.is_dir():
        raise ValueError(f"verifier {str(verifier)!r} is not a local checkpoint directory (or {DEFAULT_TARGET!r}); "
                         "download it first and pass its path")
    return path


def target_config(verifier: Path | Llama | None, cfg: dict[str, Any], weights: dict[str, Tensor]) -> ModelConfig:
    """The verifier's config, or (without one) a stand-in built from the head's own config and tensors (as
    `read_head_dir` gives them): its layer
    fields, the fused hidden size read off fc, and as many layers as the fused ids need."""
    if isinstance(verifier, Llama):
        return verifier.config
    if verifier is not None:
        return config_from_hf(read_json_config(verifier, "a verifier checkpoint directory"))
    fc = weights.get("fc.weight")
    if fc is None:
        raise ValueError("not an EAGLE head: no fc.weight")
    eagle3 = any(k.startswith("midlayer.") for k in weights)
    ids = cfg.get("eagle_aux_hidden_state_layer_ids") or (cfg.get("eagle_config") or {}).get(
        "eagle_aux_hidden_state_layer_ids")
    if eagle3 and not ids:
        raise ValueError("the head does not say which target layers it fuses (eagle_aux_hidden_state_layer_ids); "
                         "pass --verifier (a local directory with the target's config.json) so that the default "
                         "layers (2, L//2, L-3) can be computed, never guessed")
    vocab = cfg.get("vocab_size") or next((len(weights[k]) for k in ("t2d", "embed_tokens.weight") if k in weights),
                                          None)
    if not vocab:
        raise ValueError("the head's config has no vocab_size and no t2d or embed_tokens tells it; pass --verifier")
    base = config_from_hf({"model_type": "llama", **cfg, "vocab_size": vocab})
    return replace(base, hidden_size=fc.shape[1] // (3 if eagle3 else 2),
                   num_hidden_layers=max(ids) + 1 if eagle3 else 1)


def local(verifier: str | Path | Llama | None) -> bool:
    """Whether `verifier` can be read here: a loaded model, a local directory or the embedded default's name."""
    return isinstance(verifier, Llama) or (verifier is not None and (str(verifier) == DEFAULT_TARGET
                                                                    or Path(verifier).is_dir()))


class Speculator:
    """An EAGLE-1/2, HASS or EAGLE-3 head with its config, independent of any loaded target."""

    def __init__(self, config: SpeculatorConfig, state: dict[str, Tensor], own_embedding: bool) -> None:
        self.config, self.state, self.own_embedding = config, state, own_embedding

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, *, verifier: str | Path | Llama | None = None,
                        algorithm: str = "auto", quiet: bool = False) -> Speculator:
        """Read a speculators directory or an original EAGLE/HASS/EAGLE-3 one (converted on the fly), saying what
        it found. `verifier` (a local directory, the default's name or a loaded model) checks the head against the
        target's config; a hub id is only recorded. Without it, the verifier the directory names is used when it
        is local."""
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        path = Path(path_or_hub_id)
        if not path.exists() and "/" in str(path_or_hub_id) and not path.is_absolute():
            raise ValueError(f"{path_or_hub_id!r} is not a local directory; no model hub is reachable here: "
                             "download it and pass its path")
        cfg = check_head_dir(path)
        named = (cfg.get("speculators_config") or {}).get("verifier") or {}
        if verifier is None and named.get("name_or_path") and local(named["name_or_path"]):
            verifier = named["name_or_path"]
        resolved = resolve_verifier(verifier if local(verifier) else None)  # a hub id is recorded, not read
        layout, weights = read_head_dir(path)  # the weights are read once, for the stand-in target and the head
        target = target_config(resolved, layout, weights)
        head, state, own_embedding = head_from(layout, weights, target)
        kind = "speculators" if is_speculators(cfg) else head.kind
        if algorithm not in ("auto", "hass") and algorithm != head.kind:
            raise ValueError(f"{path} holds an {head.kind} head, not {algorithm}")
        if algorithm == "hass" and head.kind != "eagle":
            raise ValueError(f"{path} holds an {head.kind} head; HASS heads have EAGLE-1's layout")
        if isinstance(verifier, Llama):
            info = Verifier(None)
        elif verifier is not None:
            arch = (read_json_config(resolved, "a verifier").get("architectures") if isinstance(resolved, Path)
                    else None) or named.get("architectures") or ["LlamaForCausalLM"]
            info = Verifier(str(verifier), list(arch))
        else:
            info = Verifier(named.get("name_or_path"), list(named.get("architectures") or ["LlamaForCausalLM"]))
        floats = [v.dtype for v in weights.values() if v.is_floating_point()]
        config = SpeculatorConfig(
            algorithm="hass" if algorithm == "hass" else head.kind, head=head, verifier=info, source=kind,
            dtype=floats[0] if floats else torch.float32, target_hidden_size=target.hidden_size,
            max_position_embeddings=max(head.layer.max_position_embeddings, target.max_position_embeddings),
            bos_eos=(layout.get("bos_token_id"), layout.get("eos_token_id")))
        if not quiet:
            extras = [o for o in ("norm_before_fc", "fc_norm", "norm_before_residual", "norm_output")
                      if getattr(head, o)]
            vocab = f", draft vocabulary {head.draft_vocab_size}" if head.draft_vocab_size else ""
            print(f"specref: {path} is an {head.kind} head in the {kind} layout ({head.layer.num_hidden_layers} "
                  f"layer(s), hidden {head.hidden}{vocab}{''.join(', ' + e for e in extras)})", file=sys.stderr)
        return cls(config, state, own_embedding)

    def tensors(self, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """The head's tensors under speculators' names, floats in `dtype` (default: the checkpoint's)."""
        head = self.config.head
        out = speculators_tensors(head, split_hf(self.state, head.layer), head.layer.vocab_size)
        dtype = dtype or self.config.dtype
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sorted(out.items())}

    def save_pretrained(self, path: str | Path, *, push_to_hub: bool = False, repo_id: str | None = None,
                        private: bool = False, token: str | None = None, dtype: torch.dtype | None = None,
                        overwrite: bool = False) -> Path:
        """Write the speculators layout (EAGLE-3: what speculators 0.9.0 writes; EAGLE-1/2/HASS: the legacy
        layout of speculators <= 0.6) all or nothing; with `push_to_hub`, upload it to `repo_id` through
        huggingface_hub's API."""
        import transformers
        from safetensors.torch import save_file

        if push_to_hub and not repo_id:
            raise ValueError("push_to_hub needs a repo_id")
        c = self.config
        dtype = dtype or c.dtype
        cfg = speculators_config(c.head, verifier={"architectures": c.verifier.architectures,
                                                   "name_or_path": c.verifier.name_or_path},
                                 dtype=dtype_name(dtype if c.head.kind == "eagle3" else torch.float32),
                                 max_positions=c.max_position_embeddings, bos_eos=c.bos_eos,
                                 target_hidden=c.target_hidden_size, transformers_version=transformers.__version__)
        tensors = self.tensors(dtype if c.head.kind == "eagle3" else torch.float32)
        path = Path(path)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            (tmp / "config.json").write_text(dump(cfg))
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="model")
        return path

    def head_for(self, target: Llama) -> EagleHead:
        """The head placed on a loaded target (checked against its config first)."""
        if target.config.vocab_size != self.config.head.layer.vocab_size:
            raise ValueError(f"the verifier has vocab size {target.config.vocab_size}, the head "
                             f"{self.config.head.layer.vocab_size}")
        return place_head((self.config.head, self.state, self.own_embedding), target)

    def load_verifier(self, verifier: str | Path | Llama | None = None) -> Llama:
        """The verifier passed, or the one the config names (a local directory or the embedded default)."""
        resolved = resolve_verifier(verifier if verifier is not None else self.config.verifier.name_or_path)
        if resolved is None:
            raise ValueError("this speculator names no verifier; pass verifier= (a path or a loaded model)")
        return resolved if isinstance(resolved, Llama) else load_model(resolved)

    @torch.no_grad()
    def generate(self, input_ids: Tensor | Sequence[int] | Sequence[Sequence[int]], max_length: int | None = None,
                 max_new_tokens: int | None = None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, *,
                 attention_mask: Tensor | Sequence[int] | Sequence[Sequence[int]] | None = None,
                 verifier: str | Path | Llama | None = None, tree: TreeSpec | None = None) -> Tensor:
        """(B, T + new) like transformers' generate: the T prompt columns, then each row's new tokens from lossless
        EAGLE tree decoding with the verifier, greedy unless `do_sample`. Rows stop at the verifier's
        end-of-sequence token and are padded with it. Prompts of different lengths come as a list of lists (left-
        padded here with that token, so every row's new tokens start at column T) or as a left-padded tensor with
        its `attention_mask` (0 marks padding, as a tokenizer with padding_side="left" gives them); padding is never
        decoded. `max_new_tokens` wins over `max_length` (T included); without either, 20 new."""
        given = (input_ids.tolist() if isinstance(input_ids, Tensor) else
                 [list(input_ids)] if input_ids and isinstance(input_ids[0], int) else [list(p) for p in input_ids])
        if isinstance(input_ids, Tensor) and input_ids.dim() == 1:
            given = [given]
        prompts = given if attention_mask is None else unpadded(given, attention_mask)
        longest = max(map(len, given), default=0)
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if max_new_tokens is None:
            max_new_tokens = max_length - longest if max_length is not None else 20
        if max_new_tokens < 1:
            raise ValueError(f"nothing to generate: max_length {max_length} leaves no room after a prompt of "
                             f"{longest} tokens")
        target = self.load_verifier(verifier)
        params = SamplingParams(temperature, top_k=top_k, top_p=top_p) if do_sample else SamplingParams(0.0)
        spec = tree or device_tree(target.device.type, params, packed=is_packed(target))
        eos = list(target.config.eos_token_id)
        out = eagle_decode.generate_batch(target, self.head_for(target), prompts, tree=spec,
                                          max_new_tokens=max_new_tokens, params=params, seed=seed,
                                          eos_token_ids=eos)
        pad = eos[0] if eos else 0
        rows = [[pad] * (longest - len(p)) + p + new for p, new in zip(given, out.token_ids, strict=True)]
        width = max(map(len, rows))
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
