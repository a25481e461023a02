"""Any `transformers` causal LM (GPT-2, OPT, ...) as the target or draft of specref's AR and SpS loops.

The loops call a model as `model(ids, positions, cache)` and roll its cache back with `cache.keep(lengths)`
after a rejection. The adapter's cache keeps each row's token ids instead of K/V, and every call re-runs the
wrapped model over each row's whole context (right-padded, with an attention mask): rolling back is forgetting
tokens, so the cache cannot go stale. That costs O(context) per call; it is exact and short, which is what a
classroom and a differential test need. Trees (EAGLE) need specref's own decoder and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from specref.model import Output


@dataclass(frozen=True)
class AdapterConfig:
    """What the loops read from a model's config."""

    vocab_size: int
    max_position_embeddings: int
    eos_token_id: tuple[int, ...] = ()


class TokenCache:
    """Each row's token ids and how many of them count: the whole state a re-run needs."""

    def __init__(self, batch: int, capacity: int, device: torch.device) -> None:
        self.tokens = torch.zeros(batch, capacity, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    def keep(self, lengths: Tensor, start: Tensor | None = None, rows: Tensor | None = None) -> None:
        """Forget every token past `lengths` (B,), as KVCache.keep drops K/V rows. Gathering a tree's path
        (`start`, `rows`) is EAGLE's, which needs a specref target: refused rather than silently ignored."""
        if start is not None or rows is not None:
            raise ValueError("a transformers model behind HFCausalLM serves SpS and AR, not EAGLE's tree paths")
        self.lengths = lengths.to(self.lengths.device, torch.long).clone()


class HFCausalLM(nn.Module):
    """A transformers causal LM behind specref's decoder interface (forward, new_cache, config, device)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model.eval()
        hf = model.config
        positions = getattr(hf, "max_position_embeddings", None) or getattr(hf, "n_positions", None)
        if not positions:
            raise ValueError(f"{type(model).__name__}'s config names no maximum context length")
        eos = hf.eos_token_id
        eos = tuple(eos) if isinstance(eos, list | tuple) else (eos,) if eos is not None else ()
        self.config = AdapterConfig(hf.vocab_size, int(positions), eos)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def new_cache(self, batch: int, max_len: int) -> TokenCache:
        return TokenCache(batch, max_len, self.device)

    @torch.no_grad()
    def forward(self, input_ids: Tensor, position_ids: Tensor, cache: TokenCache | None = None,
                mask: Tensor | None = None, *, return_logits: bool = True, layer_inputs: Any = ()) -> Output:
        """Logits (B, q, V) for `input_ids` at `position_ids`, each row seeing its cached context first."""
        if mask is not None or layer_inputs:
            raise ValueError("a transformers model runs chains only (AR and SpS): trees and EAGLE features need "
                             "specref's own decoder")
        if cache is None:
            return Output(self.model(input_ids=input_ids).logits, torch.empty(0), ())
        cache.tokens.scatter_(1, position_ids, input_ids)
        cache.lengths = position_ids[:, -1] + 1
        if not return_logits:
            return Output(None, torch.empty(0), ())
        width = int(cache.lengths.max())
        attend = torch.arange(width, device=self.device) < cache.lengths[:, None]
        logits = self.model(input_ids=cache.tokens[:, :width], attention_mask=attend.long()).logits
        index = position_ids[..., None].expand(-1, -1, logits.shape[-1])
        return Output(logits.gather(1, index), torch.empty(0), ())
