"""Distil a small draft model for a target from text the target writes itself (`python -m specref train-draft`).

The data, labels, draft vocabulary and training loop are `train/distill.py`'s. The draft is L Llama layers
initialised from the target's first L layers (a better start than spreading them: SmolLM2's residual stream
grows to 1e4 and later layers expect that), a final norm, and output rows for the draft vocabulary
initialised from the target's; it borrows the target's input embedding (not stored). It is evaluated by
the acceptance alpha and tokens per target call tau of greedy SpS (gamma = 4) on the held-out prompts, and
saved in bf16.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from specref import sps
from specref.formats.hf import load_model, save_model
from specref.logits import SamplingParams
from specref.model import Llama
from specref.train.distill import (
    TEXT_BATCH,
    bf16_products,
    check_output,
    distill_loss,
    draft_vocabulary,
    fit,
    hold_out,
    load_examples,
    pad,
    prepare,
    target_to_draft,
)


def new_draft(target: Llama, layers: int, vocab_ids: Tensor) -> Llama:
    draft = Llama(replace(target.config, num_hidden_layers=layers, head_vocab_size=len(vocab_ids),
                          tie_word_embeddings=False, shares_target_embeddings=True))
    with torch.no_grad():
        for mine, theirs in zip(draft.layers, target.layers, strict=False):
            mine.load_state_dict(theirs.state_dict())
        draft.norm.load_state_dict(target.norm.state_dict())
        draft.vocab_ids.copy_(vocab_ids)
        draft.embed_tokens.weight = target.embed_tokens.weight
        draft.lm_head.weight = torch.nn.Parameter(target.lm_head.weight[vocab_ids].clone())
    draft.embed_tokens.weight.requires_grad_(False)
    return draft


def train_draft(out: str, *, target: str | None = None, work_dir: str | None = None, layers: int = 2,
                vocab: int = 8192, samples: int = 2, max_new_tokens: int = 192, epochs: int = 10,
                lr: float = 2e-3, batch_tokens: int = 4096, top_k: int = 32, seed: int = 0,
                train_prompts: int | None = None, eval_prompts: int = 60, eval_new_tokens: int = 128,
                bf16: bool = False, val_prompts: int | None = None, device: str = "cpu",
                prompts: str | None = None, text_batch: int = TEXT_BATCH) -> dict[str, Any]:
    from specref.formats.default_model import resolve_target

    check_output(out)
    device = torch.device(device)
    bf16 = bf16_products(bf16, device)
    started = time.time()
    torch.manual_seed(seed)
    target_dir = resolve_target(target)
    work = Path(work_dir or Path(out).with_name(Path(out).name + ".work"))
    run = prepare(target_dir, work, samples=samples, max_new_tokens=max_new_tokens, top_k=top_k, seed=seed,
                  train_prompts=train_prompts, eval_prompts=eval_prompts, val_prompts=val_prompts, device=device,
                  prompts_file=prompts, text_batch=text_batch)
    tgt = run["target"]
    vocab_ids, coverage = draft_vocabulary(run["files"], vocab, tgt.config.vocab_size, tgt.config.eos_token_id)
    draft = new_draft(load_model(target_dir), layers, vocab_ids).to(device)  # dense weights to copy from (host)
    t2d = target_to_draft(vocab_ids, tgt.config.vocab_size).to(device)
    val_prompts = run["val_prompts"]
    data, val = hold_out(load_examples(run["files"], run["labels"]), run["files"], val_prompts)

    def loss_of(rows: list[tuple]) -> Tensor:
        tokens = pad([r[0] for r in rows])
        valid = torch.zeros(tokens.shape, dtype=torch.bool)  # answer positions: what the draft will predict
        for b, r in enumerate(rows):
            valid[b, r[3] : len(r[0]) - 1] = True
        hidden = draft(tokens, torch.arange(tokens.shape[1]).expand_as(tokens), return_logits=False).hidden
        return distill_loss(draft.lm_head(hidden), pad([r[1] for r in rows]), pad([r[2] for r in rows], -30.0),
                            valid, t2d)

    settings = {"layers": layers, "vocab": vocab, "epochs": epochs, "lr": lr, "batch_tokens": batch_tokens,
                "top_k": top_k, "seed": seed, "sequences": len(data),
                **({"val_prompts": val_prompts} if val_prompts else {})}
    losses, steps, val_losses = fit(draft, data, loss_of, lr=lr, epochs=epochs, batch_tokens=batch_tokens, seed=seed,
                                    state_file=work / "train_state.pt", settings=settings, desc="draft learns",
                                    bf16=bf16, val=val, device=device)

    print("evaluating on held-out prompts (greedy SpS, gamma 4)", file=sys.stderr)
    draft.eval()
    gen = sps.generate_batch(tgt, draft, run["heldout"], gamma=4, max_new_tokens=eval_new_tokens,
                             params=SamplingParams(0.0), eos_token_ids=tgt.config.eos_token_id)
    result = {"alpha": gen.stats.alpha, "tau": gen.stats.tau, "gamma": 4, "prompts": len(run["heldout"]),
              "new_tokens": gen.stats.new_tokens, "layers": layers, "vocab": len(vocab_ids), "vocab_coverage": coverage,
              "train_sequences": len(data), "train_tokens": int(sum(len(d[0]) for d in data)),
              "train_answer_tokens": int(sum(len(d[0]) - 1 - d[3] for d in data)), "steps": steps,
              "epochs": epochs, "lr": lr, "batch_tokens": batch_tokens, "samples_per_prompt": samples,
              "max_new_tokens": max_new_tokens, "top_k": top_k,
              "final_loss": float(np.mean(losses[-50:])) if losses else None,
              "seconds": round(time.time() - started, 1), "seed": seed, "bf16": bf16,
              "val_prompts": val_prompts, "val_loss_per_epoch": val_losses, "device": str(device),
              "prompts_file": prompts, "text_batch": text_batch}
    save_model(draft, out, dtype=torch.bfloat16)
    (Path(out) / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
