"""Plumbing every reader and writer shares: all-or-nothing writes, output-path checks and tensor-set checks."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from specref.cpu import swapped_layer


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory all or nothing: yields a fresh temporary sibling of `path`, renamed to `path` when the
    block succeeds and removed when it fails (Ctrl-C included), so that a failure leaves nothing behind. An
    existing non-empty `path` is refused unless `overwrite`; it is then replaced only once the new one is
    complete."""
    path = Path(path)
    if path.is_file():
        raise FileExistsError(f"{path} is a file; name a directory to write")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; choose a new output directory"
                              " (or overwrite it, where the command offers that)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or e} in {path.parent}") from None
    old = None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for item in [tmp, *tmp.rglob("*")]:  # mkdtemp's 0700 and some writers' 0600 would make the output private
            if not item.is_symlink():
                os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)
        if overwrite and path.exists():  # moved aside, replaced, then removed; moved back if the swap fails
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)  # without overwrite, only an empty directory is replaced (POSIX: else ENOTEMPTY)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if (old / path.name).exists() and not path.exists():
                os.replace(old / path.name, path)
            shutil.rmtree(old, ignore_errors=True)
        raise


def check_output_file(path: str | Path, flag: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse, before any work, an output file that could not be written at the end: a suffix outside
    `suffixes` (when given), an existing directory, or a parent directory that does not exist (`flag` names
    the option in the message)."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        kinds = " or ".join(filter(None, [", ".join(suffixes[:-1]), suffixes[-1]]))
        raise ValueError(f"{flag} {path}: write a {kinds} file")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; name a file")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"{flag} {path}: its directory does not exist")
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Write one file all or nothing: yields a temporary sibling of `path`, renamed over it when the block
    succeeds and removed when it fails, so that an interrupted write never leaves a truncated file."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 would make the file private, unlike a plain write
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def read_json_config(directory: str | Path, what: str) -> dict[str, Any]:
    """`directory/config.json` as a dict; a missing directory or file, bad JSON or a non-object is refused,
    naming the file (`what` says which kind of directory was expected)."""
    directory = Path(directory)
    if directory.is_file():
        raise ValueError(f"{directory} is a file, not {what} (config.json + weights); GGUF files are read only for "
                         "the default target")
    if not directory.is_dir():
        raise FileNotFoundError(f"{what} {directory} does not exist")
    file = directory / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing: not {what}")
    try:
        cfg = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return cfg


def check_tensors(what: str, state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Refuse a checkpoint (`what`) whose tensor names, shapes or kinds (floating point or integer) differ from
    the model's (`expected`, e.g. on the meta device), naming them."""
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        more = lambda names: " ..." if len(names) > 5 else ""  # noqa: E731
        raise ValueError(f"{what} does not match its config: missing tensors {missing[:5]}{more(missing)}, "
                         f"unexpected tensors {extra[:5]}{more(extra)}")
    for name, want in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(f"{what} tensor {name} has shape {tuple(got.shape)}, the config implies "
                             f"{tuple(want.shape)}")
        if got.is_floating_point() != want.is_floating_point():
            raise ValueError(f"{what} tensor {name} has dtype {got.dtype}, expected "
                             f"{'a floating-point' if want.is_floating_point() else 'an integer'} tensor")


def check_savable(model: nn.Module) -> None:
    """Refuse a model whose layers were packed or quantized (`specref/cpu.py`): their weights are no longer the
    plain tensors a checkpoint holds, and writing it would leave them out."""
    swapped = swapped_layer(model)
    if swapped is not None:
        raise ValueError(f"cannot save a model whose layers were packed or quantized ({swapped} is a "
                         f"{type(model.get_submodule(swapped)).__name__}); save it before pack_linears / quantize_int4")
