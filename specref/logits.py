"""One logits processor for target and draft: temperature, then top-k, then top-p (nucleus), then softmax.

    p(x) ∝ exp(l_x / T)                      restricted to the k largest logits (top-k, Fan et al. 2018)
                                             and to the smallest set of largest-probability tokens whose
                                             mass reaches top_p (nucleus, Holtzman et al. 2020)

Speculative sampling is lossless only when the target's p at every verified position is exactly the
distribution autoregressive sampling would draw from (Leviathan et al. 2023, arXiv 2211.17192), so both
paths call this one function. T = 0 means greedy: p is one-hot on the first argmax (no division by zero),
which makes the acceptance rule reduce to "accept iff the draft equals the target's argmax".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from specref.checks import check_count


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, int | float) and 0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if 0 < self.temperature < 1e-30:  # logits / T would overflow float32; such a T is greedy anyway
            raise ValueError(f"temperature {self.temperature!r} is below 1e-30: use 0 for greedy decoding")
        check_count("top_k", self.top_k, minimum=0)
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = SamplingParams(temperature=0.0)


def process_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Probabilities (..., V) in at least fp32 from raw logits (..., V)."""
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN: the model produced invalid output")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if params.greedy:
        return torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    x = x / params.temperature
    if 0 < params.top_k < x.shape[-1]:
        kth = x.topk(params.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))  # ties with the k-th logit stay in
    if params.top_p < 1:
        sorted_x, order = x.sort(dim=-1)
        tail = sorted_x.softmax(-1).cumsum(-1) <= 1 - params.top_p  # mass we may drop, smallest first
        tail[..., -1] = False  # the most likely token always survives
        x = x.masked_fill(torch.zeros_like(tail).scatter(-1, order, tail), float("-inf"))
    probs = x.softmax(-1)
    if not torch.isfinite(probs).all():
        raise ValueError(f"logits / temperature ({params.temperature}) are infinite or all -inf: no token can be "
                         "sampled (0 is greedy; a tiny temperature overflows)")
    return probs


def sample(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row of probs (..., V), drawn with `generator`.

    When every row is one-hot (T = 0, argmax drafts) the draw can only be the argmax: it is returned without
    a multinomial draw, which costs about as much as a small model's whole step over 49,152 entries. The
    generator then advances less, which changes no law: later draws are still fresh.
    """
    flat = probs.reshape(-1, probs.shape[-1])
    top, argmax = flat.max(-1)
    if bool((top == 1).all()):
        return argmax.view(probs.shape[:-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
