"""Committed tokens of a batch of sequences, and the rules that stop them.

A sequence stops right after its first end-of-sequence token or at `max_new_tokens` new tokens, even in the
middle of a speculative block. Both are stopping times of the token stream, so cutting a sequence that is
distributed as autoregressive sampling keeps it so (the rest of a verified block is simply not emitted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Stream = Callable[[list[int]], None]  # receives the tokens the first sequence commits, as they are committed


class Sequences:
    def __init__(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, eos_token_ids: int | Sequence[int],
                 stream: Stream | None = None) -> None:
        self.prompt_lens = np.array([len(p) for p in prompts], dtype=np.int64)
        self.limits = self.prompt_lens + max_new_tokens
        self.tokens = np.zeros((len(prompts), int(self.limits.max())), dtype=np.int64)
        for row, prompt in zip(self.tokens, prompts, strict=True):
            row[: len(prompt)] = prompt
        self.lengths = self.prompt_lens.copy()
        self.active = np.ones(len(prompts), dtype=bool)
        eos = [eos_token_ids] if isinstance(eos_token_ids, int | np.integer) else list(eos_token_ids)
        if any(isinstance(e, bool) or not isinstance(e, int | np.integer) for e in eos):
            raise ValueError(f"eos_token_ids must be a token id or a list of them, got {eos_token_ids!r}")
        self.eos = np.asarray(eos, dtype=np.int64)
        self.stream = stream

    def last(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The last k committed tokens of every sequence and their positions, both (B, k)."""
        pos = self.lengths[:, None] - k + np.arange(k)
        return np.take_along_axis(self.tokens, pos, axis=1), pos

    def commit(self, new: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Append new[b, :count[b]] to every active sequence, cut at EOS and the limit; return what was kept."""
        count = np.where(self.active, count, 0)
        valid = np.arange(new.shape[1]) < count[:, None]
        is_eos = np.isin(new, self.eos) & valid
        has_eos = is_eos.any(axis=1)
        count = np.minimum(np.where(has_eos, is_eos.argmax(axis=1) + 1, count), self.limits - self.lengths)
        rows, cols = np.nonzero(np.arange(new.shape[1]) < count[:, None])
        self.tokens[rows, self.lengths[rows] + cols] = new[rows, cols]
        if self.stream is not None and count[0]:
            self.stream(new[0, : count[0]].tolist())
        self.lengths += count
        self.active &= ~has_eos & (self.lengths < self.limits)
        return count

    def outputs(self) -> list[list[int]]:
        return [row[p:n].tolist() for row, p, n in zip(self.tokens, self.prompt_lens, self.lengths, strict=True)]

    @property
    def new_tokens(self) -> int:
        return int((self.lengths - self.prompt_lens).sum())
