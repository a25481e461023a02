"""Plumbing every checkpoint reader and writer shares: all-or-nothing directory writes and tensor-set checks."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Write a directory all or nothing: yields a fresh temporary sibling of `path`, renamed to `path` when the
    block succeeds and removed when it fails (Ctrl-C included), so that a failure leaves nothing behind."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new output directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_tensors(what: str, state: Mapping[str, Tensor], expected: Mapping[str, torch.Size]) -> None:
    """Refuse a checkpoint (`what`) whose tensor names or shapes differ from the model's, naming them."""
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        more = lambda names: " ..." if len(names) > 5 else ""  # noqa: E731
        raise ValueError(f"{what} does not match its config: missing tensors {missing[:5]}{more(missing)}, "
                         f"unexpected tensors {extra[:5]}{more(extra)}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"{what} tensor {name} has shape {tuple(state[name].shape)}, the config implies "
                             f"{tuple(shape)}")
