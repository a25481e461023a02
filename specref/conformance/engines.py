"""Samplers to put through the kit: specref's own modes and Hugging Face `generate()`.

Each factory returns a `Sampler`, `(prompt_ids, n, seed) -> n continuations` of exactly `length` tokens that
never stop early (no end-of-sequence token: the law tested is that of the first `length` tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from specref import autoregressive, eagle_decode, sps
from specref.conformance.kit import Sampler
from specref.conformance.law import device_of
from specref.eagle import EagleHead
from specref.logits import SamplingParams
from specref.model import Llama
from specref.tree import TreeSpec, device_tree

SPECREF_MODES = ("ar", "sps", "eagle")
HF_MODES = ("sample", "assisted", "prompt_lookup")


def specref_sampler(mode: str, target: Llama, length: int, params: SamplingParams, *, draft: Llama | None = None,
                    head: EagleHead | None = None, gamma: int = 4, tree: TreeSpec | None = None) -> Sampler:
    """specref's AR, SpS (needs `draft`) or EAGLE (needs `head`; default tree: the device's for `params`) as a
    sampler: all n continuations in one batch, seeded by `seed`."""
    if mode not in SPECREF_MODES:
        raise ValueError(f"mode must be one of {', '.join(SPECREF_MODES)}, got {mode!r}")
    if (mode == "sps" and draft is None) or (mode == "eagle" and head is None):
        raise ValueError(f"mode {mode} needs a {'draft' if mode == 'sps' else 'head'}")
    spec = tree or device_tree(target.device.type, params)  # the packed CPU's: its fork draws siblings

    def sample(prompt_ids: Sequence[int], n: int, seed: int) -> list[list[int]]:
        kw: dict[str, Any] = {"max_new_tokens": length, "params": params, "seed": seed, "num_samples": n}
        if mode == "sps":
            return sps.generate(target, draft, prompt_ids, gamma=gamma, **kw).token_ids
        if mode == "eagle":
            return eagle_decode.generate(target, head, prompt_ids, tree=spec, **kw).token_ids
        return autoregressive.generate(target, prompt_ids, **kw).token_ids

    return sample


@contextmanager
def never_stopping(*models: Any) -> Iterator[None]:
    """The models' generation configs without an end-of-sequence token for the duration (then restored)."""
    saved = [m.generation_config.eos_token_id for m in models]
    try:
        for m in models:
            m.generation_config.eos_token_id = None
        yield
    finally:
        for m, eos in zip(models, saved, strict=True):
            m.generation_config.eos_token_id = eos


def hf_sampler(model: Any, length: int, params: SamplingParams, *, mode: str = "sample", assistant: Any = None,
               lookup_tokens: int = 3, chunk: int = 1000) -> Sampler:
    """`transformers` generation as a sampler: plain sampling (the control; batches of `chunk`), assisted
    generation with the `assistant` model, or prompt lookup drafting `lookup_tokens` tokens; the last two run
    one sequence at a time, as transformers requires. Seeded with `torch.manual_seed(seed)`, the global RNG
    transformers samples from. The sampling settings are passed explicitly, so none comes from the model's
    generation config."""
    if mode not in HF_MODES:
        raise ValueError(f"mode must be one of {', '.join(HF_MODES)}, got {mode!r}")
    if mode == "assisted" and assistant is None:
        raise ValueError("mode assisted needs an assistant model")
    settings: dict[str, Any] = {"max_new_tokens": length, "pad_token_id": 0,
                                "do_sample": not params.greedy, "repetition_penalty": 1.0}
    if not params.greedy:
        settings |= {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p}
    if mode == "assisted":
        settings["assistant_model"] = assistant
    elif mode == "prompt_lookup":
        settings["prompt_lookup_num_tokens"] = lookup_tokens
    models = [model] + ([assistant] if mode == "assisted" else [])

    @torch.no_grad()
    def sample(prompt_ids: Sequence[int], n: int, seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        x = torch.tensor([list(prompt_ids)], device=device_of(model))
        out: list[list[int]] = []
        with never_stopping(*models):
            while len(out) < n:
                b = 1 if mode != "sample" else min(chunk, n - len(out))
                y = model.generate(x.expand(b, -1), attention_mask=torch.ones_like(x).expand(b, -1), **settings)
                out += y[:, x.shape[1]:].tolist()
        return out

    return sample
