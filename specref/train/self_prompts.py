"""Training prompts the target writes itself (Magpie: Xu et al. 2024, arXiv 2406.08464).

The draft and the head learn from text the target writes in answer to prompts, and what limits them at this
scale is the variety of those prompts (the README's *Speed levers*): the package holds 1,200, written by hand.
An instruction-tuned model given its chat template up to the start of a user turn, and nothing else, continues
with a user message of the kind it was tuned on; sampled many times, that is a prompt set of any size, drawn
from the target's own idea of what users ask, with no dataset to download.

A message is kept when the target ended it (its end-of-turn token within `max_new_tokens`), it is not empty,
and it is new: not a repeat (compared in lower case with runs of white space collapsed), and not one of the
held-out prompts, which stay out of every training set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from specref import autoregressive, cpu
from specref.formats.files import atomic_file
from specref.formats.prompts import load_prompts, prompt_key
from specref.logits import SamplingParams
from specref.model import Llama

MARK = "\x00"  # stands in for the user's message while the chat template is rendered


def user_turn_prefix(tokenizer: Any) -> list[int]:
    """Token ids of the chat template up to where a user's message begins (system turn included, as the
    template writes it for a conversation)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the target's tokenizer has no chat template: self-written prompts need one to know "
                         "where a user's turn begins")
    text = tokenizer.apply_chat_template([{"role": "user", "content": MARK}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text[: text.index(MARK)], add_special_tokens=False)["input_ids"]


def sample_prompts(target: Llama, tokenizer: Any, count: int, *, temperature: float = 1.0, top_p: float = 0.9,
                   max_new_tokens: int = 96, seed: int = 0, batch: int = 40,
                   max_batches: int | None = None) -> tuple[list[str], int]:
    """Sample user messages from `target` until `count` are kept; return them and the number tried. Batch b is
    seeded with seed + b, so a seed gives the same prompts every run; `max_batches` (default: enough for ten
    times `count`) stops a target that rarely ends a message, with an error rather than an endless loop."""
    prefix = user_turn_prefix(tokenizer)
    eos = set(target.config.eos_token_id)
    if not eos:
        raise ValueError("the target's config names no end-of-sequence token: a message could never end")
    seen = {prompt_key(p) for p in load_prompts("heldout")}
    kept: list[str] = []
    tried = 0
    limit = max_batches if max_batches is not None else -(-10 * count // batch)
    with tqdm(total=count, desc="target writes prompts", unit="prompt") as bar:
        for b in range(limit):
            gen = autoregressive.generate_batch(target, [prefix] * batch, max_new_tokens=max_new_tokens,
                                                params=SamplingParams(temperature, top_p=top_p), seed=seed + b,
                                                eos_token_ids=sorted(eos))
            for ids in gen.token_ids:
                tried += 1
                text = tokenizer.decode(ids, skip_special_tokens=True).strip()
                if not ids or ids[-1] not in eos or not text or prompt_key(text) in seen:
                    continue
                seen.add(prompt_key(text))
                kept.append(text)
                bar.update(1)
                if len(kept) == count:
                    return kept, tried
    raise ValueError(f"the target ended only {len(kept)} new messages of {count} in {tried} tries (--max-new-tokens, "
                     "--temperature or --top-p may cut them off); nothing was written")


def write_prompts(out: str | Path, *, count: int, target: str | None = None, device: str = "cpu",
                  **sampling: Any) -> dict[str, Any]:
    """`sample_prompts` from the target (default: SmolLM2) on `device`, written to `out` as JSON lines
    ({"prompt": ...}, the package's format) in one atomic write; returns what was done."""
    from specref.formats.default_model import resolve_target
    from specref.formats.hf import load_model, load_tokenizer

    target_dir = resolve_target(target)
    model = load_model(target_dir, device=device)
    cpu.pack_linears(model)  # a no-op off the CPU; faster for batches on every CPU measured
    started = time.time()
    kept, tried = sample_prompts(model, load_tokenizer(target_dir), count, **sampling)
    with atomic_file(out) as tmp:
        tmp.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in kept), encoding="utf-8")
    print(f"specref: wrote {count} prompts to {out} (kept {count} of {tried} messages)", file=sys.stderr)
    return {"prompts": count, "tried": tried, "seconds": round(time.time() - started, 1), "device": str(device),
            **sampling}
