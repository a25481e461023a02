"""Bounded memory: a request whose buffers cannot fit is refused with the numbers, before it is allocated,
rather than ending in an out-of-memory kill (or a raw allocator error) halfway through a run."""

from __future__ import annotations

import torch


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes that can still be allocated on `device` (Linux MemAvailable, or free CUDA memory); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":  # free memory plus what PyTorch's caching allocator holds but does not use
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_fits(nbytes: int, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, with the numbers, an allocation that cannot fit: better than an out-of-memory kill mid-run."""
    free = available_memory(device)
    if free is not None and nbytes > 0.8 * free:  # the rest of the run needs memory too
        raise ValueError(f"{what} needs {nbytes / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of memory is "
                         "available; ask for fewer samples, tokens or draft nodes")


def round_bytes(rows: int, vocab: int) -> int:
    """Bytes of one round's probability rows: float32 p and q, and the verifier's float64 copy of them."""
    return rows * vocab * (4 + 8)
