"""Train an EAGLE head for a target on text the target writes itself (`python -m specref train-eagle`).

The draft's pipeline (`distill.py`: target-written answers and the target's top-K labels), plus the target's
features at every position; a work dir is shared with `train-draft` when both use the same --samples. The head
learns the pair (f_j, x_{j+1}) -> the target's top-K law of x_{j+2} on answer positions (EAGLE, Li et al. 2024; the
token-level loss only, as EAGLE-3 uses), unrolled as it is used in a tree: step s reads x_{j+s} with the head's own
output from step s-1 in place of a target feature and predicts x_{j+s+1}, attending to the real-feature rows before
j and its own chain (EAGLE-3's training-time test). The loss of step s is weighted 0.8^(s-1). `feature_loss` w > 0
(EAGLE-1 heads) adds EAGLE-1's feature regression to each step: w times the smooth-L1 distance between the head's g
of step s and what it stands in for at step s + 1, the target's feature at j+s, so that deeper steps read inputs
like the first. An EAGLE-3 head has no fixed feature to regress: what g stands in for is the target's features fused
by the head's own fc, and fc met the regression by making neighbouring fused features alike rather than g predicting
the next (EAGLE-3 dropped the loss). The default is an EAGLE-3 head (arXiv 2503.01840) over the target's layers (2,
L//2, L-3) with a reduced output vocabulary: on a CPU every tree level runs the head's output layer over the whole
frontier, and the full 49,152-row head of SmolLM2 would cost a fifth of a target step each time. It is evaluated by
tau (tokens per target call) of greedy EAGLE decoding with the CPU's default tree on the held-out prompts, and saved
in bf16.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from specref import eagle_decode
from specref.eagle import KINDS, EagleHead, default_layer_ids, new_head_config
from specref.formats.eagle import save_head
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
from specref.tree import TreeSpec, device_tree

DECAY = 0.8  # weight of unroll step s is DECAY^(s-1): deeper guesses matter less, as in EAGLE-3


class UnrollCache:
    """The head's keys/values of earlier unroll steps, concatenated out of place so gradients flow through
    them (KVCache writes in place). A step's mask spans every row written so far."""

    def __init__(self, layers: int) -> None:
        self.k: list[Tensor | None] = [None] * layers
        self.v: list[Tensor | None] = [None] * layers

    def attention_mask(self, mask: Tensor) -> Tensor:
        return mask[:, None]

    def write(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], 2), torch.cat([self.v[layer], v], 2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def advance(self, q: int) -> None:
        pass


def with_noise(x: Tensor, amplitude: float) -> Tensor:
    """x + amplitude * rms(x) * u per position, u ~ U(-1, 1) per element: EAGLE-1's data augmentation (arXiv
    2401.15077 adds U(-0.1, 0.1) to the target's features in training), scaled to each position's size, since the
    target's layer inputs that an EAGLE-3 head fuses reach 1e4 in a few channels. Drawn on the CPU from torch's
    default generator (seeded by `new_head`; `fit` saves and restores it), so that a seed gives the same noise on
    every device and after a resume."""
    u = torch.rand(x.shape, device="cpu").to(x.device) * 2 - 1
    rms = x.detach().float().pow(2).mean(-1, keepdim=True).sqrt()  # a constant: sqrt's gradient at a padded 0 is inf
    return x + amplitude * rms * u


def new_head(target: Llama, kind: str, vocab_ids: Tensor, seed: int, layers: int = 1) -> EagleHead:
    """A fresh head: PyTorch's default init, its output rows (EAGLE-3) and norms copied from the target. It is
    made on the CPU whatever the target's device, so that a seed gives the same head everywhere."""
    torch.manual_seed(seed)
    head = EagleHead(new_head_config(target.config, kind, layers=layers, draft_vocab_size=len(vocab_ids)), target)
    if kind == "eagle3":
        with torch.no_grad():
            head.lm_head.weight.copy_(target.lm_head.weight[vocab_ids.to(target.device)])
            head.norm.load_state_dict(target.norm.state_dict())
            head.d2t.copy_(vocab_ids - torch.arange(len(vocab_ids)))
    return head


def train_eagle(out: str, *, target: str | None = None, work_dir: str | None = None, kind: str = "eagle3",
                vocab: int = 8192, samples: int = 2, max_new_tokens: int = 192, epochs: int = 14, lr: float = 2e-3,
                batch_tokens: int = 4096, top_k: int = 32, unroll: int = 3, seed: int = 0,
                train_prompts: int | None = None, eval_prompts: int = 60, eval_new_tokens: int = 128,
                tree: TreeSpec | None = None, bf16: bool = True, val_prompts: int | None = None,
                weight_decay: float = 0.0, feature_loss: float = 0.0, device: str = "cpu", layers: int = 1,
                prompts: str | None = None, text_batch: int = TEXT_BATCH, feature_noise: float = 0.0,
                freeze_output: bool = False) -> dict[str, Any]:
    from specref.formats.default_model import resolve_target
    from specref.formats.hf import load_model

    if kind not in KINDS:
        raise ValueError(f"--kind must be one of {KINDS}, got {kind!r}")
    if feature_loss and kind != "eagle":
        raise ValueError(f"--feature-loss regresses the target's feature, which only an EAGLE-1 head (--kind eagle) "
                         f"stands in for; an EAGLE-3 head's input is fused by its own trained fc (got --kind {kind})")
    if freeze_output and kind != "eagle3":
        raise ValueError("--freeze-output keeps an EAGLE-3 head's own output layer at the target's rows; an EAGLE-1 "
                         "head (--kind eagle) drafts with the target's output layer, which is never trained")
    check_output(out)
    device = torch.device(device)
    bf16 = bf16_products(bf16, device)
    started = time.time()
    target_dir = resolve_target(target)
    dense = load_model(target_dir, device=device)  # trained against (the packed copy in `prepare` lacks dense weights)
    taps = default_layer_ids(dense.config.num_hidden_layers) if kind == "eagle3" else ()  # the target layers it reads
    work = Path(work_dir or Path(out).with_name(Path(out).name + ".work"))
    run = prepare(target_dir, work, samples=samples, max_new_tokens=max_new_tokens, top_k=top_k, seed=seed,
                  train_prompts=train_prompts, eval_prompts=eval_prompts, feature_layers=taps,
                  val_prompts=val_prompts, device=device, prompts_file=prompts, text_batch=text_batch)
    v = dense.config.vocab_size
    vocab_ids, coverage = (draft_vocabulary(run["files"], vocab, v, dense.config.eos_token_id) if kind == "eagle3"
                           else (torch.arange(v), 1.0))
    head = new_head(dense, kind, vocab_ids, seed, layers).to(device)
    for p in dense.parameters():
        p.requires_grad_(False)
    if freeze_output:
        head.lm_head.weight.requires_grad_(False)  # the target's rows, as `new_head` copied them
    t2d = target_to_draft(vocab_ids, v).to(device)
    val_prompts = run["val_prompts"]
    data, val = hold_out(load_examples(run["files"], run["labels"], feature_layers=taps), run["files"], val_prompts)

    def loss_of(rows: list[tuple]) -> Tensor:
        # Anchor j holds the pair (f_j, x_{j+1}); unroll step s (1-based) there reads x_{j+s} with the head's
        # own g from step s-1 and predicts x_{j+s+1}, whose target law is the label at position j+s.
        t = max(len(r[0]) for r in rows) - 1
        tokens, ids = pad([r[0] for r in rows], width=t + unroll), pad([r[1] for r in rows], width=t + unroll)
        logp = pad([r[2] for r in rows], -30.0, width=t + unroll)
        hidden = pad([r[4][:-1].float() for r in rows])
        if feature_loss:  # the regression's targets: what a step reads at j had the target run there
            want = pad([r[4].float() for r in rows], width=t + unroll)
        if feature_noise and head.training:  # what steps 2.. replace with the head's own g: f, or fc(f) for EAGLE-3
            hidden = with_noise(head.fuse(hidden) if kind == "eagle3" else hidden, feature_noise)
        cache, causal = UnrollCache(head.config.layer.num_hidden_layers), torch.ones(t, t, dtype=torch.bool).tril()
        pos, total = torch.arange(t).expand(len(rows), t), torch.zeros(())
        for s in range(1, unroll + 1):
            mask = torch.cat([causal, *[torch.eye(t, dtype=torch.bool)] * (s - 1)], 1)[None]
            hidden, _ = head(tokens[:, s : s + t], hidden, pos + s - 1, cache, mask, return_logits=False)
            valid = torch.zeros(len(rows), t, dtype=torch.bool)
            for b, r in enumerate(rows):
                valid[b, max(r[3] - s, 0) : len(r[0]) - 1 - s] = True
            g = hidden[valid]  # the output layer, most of a step's work, only where there is a label
            logits = head.lm_head(head.norm(g)) if kind == "eagle3" else dense.lm_head(g)
            everywhere = torch.ones(1, len(g), dtype=torch.bool)
            loss = distill_loss(logits[None], ids[:, s : s + t][valid][None], logp[:, s : s + t][valid][None],
                                everywhere, t2d)
            if feature_loss:  # g of step s stands in for the feature at j+s
                loss = loss + feature_loss * F.smooth_l1_loss(g.float(), want[:, s : s + t][valid])
            total = total + DECAY ** (s - 1) * loss
        return total

    settings = {"kind": kind, "vocab": vocab, "unroll": unroll, "epochs": epochs, "lr": lr,
                "batch_tokens": batch_tokens, "top_k": top_k, "seed": seed, "sequences": len(data),
                **({"val_prompts": val_prompts} if val_prompts else {}),
                # states written before these options resume as before
                **({"feature_loss": feature_loss} if feature_loss else {}),
                **({"layers": layers} if layers != 1 else {}),
                **({"feature_noise": feature_noise} if feature_noise else {}),
                **({"freeze_output": True} if freeze_output else {})}
    losses, steps, val_losses = fit(head, data, loss_of, lr=lr, epochs=epochs, batch_tokens=batch_tokens, seed=seed,
                                    state_file=work / f"train_state_{kind}.pt", settings=settings,
                                    desc="head learns", bf16=bf16, val=val, weight_decay=weight_decay, device=device)

    tree = tree or device_tree("cpu")  # the packed CPU's tree (6/3/4), as every shipped head was evaluated
    print(f"evaluating on held-out prompts (greedy EAGLE, {tree.kind} tree)", file=sys.stderr)
    head.eval()
    gen = eagle_decode.generate_batch(dense, head, run["heldout"], tree=tree, max_new_tokens=eval_new_tokens,
                                      params=SamplingParams(0.0), eos_token_ids=dense.config.eos_token_id)
    result = {"tau": gen.stats.tau, "alpha_per_depth": gen.stats.alpha, "tree": tree.kind,
              "total_tokens": tree.total_tokens, "depth": tree.depth, "top_k": tree.top_k,
              "prompts": len(run["heldout"]), "new_tokens": gen.stats.new_tokens, "kind": kind,
              "vocab": len(vocab_ids), "vocab_coverage": coverage, "layer_ids": list(taps),
              "train_sequences": len(data), "steps": steps, "epochs": epochs, "lr": lr,
              "final_loss": float(np.mean(losses[-50:])) if losses else None,
              "seconds": round(time.time() - started, 1), "seed": seed, "bf16": bf16, "samples_per_prompt": samples,
              "val_prompts": val_prompts, "val_loss_per_epoch": val_losses, "weight_decay": weight_decay,
              "feature_loss": feature_loss, "device": str(device), "layers": layers, "prompts_file": prompts,
              "text_batch": text_batch, "feature_noise": feature_noise, "freeze_output": freeze_output}
    save_head(head, out, dtype=torch.bfloat16)
    (Path(out) / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

