"""Speculoos's entry points (bijinc/speculoos 0.1.0), run by specref's lossless core.

Same names, arguments and defaults: `SpeculativeSampler(draft_model_name, target_model_name, K=5, eps=1e-10,
device=None, top_p=0.9, top_k=50, temperature=1.0)` with `sample(input_ids, T)` and the others below, where T
is the number of new tokens, and the functional `speculative_sampling` / `auto_regressive_sampling`. What
differs is only what makes it lossless: drafts are verified by `u·q < p` against the *filtered* laws both
models sample from (Speculoos compares raw probabilities, which is lossy whenever top-k or top-p cut anything),
exactly T new tokens come back, and `seed=` makes every call reproducible. `eps` is accepted and unused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from specref import autoregressive, sps
from specref.api.models import load_named, pick_device, tokenizer_for
from specref.logits import SamplingParams


class SpeculativeSampler:
    def __init__(self, draft_model_name: str, target_model_name: str, K: int = 5, eps: float = 1e-10,
                 device: str | None = None, top_p: float = 0.9, top_k: int = 50, temperature: float = 1.0, *,
                 seed: int = 0) -> None:
        self.K, self.eps, self.device = K, eps, pick_device(device)
        self.params = SamplingParams(temperature, top_k=top_k, top_p=top_p)
        self.target_model = load_named(target_model_name, self.device)
        self.draft_model = (self.target_model if draft_model_name == target_model_name else
                            load_named(draft_model_name, self.device, target=self.target_model))
        self.tokenizer = tokenizer_for(target_model_name)
        self.seed, self.calls = seed, 0

    def next_seed(self) -> int:
        """Call i of this sampler uses seed + i: reproducible, and independent across calls."""
        self.calls += 1
        return self.seed + self.calls - 1

    def encode(self, text: str) -> Tensor:
        return self.tokenizer.encode(text, return_tensors="pt").to(self.device)

    def decode(self, output_ids: Tensor) -> str:
        return self.tokenizer.decode(output_ids[0].cpu(), skip_special_tokens=True)

    def sample(self, input_ids: Tensor, T: int) -> Tensor:
        """Prompt + T new tokens (1, L + T), drafted K at a time and distributed as the target samples. (More rows
        than one are continued independently, in one batch.)"""
        out = sps.generate_batch(self.target_model, self.draft_model, input_ids.tolist(), gamma=self.K,
                                 max_new_tokens=T, params=self.params, seed=self.next_seed())
        return torch.cat([input_ids, torch.tensor(out.token_ids, device=input_ids.device)], dim=1)

    def auto_regressive_sample(self, input_ids: Tensor, T: int) -> Tensor:
        """Prompt + T new tokens (1, L + T) sampled from the target alone (rows as in `sample`)."""
        out = autoregressive.generate_batch(self.target_model, input_ids.tolist(), max_new_tokens=T,
                                            params=self.params, seed=self.next_seed())
        return torch.cat([input_ids, torch.tensor(out.token_ids, device=input_ids.device)], dim=1)

    def sample_and_decode(self, input_text: str, T: int) -> str:
        return self.decode(self.sample(self.encode(input_text), T))

    def auto_regressive_sample_and_decode(self, input_text: str, T: int) -> str:
        return self.decode(self.auto_regressive_sample(self.encode(input_text), T))


def speculative_sampling(input_text: str, draft_model_name: str, target_model_name: str, T: int,
                         K: int = 5, eps: float = 1e-10, return_ids: bool = False, *, seed: int = 0) -> Any:
    sampler = SpeculativeSampler(draft_model_name, target_model_name, K=K, eps=eps, seed=seed)
    return sampler.sample(sampler.encode(input_text), T) if return_ids else sampler.sample_and_decode(input_text, T)


def auto_regressive_sampling(input_text: str, model_name: str, T: int, return_ids: bool = False,
                             *, seed: int = 0) -> Any:
    sampler = SpeculativeSampler(model_name, model_name, K=1, seed=seed)
    if return_ids:
        return sampler.auto_regressive_sample(sampler.encode(input_text), T)
    return sampler.auto_regressive_sample_and_decode(input_text, T)
