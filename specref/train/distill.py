"""Distillation data and training loop shared by `train-draft` and `train-eagle`.

1. data    the target answers every training prompt (chat template) `samples` times: greedily once, then at
           temperatures 0.7 and 1.0 in turn, in ragged batches;
2. labels  one teacher-forced target forward gives, at every position t, the target's top-K next-token
           probabilities p_K(· | x_<=t) with their ids (K = 32 holds nearly all of the mass), and, for EAGLE
           heads, the target features there;
3. vocab   the student predicts only the Vd tokens most frequent in that text, so its output layer costs
           Vd/V of the target's; q is 0 elsewhere, still a proper distribution;
4. fit     the student minimises, on answer positions,  -sum_y p_K(y | x_<=t) log q(y | x_<=t)  over its
           vocabulary (Hinton et al. 2015, arXiv 1503.02531): speculative sampling accepts with probability
           sum_y min(p, q)(y) (Leviathan et al. 2023), which grows as q covers the mass of p.

Every stage writes its results into a work directory, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm import tqdm

from specref import autoregressive, cpu
from specref.formats.default_model import file_digest
from specref.formats.files import atomic_file
from specref.formats.hf import WEIGHT_FILES, load_model, load_tokenizer
from specref.formats.prompts import check_disjoint, encode, load_prompts, read_prompts
from specref.logits import SamplingParams
from specref.model import Llama

TEMPERATURES = (0.0, 0.7, 1.0)
TEXT_BATCH = 40  # answers the target writes at once, as for the shipped weights


def answer_temperature(s: int) -> float:
    """The temperature of a prompt's answer s: greedy once (a second greedy answer would repeat the first), then
    the sampled temperatures in turn."""
    return TEMPERATURES[1 + (s - 1) % (len(TEMPERATURES) - 1)] if s else TEMPERATURES[0]


def stage_data(target: Llama, prompts: list[list[int]], work: Path, samples: int, max_new_tokens: int,
               chunk: int, seed: int) -> list[Path]:
    files = []
    jobs = [(s, i) for s in range(samples) for i in range(0, len(prompts), chunk)]
    for s, i in tqdm(jobs, desc="target writes text", unit="batch"):
        f = work / f"data_{s}_{i:04d}.safetensors"
        files.append(f)
        if f.exists():
            continue
        batch = prompts[i : i + chunk]
        out = autoregressive.generate_batch(target, batch, max_new_tokens=max_new_tokens,
                                            params=SamplingParams(answer_temperature(s)),
                                            seed=seed + 1000 * s + i, eos_token_ids=target.config.eos_token_id)
        rows = [p + t for p, t in zip(batch, out.token_ids, strict=True)]
        tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.int32)
        for r, row in enumerate(rows):
            tokens[r, : len(row)] = torch.tensor(row)
        save({"tokens": tokens, "lengths": torch.tensor([len(r) for r in rows]),
              "prompt_lens": torch.tensor([len(p) for p in batch])}, f)
    return files


def save(tensors: dict[str, Tensor], path: Path) -> None:
    """A work file, written atomically: an interrupted stage leaves no truncated file for the resume to trip on."""
    with atomic_file(path) as tmp:
        save_file(tensors, tmp)


def load(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f"work file {path} is corrupt or truncated ({e}); delete it to rebuild it") from None


def feature_tag(feature_layers: tuple[int, ...] | None) -> str | None:
    """File tag of a feature kind: None (no features), "final" (normed last hidden) or the tapped layers."""
    if feature_layers is None:
        return None
    return "final" if not feature_layers else "layers" + "-".join(map(str, feature_layers))


@torch.inference_mode()
def stage_labels(target: Llama, files: list[Path], top_k: int, micro: int,
                 feature_layers: tuple[int, ...] | None = None) -> list[Path]:
    """Top-K target labels for every data file, plus features (fp16) when `feature_layers` is given: () for
    the final normed hidden state (EAGLE-1), layer indices for their inputs concatenated (EAGLE-3)."""
    tag = feature_tag(feature_layers)
    out = []
    for f in tqdm(files, desc="target labels it", unit="batch"):
        g = f.with_name(f.name.replace("data_", "labels_"))
        h = f.with_name(f.name.replace("data_", f"features-{tag}_"))
        out.append(g)
        if g.exists() and (tag is None or h.exists()):
            continue
        tokens = load(f)["tokens"].long()
        ids, logp, feats = [], [], []
        for i in range(0, len(tokens), micro):
            x = tokens[i : i + micro].to(target.device)
            o = target(x, torch.arange(x.shape[1], device=x.device).expand_as(x), layer_inputs=feature_layers or ())
            top = o.logits.float().log_softmax(-1).topk(top_k, dim=-1)
            ids.append(top.indices.int().cpu())
            logp.append(top.values.half().cpu())
            if tag is not None:
                feats.append((torch.cat(o.layer_inputs, -1) if feature_layers else o.hidden).half().cpu())
        save({"ids": torch.cat(ids), "logp": torch.cat(logp)}, g)
        if tag is not None:
            save({"features": torch.cat(feats)}, h)
    return out


def draft_vocabulary(files: list[Path], size: int, vocab: int, eos: tuple[int, ...]) -> tuple[Tensor, float]:
    """The `size` most frequent token ids of the text (EOS always in), ascending, and the share of token
    occurrences they cover."""
    counts = np.zeros(vocab, dtype=np.int64)
    for f in files:
        data = load(f)
        valid = torch.arange(data["tokens"].shape[1]) < data["lengths"][:, None]
        counts += np.bincount(data["tokens"][valid].numpy(), minlength=vocab)
    ranked = counts.copy()
    ranked[list(eos)] = counts.max() + 1
    keep = np.sort(np.argsort(-ranked, kind="stable")[:size])
    return torch.from_numpy(keep), float(counts[keep].sum() / counts.sum())


def load_examples(files: list[Path], labels: list[Path], feature_layers: tuple[int, ...] | None = None) -> list:
    """One (tokens, label ids, label log-probs, first answer position[, features]) tuple per sequence."""
    tag, data = feature_tag(feature_layers), []
    for f, g in zip(files, labels, strict=True):
        d, lab = load(f), load(g)
        feats = load(g.with_name(g.name.replace("labels_", f"features-{tag}_")))["features"] if tag else None
        for r in range(len(d["tokens"])):
            n, start = int(d["lengths"][r]), int(d["prompt_lens"][r]) - 1  # first position predicting an answer
            row = (d["tokens"][r, :n].long(), lab["ids"][r, :n], lab["logp"][r, :n], start)
            data.append(row if feats is None else (*row, feats[r, :n]))
    return data


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


def pad(rows: list[Tensor], fill: float = 0.0, width: int | None = None) -> Tensor:
    """Stack sequences of different lengths (dim 0), padding at the end with `fill` (to `width` if given)."""
    width = max(width or 0, max(len(r) for r in rows))
    out = rows[0].new_full((len(rows), width, *rows[0].shape[1:]), fill)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return out


def distill_loss(logits: Tensor, ids: Tensor, logp: Tensor, valid: Tensor, t2d: Tensor) -> Tensor:
    """Cross-entropy of student logits over the draft vocabulary (B, T, Vd) against the target's top-K
    distribution (ids, logp: (B, T, K)) renormalised on that vocabulary, averaged over `valid` (B, T)."""
    logq = F.log_softmax(logits.float(), dim=-1)
    idx = t2d[ids.long()]  # draft index of each label token, or -1
    p = logp.float().exp() * (idx >= 0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-9)
    ce = -(p * logq.gather(-1, idx.clamp_min(0))).sum(-1)
    return (ce * valid).sum() / valid.sum().clamp_min(1)


def hold_out(data: list[tuple], files: list[Path], val_prompts: int) -> tuple[list[tuple], list[tuple]]:
    """(training, validation) sequences of `load_examples(files, ...)`: every answer to the last `val_prompts`
    training prompts is held out of training, so the validation loss is measured on text the student never saw
    another sample of (only the choice of the draft vocabulary counted its tokens). The held-out prompts of the
    final evaluation stay untouched either way."""
    if not val_prompts:
        return data, []
    # data_{s}_{i}.safetensors holds the answers to prompts i, i + 1, ... in row order (`stage_data`)
    owner = [int(f.stem.rsplit("_", 1)[1]) + r for f in files for r in range(len(load(f)["lengths"]))]
    first = max(owner) + 1 - val_prompts
    train = [p < first for p in owner]
    return ([d for d, t in zip(data, train, strict=True) if t], [d for d, t in zip(data, train, strict=True) if not t])


def bf16_products(requested: bool, device: torch.device | str = "cpu") -> bool:
    """Whether training computes its matrix products in bfloat16: as requested, except where the device has no
    fast bf16 path. On a CPU without oneDNN's, PyTorch's fallback is far slower than fp32 (AVX2 Zen 3: a
    head-sized forward and backward, 4,096 x 1,728 -> 576 -> 8,192, took 62 s in bf16 against 2.0 s in fp32), so
    the run stays fp32 and says so; its result and training state record fp32."""
    device = torch.device(device)
    if not requested:
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        print(f"note: {device} has no bfloat16 units: training in fp32", file=sys.stderr)
        return False
    if device.type == "cpu" and not cpu.onednn_bf16():
        print("note: this CPU has no bfloat16 matrix path (oneDNN needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT), "
              "where bf16 products run ~30x slower than fp32: training in fp32", file=sys.stderr)
        return False
    return True


def fit(model: nn.Module, data: list[tuple], loss_of: Callable[[list[tuple]], Tensor], *, lr: float, epochs: int,
        batch_tokens: int, seed: int, state_file: Path, settings: dict[str, Any], desc: str,
        bf16: bool = False, val: list[tuple] | None = None, weight_decay: float = 0.0,
        device: torch.device | str = "cpu") -> tuple[list[float], int, list[float]]:
    """AdamW with warm-up and cosine decay over `epochs` shuffled passes; checkpoints every 100 steps into
    `state_file` and resumes from it (refusing one written with other `settings`). With `val`, the loss on those
    sequences after every epoch (the mean of its batches' losses) says whether more epochs would still pay.
    Returns (every step's training loss, steps, validation losses); both lists survive a resume (the training
    losses from the first state that kept them).

    `bf16` computes the forward's matrix products in bfloat16 (autocast; weights, optimiser and loss stay fp32):
    on the 2-thread Xeon VM with AMX a head's 4,096-token step took 2.2 s instead of 3.7 s.
    `weight_decay`: AdamW's decoupled decay (Loshchilov & Hutter 2019), on matrices only (not norms or biases).
    `device`: where `model` lives; each batch's rows go there, and `loss_of` runs with it as the default device
    of new tensors (a state saved on one device resumes on another).
    The validation loss is computed with `model.eval()`, so that `loss_of` can tell it from a training step; the
    state keeps torch's CPU random generator, so that noise `loss_of` draws from it resumes where it stopped."""
    device = torch.device(device)
    settings = {**settings, "bf16": True} if bf16 else settings  # fp32 runs resume as they always did
    settings = {**settings, "weight_decay": weight_decay} if weight_decay else settings  # likewise
    params = [p for p in model.parameters() if p.requires_grad]
    # one parameter group without decay, as before the option: a saved optimizer state must match its groups
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}] if weight_decay else params
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    flat = [g for _ in range(epochs) for g in batches(data, batch_tokens, rng)]
    per_epoch = len(flat) // epochs  # `batches` makes the same number of groups every pass
    val_groups = batches(val, batch_tokens, np.random.default_rng(0)) if val else []
    step, val_losses = 0, []
    losses: list[float] = []
    if state_file.exists():
        try:
            state = torch.load(state_file, weights_only=True, map_location="cpu")
        except Exception as e:
            raise ValueError(f"{state_file} is corrupt ({e}); delete it to train from the start") from None
        if state.get("settings") != settings:
            raise ValueError(f"{state_file} was written with other settings ({state.get('settings')}); "
                             "delete it or use another --work-dir")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if "rng" in state:  # training-time noise (`train-eagle --feature-noise`) goes on as if never stopped
            torch.set_rng_state(state["rng"])
        step, val_losses = int(state["step"]), list(state.get("val_losses", []))
        losses = list(state.get("losses", []))  # a state written before specref kept them: only the steps after it
    with tqdm(total=len(flat), initial=step, desc=desc, unit="step") as bar, warnings.catch_warnings():
        # under autocast a norm gets bfloat16 inputs and fp32 weights; PyTorch warns that it skips its fused kernel
        warnings.filterwarnings("ignore", "Mismatch dtype between input and weight")
        while step < len(flat):
            for g in opt.param_groups:  # cosine decay after a short warm-up
                g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / len(flat)))
            with torch.device(device), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_of(on(device, [data[i] for i in flat[step]]))
            if not torch.isfinite(loss):  # stop before a NaN reaches the weights or the checkpoint
                raise ValueError(f"training diverged: loss {loss.item()} at step {step + 1} of {len(flat)} with "
                                 f"learning rate {opt.param_groups[0]['lr']:.3g} (--lr {lr}); lower --lr (and delete "
                                 f"{state_file.name}, which records the settings it was trained with)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            if val_groups and step % per_epoch == 0:
                training = model.training
                model.eval()  # `loss_of` adds training-time noise only in training mode
                with torch.no_grad(), torch.device(device), torch.autocast(device.type, dtype=torch.bfloat16,
                                                                           enabled=bf16):
                    val_losses.append(float(np.mean([loss_of(on(device, [val[i] for i in g])).item()
                                                     for g in val_groups])))
                model.train(training)
                # stderr, with the progress bar: stdout is the command's JSON result
                bar.write(f"epoch {step // per_epoch}: validation loss {val_losses[-1]:.4f}", file=sys.stderr)
            if step % 100 == 0 or step == len(flat):
                with atomic_file(state_file) as tmp:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                                "settings": settings, "losses": losses, "val_losses": val_losses,
                                "rng": torch.get_rng_state()}, tmp)
    return losses, len(flat), val_losses


def on(device: torch.device, rows: list[tuple]) -> list[tuple]:
    """A batch's rows (from `load_examples`) with their tensors on `device`."""
    return [tuple(x.to(device) if isinstance(x, Tensor) else x for x in row) for row in rows]


def check_output(out: str | Path) -> None:
    """Refuse an existing output at the start, not after hours of data, labels and training."""
    if Path(out).exists():
        raise FileExistsError(f"{out} already exists; choose a new output directory")


def target_to_draft(vocab_ids: Tensor, vocab_size: int) -> Tensor:
    """The draft index of every target token id, -1 for tokens outside the draft vocabulary `vocab_ids`."""
    t2d = torch.full((vocab_size,), -1, dtype=torch.long)
    t2d[vocab_ids] = torch.arange(len(vocab_ids))
    return t2d


def prepare(target_dir: Path, work: Path, *, samples: int, max_new_tokens: int, top_k: int, seed: int,
            train_prompts: int | None, eval_prompts: int, feature_layers: tuple[int, ...] | None = None,
            val_prompts: int | None = 0, device: torch.device | str = "cpu", prompts_file: str | None = None,
            text_batch: int = TEXT_BATCH) -> dict:
    """Stages 1-2 of distillation with a copy of the target on `device` (packed on a CPU: faster), plus the prompt
    sets and the number of validation prompts (`val_prompts`; None: a twentieth of the training prompts).
    The training prompts are the package's, or those of `prompts_file` (JSON lines, as `write-prompts` writes);
    the target answers `text_batch` of them at a time."""
    tok = load_tokenizer(target_dir)
    texts = load_prompts("train") if prompts_file is None else read_prompts(prompts_file)
    where = "the package's training prompts" if prompts_file is None else f"--prompts {prompts_file}"
    if train_prompts is not None and not 1 <= train_prompts <= len(texts):
        raise ValueError(f"--train-prompts must lie in [1, {len(texts)}] ({where}), got {train_prompts}")
    check_disjoint(texts[:train_prompts], load_prompts("heldout"), where)
    prompts = [encode(tok, p) for p in texts[:train_prompts]]
    val_prompts = len(prompts) // 20 if val_prompts is None else val_prompts
    if not 0 <= val_prompts < len(prompts):  # before hours of data and labels, not after
        raise ValueError(f"--val-prompts must lie in [0, {len(prompts)}) (the training prompts), got {val_prompts}")
    # More answers than temperatures: record their schedule, so that a work dir an older specref filled (with a
    # second greedy answer) is refused rather than reused; fewer keep the fingerprint they always had.
    extra = ({"answer_temperatures": [answer_temperature(s) for s in range(samples)]}
             if samples > len(TEMPERATURES) else {})
    # Another batch size seeds and batches the sampled answers otherwise: other text, so another work dir (and
    # the default keeps the fingerprint work dirs always had).
    if text_batch != TEXT_BATCH:
        extra["text_batch"] = text_batch
    claim(work, target_dir, prompts, samples=samples, max_new_tokens=max_new_tokens, top_k=top_k, seed=seed,
          **extra)
    target = load_model(target_dir, device=device)
    cpu.pack_linears(target)  # a no-op off the CPU
    files = stage_data(target, prompts, work, samples, max_new_tokens, chunk=text_batch, seed=seed)
    labels = stage_labels(target, files, min(top_k, target.config.vocab_size), micro=4,
                          feature_layers=feature_layers)
    heldout = [encode(tok, p) for p in load_prompts("heldout")[:eval_prompts]]
    return {"target": target, "files": files, "labels": labels, "heldout": heldout, "val_prompts": val_prompts}


def claim(work: Path, target_dir: Path, prompts: list[list[int]], **settings: Any) -> None:
    """Use `work` for this target, these prompts and these data settings only: its first use records them
    (`fingerprint.json`), and a later run that differs in any of them is refused, naming what differs, instead
    of silently training on data made otherwise."""
    files = sorted(f for f in Path(target_dir).iterdir() if f.name in ("config.json", *WEIGHT_FILES)
                   or f.name.endswith(".safetensors"))
    fingerprint = {"target": {f.name: file_digest(f, "crc32") for f in files},
                   "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(), **settings}
    record = work / "fingerprint.json"
    if record.is_file():
        try:
            made = json.loads(record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{record} is corrupt ({e}); delete the work dir or use another --work-dir") from None
        # Both ways: a setting recorded only when it is not the default may be missing from either side.
        changed = [k for k in {**made, **fingerprint} if made.get(k) != fingerprint.get(k)]
        if changed:
            def shown(record: dict, k: str) -> str:
                return repr(record[k]) if k in record else "unset"

            was = ", ".join(f"{k} {shown(made, k)} (now {shown(fingerprint, k)})" if k not in ("target", "prompts")
                            else k for k in changed)
            raise ValueError(f"work dir {work} holds data made with another {was}; delete it or use another "
                             "--work-dir")
        return
    if work.is_dir() and any(work.glob("data_*")):
        raise ValueError(f"work dir {work} holds data without a fingerprint.json (an older specref made it); "
                         "delete it or use another --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    with atomic_file(record) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2) + "\n")
