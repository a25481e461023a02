"""Timing the pieces of a decoding round: forward steps, and the weight-read floor they are measured against."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from specref.model import Llama


def median_seconds(call: Callable[[], object], reset: Callable[[], None], device: torch.device,
                   repeats: int = 30) -> float:
    """Median seconds of `call()` over `repeats` runs after 3 warm-ups, `reset()` (untimed) before each."""
    times = []
    for _ in range(repeats + 3):
        reset()
        t = time.perf_counter()
        call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


@torch.inference_mode()
def step_time(model: Llama, device: torch.device, tokens: int = 1) -> float:
    """Median seconds of one forward of `tokens` new tokens over a 128-token cache (1: a decoding step; more:
    a verification of that many drafted tokens, which costs the same under any mask unless the model attends
    exactly, per query: `model.attend_exactly`)."""
    cache, positions = model.new_cache(1, 256), torch.arange(128, device=device)[None]
    model(positions % model.config.vocab_size, positions, cache)  # any tokens: the cost does not depend on them
    ids, pos = torch.full((1, tokens), 1, device=device), 128 + torch.arange(tokens, device=device)[None]
    return median_seconds(lambda: model(ids, pos, cache), lambda: cache.keep(torch.tensor([128])), device)


def weight_read_floor(model: Llama) -> tuple[float, float]:
    """(seconds to stream the model's weights (parameters and buffers, such as 4-bit codes) once at the
    machine's measured read bandwidth, GB/s)."""
    data = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MB, larger than any cache
    data.sum()
    t = time.perf_counter()
    for _ in range(5):
        data.sum()
    bandwidth = 5 * data.numel() * 4 / (time.perf_counter() - t)
    size = sum(p.numel() * p.element_size() for p in (*model.parameters(), *model.buffers()))
    return size / bandwidth, bandwidth / 1e9
