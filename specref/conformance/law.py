"""The exact autoregressive law of a target's first L tokens: the reference every sampler is tested against.

P(x_1..x_L | prompt) = Π_t p(x_t | prompt, x_<t), with p the target's next-token law after temperature,
top-k and top-p (`specref.logits.process_logits`). Enumerated level by level over prefixes with positive
probability, so a top-k target needs k + k² + … + k^(L-1) next-token evaluations, not V^L: top-k 4 and L = 3
on SmolLM2 (V = 49,152) is 1 + 4 + 16 forwards and 64 cells. Each level's prefixes go through the target in
batches, with no cache (every prefix recomputed from scratch, so no cache bookkeeping can leak in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from specref.checks import check_count
from specref.logits import SamplingParams, process_logits
from specref.model import Llama

Law = dict[tuple[int, ...], float]
MAX_PREFIXES = 20_000  # next-token evaluations per level before the enumeration refuses


def next_token_logits(target: Any) -> Callable[[Tensor], Tensor]:
    """(B, T) token ids -> (B, V) logits of the token after each row, for a specref `Llama`, a `transformers`
    causal LM (anything with `.config` whose call returns `.logits`), or a callable doing exactly this."""
    if isinstance(getattr(target, "model", None), torch.nn.Module) and hasattr(target, "new_cache"):
        target = target.model  # specref's adapter of a transformers model: ask the model itself
    if isinstance(target, Llama):
        @torch.no_grad()
        def specref_logits(ids: Tensor) -> Tensor:
            return target(ids, torch.arange(ids.shape[1], device=ids.device).expand_as(ids)).logits[:, -1]
        return specref_logits
    if hasattr(target, "config") and callable(target):
        @torch.no_grad()
        def hf_logits(ids: Tensor) -> Tensor:
            return target(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        return hf_logits
    if callable(target):
        return target
    raise TypeError(f"target must be a specref Llama, a transformers causal LM or a callable, got {type(target)}")


def device_of(target: Any) -> torch.device:
    try:
        return next(target.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


@torch.no_grad()
def exact_law(target: Any, prompt_ids: Sequence[int], length: int, params: SamplingParams = SamplingParams(1.0),
              *, batch: int = 256, max_prefixes: int = MAX_PREFIXES) -> Law:
    """P(first `length` new tokens = s) for every s with positive probability, as a dict (floats, sum 1).

    Refuses (ValueError) before the first forward of a level with more than `max_prefixes` prefixes: bound
    the support with `top_k` (or a smaller `top_p`, or a shorter `length`)."""
    check_count("length", length)
    check_count("batch", batch)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("the prompt is empty: the law of the first token needs a context")
    logits_of, dev = next_token_logits(target), device_of(target)
    law: Law = {(): 1.0}
    for level in range(length):
        if len(law) > max_prefixes:
            raise ValueError(f"level {level} of the law has {len(law)} prefixes (> {max_prefixes}); bound the "
                             f"support with top_k (e.g. top_k=4 gives 4**{length} cells) or use a shorter length")
        items, grown = list(law.items()), {}
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            ids = torch.tensor([prompt + list(s) for s, _ in chunk], device=dev)
            p = process_logits(logits_of(ids).double(), params).cpu()  # p(· | prompt, s), float64
            for (s, w), row in zip(chunk, p, strict=True):
                for y in torch.nonzero(row).flatten().tolist():
                    grown[(*s, y)] = w * float(row[y])
        law = grown
    return law


@torch.no_grad()
def greedy_continuation(target: Any, prompt_ids: Sequence[int], length: int) -> list[int]:
    """The first `length` tokens of greedy autoregressive decoding (argmax, lowest id on ties), no cache."""
    logits_of, ids = next_token_logits(target), [int(t) for t in prompt_ids]
    for _ in range(length):
        ids.append(int(logits_of(torch.tensor([ids], device=device_of(target)))[0].argmax()))
    return ids[len(prompt_ids):]
