"""Distil a small draft for a target from text the target writes itself (`python -m specref train-draft`).

1. data    the target answers every training prompt (chat template) `samples` times: greedily, then at
           temperatures 0.7 and 1.0, in ragged batches;
2. labels  one teacher-forced target forward gives, at every position t, the target's top-K next-token
           probabilities p_K(· | x_<=t) with their ids (K = 32 holds nearly all of the mass);
3. vocab   the draft predicts only the Vd tokens most frequent in that text, so its output layer costs Vd/V of
           the target's (the 49,152-row head alone is a fifth of SmolLM2's per-token cost); q is 0 elsewhere,
           still a proper distribution;
4. train   L decoder layers, initialised from the target's first L layers (a better start than spreading
           them: SmolLM2's residual stream grows to 1e4 and later layers expect that), a final norm and the
           output rows (initialised from the target's) learn, on the answer positions,
               min  -sum_t sum_y p_K(y | x_<=t) log q(y | x_<=t)   over the draft vocabulary
           (Hinton et al. 2015, arXiv 1503.02531). SpS accepts with probability sum_y min(p, q)(y)
           (Leviathan et al. 2023), which grows as q covers the mass of p;
5. eval    acceptance alpha and tokens per target call tau of greedy SpS (gamma = 4) on the held-out prompts.

The input embedding is the target's (not stored); the draft's own weights are saved in bf16.
Every stage writes its results into the work directory, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from specref import autoregressive, sps
from specref.cpu import pack_linears
from specref.loading import load_model, load_tokenizer, save_model
from specref.logits import SamplingParams
from specref.model import Llama
from specref.prompts import encode, load_prompts

TEMPERATURES = (0.0, 0.7, 1.0)


def stage_data(target: Llama, prompts: list[list[int]], work: Path, samples: int, max_new_tokens: int,
               chunk: int, seed: int) -> list[Path]:
    files = []
    jobs = [(s, i) for s in range(samples) for i in range(0, len(prompts), chunk)]
    for s, i in tqdm(jobs, desc="1/4 target writes text", unit="batch"):
        f = work / f"data_{s}_{i:04d}.safetensors"
        files.append(f)
        if f.exists():
            continue
        batch = prompts[i : i + chunk]
        out = autoregressive.generate_batch(target, batch, max_new_tokens=max_new_tokens,
                                            params=SamplingParams(TEMPERATURES[s % len(TEMPERATURES)]),
                                            seed=seed + 1000 * s + i, eos_token_ids=target.config.eos_token_id)
        rows = [p + t for p, t in zip(batch, out.token_ids, strict=True)]
        tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.int32)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = torch.tensor(row)
        save_file({"tokens": tokens, "lengths": torch.tensor([len(r) for r in rows]),
                   "prompt_lens": torch.tensor([len(p) for p in batch])}, f)
    return files


@torch.inference_mode()
def stage_labels(target: Llama, files: list[Path], top_k: int, micro: int) -> list[Path]:
    out = []
    for f in tqdm(files, desc="2/4 target labels it", unit="batch"):
        g = f.with_name(f.name.replace("data_", "labels_"))
        out.append(g)
        if g.exists():
            continue
        data = load_file(f)
        tokens, ids, logp = data["tokens"].long(), [], []
        for i in range(0, len(tokens), micro):
            x = tokens[i : i + micro]
            logits = target(x, torch.arange(x.shape[1]).expand_as(x)).logits.float()
            top = logits.log_softmax(-1).topk(top_k, dim=-1)
            ids.append(top.indices.int())
            logp.append(top.values.half())
        save_file({"ids": torch.cat(ids), "logp": torch.cat(logp)}, g)
    return out


def draft_vocabulary(files: list[Path], size: int, vocab: int, eos: tuple[int, ...]) -> tuple[Tensor, float]:
    """The `size` most frequent token ids of the text (EOS always in), ascending, and the share of token
    occurrences they cover."""
    counts = np.zeros(vocab, dtype=np.int64)
    for f in files:
        data = load_file(f)
        valid = torch.arange(data["tokens"].shape[1]) < data["lengths"][:, None]
        counts += np.bincount(data["tokens"][valid].numpy(), minlength=vocab)
    ranked = counts.copy()
    ranked[list(eos)] = counts.max() + 1
    keep = np.sort(np.argsort(-ranked, kind="stable")[:size])
    return torch.from_numpy(keep), float(counts[keep].sum() / counts.sum())


def new_draft(target: Llama, layers: int, vocab_ids: Tensor) -> Llama:
    c = target.config
    draft = Llama(replace(c, num_hidden_layers=layers, head_vocab_size=len(vocab_ids), tie_word_embeddings=False,
                          shares_target_embeddings=True))
    with torch.no_grad():
        for mine, theirs in zip(draft.layers, target.layers, strict=False):
            mine.load_state_dict(theirs.state_dict())
        draft.norm.load_state_dict(target.norm.state_dict())
        draft.vocab_ids.copy_(vocab_ids)
        draft.embed_tokens.weight = target.embed_tokens.weight
        draft.lm_head.weight = torch.nn.Parameter(target.lm_head.weight[vocab_ids].clone())
    draft.embed_tokens.weight.requires_grad_(False)
    return draft


def batches(data: list[tuple], batch_tokens: int, rng: np.random.Generator) -> list[list[int]]:
    """Length-sorted sequences grouped into batches of about `batch_tokens` tokens, in random order."""
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))
    groups, cur = [], []
    for i in order:
        cur.append(i)
        if len(cur) * len(data[i][0]) >= batch_tokens:
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    rng.shuffle(groups)
    return groups


def draft_loss(draft: Llama, tokens: Tensor, ids: Tensor, logp: Tensor, valid: Tensor, t2d: Tensor) -> Tensor:
    """Cross-entropy of the draft against the target's top-K distribution, renormalised on the draft vocab,
    averaged over the `valid` positions (B, T)."""
    pos = torch.arange(tokens.shape[1]).expand_as(tokens)
    logq = F.log_softmax(draft.lm_head(draft(tokens, pos, return_logits=False).hidden), dim=-1)
    idx = t2d[ids.long()]  # (B, T, K) draft index or -1
    p = logp.float().exp() * (idx >= 0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
    ce = -(p * logq.gather(-1, idx.clamp_min(0))).sum(-1)  # (B, T)
    return (ce * valid).sum() / valid.sum()


@torch.no_grad()
def evaluate(target: Llama, draft: Llama, prompts: list[list[int]], gamma: int, max_new_tokens: int) -> dict:
    out = sps.generate_batch(target, draft, prompts, gamma=gamma, max_new_tokens=max_new_tokens,
                             params=SamplingParams(0.0), eos_token_ids=target.config.eos_token_id)
    return {"alpha": out.stats.alpha, "tau": out.stats.tau, "gamma": gamma, "prompts": len(prompts),
            "new_tokens": out.stats.new_tokens}


def train_draft(out: str, *, target: str | None = None, work_dir: str | None = None, layers: int = 2,
                vocab: int = 8192, samples: int = 3, max_new_tokens: int = 192, epochs: int = 10,
                lr: float = 2e-3, batch_tokens: int = 4096, top_k: int = 32, seed: int = 0,
                train_prompts: int | None = None, eval_prompts: int = 60, eval_new_tokens: int = 128) -> dict[str, Any]:
    from specref.default_model import resolve_target

    started = time.time()
    torch.manual_seed(seed)
    target_dir = resolve_target(target)
    tok = load_tokenizer(target_dir)
    tgt = load_model(target_dir)
    top_k = min(top_k, tgt.config.vocab_size)
    work = Path(work_dir or Path(out).with_name(Path(out).name + ".work"))
    work.mkdir(parents=True, exist_ok=True)
    prompts = [encode(tok, p) for p in load_prompts("train")[:train_prompts]]
    heldout = [encode(tok, p) for p in load_prompts("heldout")[:eval_prompts]]

    draft_init = load_model(target_dir)  # dense weights to copy from; the target itself runs packed (faster)
    pack_linears(tgt)
    files = stage_data(tgt, prompts, work, samples, max_new_tokens, chunk=40, seed=seed)
    labels = stage_labels(tgt, files, top_k, micro=4)
    vocab_ids, coverage = draft_vocabulary(files, vocab, tgt.config.vocab_size, tgt.config.eos_token_id)
    draft = new_draft(draft_init, layers, vocab_ids)
    del draft_init
    t2d = torch.full((tgt.config.vocab_size,), -1, dtype=torch.long)
    t2d[vocab_ids] = torch.arange(len(vocab_ids))
    data = []
    for f, g in zip(files, labels, strict=True):
        d, lab = load_file(f), load_file(g)
        for r in range(len(d["tokens"])):
            n, start = int(d["lengths"][r]), int(d["prompt_lens"][r]) - 1  # first position predicting an answer
            data.append((d["tokens"][r, :n].long(), lab["ids"][r, :n], lab["logp"][r, :n], start))
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    plan = [batches(data, batch_tokens, rng) for _ in range(epochs)]
    total = sum(map(len, plan))
    settings = {"layers": layers, "vocab": vocab, "epochs": epochs, "lr": lr, "batch_tokens": batch_tokens,
                "top_k": top_k, "seed": seed, "sequences": len(data)}
    state_file, step = work / "train_state.pt", 0
    if state_file.exists():
        state = torch.load(state_file, weights_only=True)
        if state.get("settings") != settings:
            raise ValueError(f"{state_file} was written with other settings ({state.get('settings')}); "
                             "delete it or use another --work-dir")
        draft.load_state_dict(state["draft"])
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
    bar = tqdm(total=total, initial=step, desc="3/4 draft learns", unit="step")
    flat = [g for epoch in plan for g in epoch]
    losses: list[float] = []
    while step < total:
        group = flat[step]
        n = max(len(data[i][0]) for i in group)
        tokens = torch.zeros(len(group), n, dtype=torch.long)
        ids = torch.zeros(len(group), n, top_k, dtype=torch.int32)
        logp = torch.full((len(group), n, top_k), -30.0, dtype=torch.float16)
        valid = torch.zeros(len(group), n, dtype=torch.bool)  # answer positions: what the draft will predict
        for r, i in enumerate(group):
            t, a, b, start = data[i]
            tokens[r, : len(t)], ids[r, : len(t)], logp[r, : len(t)] = t, a, b
            valid[r, start : len(t) - 1] = True
        for g in opt.param_groups:  # cosine decay after a short warm-up
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total))
        loss = draft_loss(draft, tokens, ids, logp, valid, t2d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if step % 100 == 0 or step == total:
            torch.save({"draft": draft.state_dict(), "opt": opt.state_dict(), "step": step, "settings": settings},
                       state_file)
    bar.close()

    print("4/4 evaluating on held-out prompts (greedy SpS, gamma 4)", file=sys.stderr)
    draft.eval()
    result = evaluate(tgt, draft, heldout, gamma=4, max_new_tokens=eval_new_tokens)
    result.update({"layers": layers, "vocab": len(vocab_ids), "vocab_coverage": coverage,
                   "train_sequences": len(data), "train_tokens": int(sum(len(d[0]) for d in data)),
                   "train_answer_tokens": int(sum(len(d[0]) - 1 - d[3] for d in data)), "steps": total,
                   "epochs": epochs, "lr": lr, "batch_tokens": batch_tokens, "samples_per_prompt": samples,
                   "max_new_tokens": max_new_tokens, "top_k": top_k,
                   "final_loss": float(np.mean(losses[-50:])) if losses else None,
                   "seconds": round(time.time() - started, 1), "seed": seed})
    save_model(draft, out, dtype=torch.bfloat16)
    (Path(out) / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
