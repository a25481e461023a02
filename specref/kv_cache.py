"""A preallocated key/value cache for a batch of sequences of different lengths.

Attention at a new token only needs the keys and values of the tokens before it, so decoding stores them:
K, V of shape (layers, B, kv_heads, max_len, head_dim) and a committed length n_b per sequence. A forward
over q new tokens writes rows [n_b, n_b + q) and advances n_b by q. Speculative decoding then keeps only
what the target verified (Leviathan et al. 2023, arXiv 2211.17192, §3):

* chain rollback: a smaller length; stale rows past it are masked and overwritten later;
* tree verification (Miao et al. 2024, SpecInfer; Li et al. 2024, EAGLE): `keep` gathers the accepted
  path's rows, which need not be contiguous, into [start_b, start_b + a_b).

Row index i of sequence b always holds a token whose every ancestor sits at a smaller row index, so a query
sees row j iff j < n_b (committed) or j is one of the new rows its mask allows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from specref.memory import check_fits


def cache_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of a cache's K and V of `shape` (layers, batch, kv_heads, max_len, head_dim)."""
    return 2 * math.prod(shape) * dtype.itemsize


class KVCache:
    def __init__(self, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (layers, batch, kv_heads, max_len, head_dim)
        check_fits(cache_bytes(shape, dtype), f"a KV cache for {batch} sequences x {max_len} positions", device)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self._new: Tensor | None = None  # row indices the current forward writes, (B, q)
        self._span = 0  # rows [0, span) that the current forward attends to

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def attention_mask(self, mask: Tensor) -> Tensor | None:
        """Start a forward of q new tokens: their (B, 1, q, span) visibility over the cache rows.

        `mask` (B or 1, q, k), k >= q, says which of the last k rows each new token sees: the rows
        [n_b + q - k, n_b) that an earlier forward appended without committing (draft-tree levels), then the
        q new rows [n_b, n_b + q). Every row before them is visible. Sets the rows `write` fills for every
        layer. Returns None when all rows are visible (one sequence, one new token): attention skips the mask.
        """
        q, k = mask.shape[-2], mask.shape[-1]
        self._span = int(self.lengths.max()) + q
        if self._span > self.max_len:
            raise ValueError(f"KV cache overflow: {self._span} rows needed, {self.max_len} allocated")
        self._new = self.lengths[:, None] + torch.arange(q, device=self.k.device)
        if k == 1 and len(self.lengths) == 1:
            return None
        rel = torch.arange(self._span, device=self.k.device) - (self.lengths[:, None] + q - k)  # (B, span)
        seen = mask.expand(len(self.lengths), q, k).gather(2, rel.clamp(0, k - 1)[:, None, :].expand(-1, q, -1))
        return ((rel < 0)[:, None, :] | (seen & (rel < k)[:, None, :]))[:, None]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store this layer's new K/V (B, kv_heads, q, d) and return all rows the forward attends to."""
        idx = self._new[:, None, :, None].expand_as(k)
        self.k[layer].scatter_(2, idx, k)
        self.v[layer].scatter_(2, idx, v)
        return self.k[layer, :, :, : self._span], self.v[layer, :, :, : self._span]

    def advance(self, q: int) -> None:
        self.lengths += q

    def keep(self, lengths: Tensor, start: Tensor | None = None, rows: Tensor | None = None) -> None:
        """Commit `lengths` (B,) rows per sequence, first moving rows[b] (absolute, ascending) to start[b]...

        Without `rows` this is a plain rollback to `lengths`. Entries of rows[b] past lengths[b] - start[b]
        are padding for ragged batches and land in rows that are not committed.
        """
        if rows is not None:
            if start is None:
                raise ValueError("keep: `rows` needs `start`")
            dst = start[:, None] + torch.arange(rows.shape[1], device=rows.device)
            for cache in (self.k, self.v):
                shape = (cache.shape[0], cache.shape[1], cache.shape[2], rows.shape[1], cache.shape[4])
                src = cache.gather(3, rows[None, :, None, :, None].expand(shape))
                cache.scatter_(3, dst[None, :, None, :, None].expand(shape), src)
        self.lengths = lengths.to(self.lengths.device, torch.long).clone()
