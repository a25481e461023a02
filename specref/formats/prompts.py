"""Prompt sets (the package's training and held-out ones, or a JSON-lines file) and chat-template encoding."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

PROMPT_SETS = ("train", "heldout")


def parse_prompts(text: str, where: str) -> list[str]:
    """The prompts of JSON lines, one {"prompt": "..."} object per line (blank lines skipped); a line that is
    not one is refused with its number."""
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)["prompt"]
        except (json.JSONDecodeError, TypeError, KeyError):
            raise ValueError(f'{where}, line {n}: expected a JSON object {{"prompt": "..."}}') from None
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}, line {n}: the prompt must be non-empty text")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{where} holds no prompts")
    return prompts


def load_prompts(name: str) -> list[str]:
    """The `train` prompts (draft distillation) or the `heldout` ones (evaluation and benchmarks)."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; expected one of {PROMPT_SETS}")
    text = resources.files("specref").joinpath(f"data/prompts_{name}.jsonl").read_text(encoding="utf-8")
    return parse_prompts(text, f"the package's {name} prompts")


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a JSON-lines file in the package's format (what `write-prompts` writes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--prompts {path} is not UTF-8 text") from None
    return parse_prompts(text, f"--prompts {path}")


def prompt_key(text: str) -> str:
    """What two prompts share when they are the same prompt: lower case, runs of white space collapsed."""
    return " ".join(text.lower().split())


def check_disjoint(train: list[str], heldout: list[str], where: str) -> None:
    """Refuse a training set that holds a held-out prompt: the held-out set measures text never trained on."""
    held = {prompt_key(p) for p in heldout}
    shared = [p for p in train if prompt_key(p) in held]
    if shared:
        raise ValueError(f"{where} holds {len(shared)} of the held-out prompts (such as {shared[0]!r}); they "
                         "stay out of training")


def encode(tokenizer: Any, text: str, *, chat: bool = True) -> list[int]:
    """Token ids of a user message, wrapped in the tokenizer's chat template when it has one and `chat`."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=True)["input_ids"]
