"""Prompt sets kept in the package (training and held-out) and chat-template encoding."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

PROMPT_SETS = ("train", "heldout")


def load_prompts(name: str) -> list[str]:
    """The `train` prompts (draft distillation) or the `heldout` ones (evaluation and benchmarks)."""
    if name not in PROMPT_SETS:
        raise ValueError(f"unknown prompt set {name!r}; expected one of {PROMPT_SETS}")
    text = resources.files("specref").joinpath(f"data/prompts_{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def encode(tokenizer: Any, text: str, *, chat: bool = True) -> list[int]:
    """Token ids of a user message, wrapped in the tokenizer's chat template when it has one and `chat`."""
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=True)["input_ids"]
