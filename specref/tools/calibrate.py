"""`python -m specref calibrate`: measure which draft tree decodes fastest on this device.

A round of EAGLE decoding costs about  depth * head(top_k) + target(total_tokens) + overhead  and emits tau
tokens, so the best tree trades acceptance (tau grows with the tree) against the cost of scoring it. On a GPU
target(n) is flat up to tens of tokens; on a CPU it grows with n, and every expansion level runs the head's
output layer over top_k rows. This measures the cost curves, then tokens/s and tau for a grid of dynamic trees
(total_tokens, depth, top_k) on held-out prompts, and prints the best setting (for `specref/tree.py::DEVICE_TREES`,
whose "cpu-unpacked" entry serves unpacked products).
At T > 0 the grid also holds small static trees whose children are sampled from the head's law
(`SAMPLED_GRID`, for `specref/tree.py::SAMPLING_TREES`): their children are accepted with probability
sum min(p, q) instead of p(x), which pays when the laws are flat.
"""

from __future__ import annotations

import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from specref import autoregressive, eagle_decode
from specref.cpu import pack_linears, should_pack
from specref.eagle import EagleHead
from specref.formats.default_model import default_head_dir, default_target_dir
from specref.formats.eagle import load_head
from specref.formats.hf import load_model, load_tokenizer
from specref.formats.prompts import encode, load_prompts
from specref.logits import SamplingParams
from specref.model import Llama
from specref.tools.timing import median_seconds, step_time
from specref.tree import FORK_CHOICES, SMALL_CHOICES, TreeSpec

GRID = {"total_tokens": (6, 10, 16, 24, 32), "depth": (3, 4, 6), "top_k": (2, 4, 8)}
# Trees of 2-3 drafted nodes, for targets whose forward cost grows past 3 rows (PyTorch's default CPU product:
# `specref/tree.py::DEVICE_TREES`'s "cpu-unpacked"); no deeper than they have nodes.
SMALL_GRID = {"total_tokens": (3, 4), "depth": (2, 3), "top_k": (2, 4)}
AR_EVERY = 4  # trees between two AR runs (see `calibrate`)
# Static trees with sampled children, tried at T > 0: chains, and chains with a second (and third) draw at the
# root and at depth 1. Sampled children must be the first draws, so every node's children have ranks 0..m-1.
SAMPLED_GRID = {
    "chain1": [[0]], "chain2": [[0], [0, 0]], "chain3": [[0], [0, 0], [0, 0, 0]],
    "chain4": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]], "fork3": [[0], [1], [0, 0]],
    "fork4": [[0], [1], [0, 0], [0, 0, 0]], "fork": FORK_CHOICES, "small": SMALL_CHOICES,
}


def packing_ms(dense: Llama, spare: Llama, rounds: int = 3) -> dict[str, dict[int, float]]:
    """Target forward ms for 1 and 6 new tokens with PyTorch's default CPU products (`dense`) and with
    oneDNN-packed weights (`spare`, a second copy, packed here), the two taking turns `rounds` times (medians),
    so that a machine's drift slows both alike. Which wins depends on the machine: packed weights were ~1.8x
    faster on the 2-core AMD EPYC and 1.5x slower at one token on the 2-thread Intel Xeon VM (`--nopack`)."""
    pack_linears(spare)
    runs: dict[str, dict[int, list[float]]] = {"default": {1: [], 6: []}, "packed": {1: [], 6: []}}
    for _ in range(rounds):
        for name, model in (("default", dense), ("packed", spare)):
            for n, times in runs[name].items():
                times.append(step_time(model, dense.device, n) * 1e3)
    return {name: {n: statistics.median(t) for n, t in by_n.items()} for name, by_n in runs.items()}


@torch.inference_mode()
def head_step_time(head: EagleHead, device: torch.device, tokens: int) -> float:
    """Median seconds of one tree-expansion step of the head over `tokens` frontier nodes, logits included (in
    the head's own vocabulary, as `tree.grow_dynamic` ranks children)."""
    cache = head.new_cache(1, 256)
    width = head.config.hidden if head.config.kind == "eagle" else 3 * head.target.config.hidden_size
    feats = torch.zeros(1, 128, width, dtype=head.dtype, device=device)
    positions = torch.arange(128, device=device)[None]
    head(positions % head.config.layer.vocab_size, feats, positions, cache, return_logits=False)  # any tokens
    ids = torch.full((1, tokens), 1, device=device)
    g = torch.zeros(1, tokens, head.config.hidden, dtype=head.dtype, device=device)
    pos = torch.full((1, tokens), 128, device=device)
    mask = torch.eye(tokens, dtype=torch.bool, device=device)[None]
    return median_seconds(lambda: head(ids, g, pos, cache, mask, draft_vocab=True),
                          lambda: cache.keep(torch.tensor([128])), device)


def calibrate(out: str | None = None, *, prompts: int = 3, max_new_tokens: int = 64, device: str = "cpu",
              pack: bool | None = None, temperature: float = 0.0, seed: int = 0) -> dict[str, Any]:
    dev, params = torch.device(device), SamplingParams(temperature)
    pack = should_pack(pack)
    target_dir = default_target_dir()
    tok = load_tokenizer(target_dir)
    inputs = [encode(tok, t) for t in load_prompts("heldout")[-prompts:]]  # not the prompts the bench reports
    target = load_model(target_dir, device=dev)
    head = load_head(default_head_dir(), target)
    packing = packing_ms(target, load_model(target_dir, device=dev)) if dev.type == "cpu" else None
    if packing:
        faster = "packed (--pack)" if packing["packed"][1] < packing["default"][1] else "default (--nopack)"
        print("target forward ms, PyTorch's default products vs oneDNN-packed weights: " + ", ".join(
            f"{n} tokens {packing['default'][n]:.1f} vs {packing['packed'][n]:.1f}" for n in (1, 6))
            + f"; one token is faster {faster} here")
    if pack:
        pack_linears(target)
        pack_linears(head)
    target_ms = {n: step_time(target, dev, n) * 1e3 for n in (1, 2, 3, 4, 6, 8, 16, 24, 32, 48, 64)}
    head_ms = {n: head_step_time(head, dev, n) * 1e3 for n in (1, 2, 4, 8)}
    print("target forward ms by new tokens: " + ", ".join(f"{n}: {t:.1f}" for n, t in target_ms.items()))
    print("head step ms by frontier nodes:  " + ", ".join(f"{n}: {t:.1f}" for n, t in head_ms.items()))

    def run(tree: TreeSpec | None) -> tuple[float, float]:
        tokens, seconds, rounds = 0, 0.0, 0
        for i, ids in enumerate(inputs):  # the same seeds for every tree: at T > 0 the texts differ all the same
            kw = {"max_new_tokens": max_new_tokens, "params": params, "seed": seed + i,
                  "eos_token_ids": [tok.eos_token_id]}
            g = (autoregressive.generate(target, ids, **kw) if tree is None
                 else eagle_decode.generate(target, head, ids, tree=tree, **kw))
            tokens, seconds, rounds = tokens + g.stats.new_tokens, seconds + g.stats.wall_time, rounds + g.stats.rounds
        return tokens / seconds, tokens / rounds

    run(TreeSpec(total_tokens=4, depth=2, top_k=2))  # warm-up
    sizes = [(t, d, k) for t, d, k in itertools.product(*SMALL_GRID.values()) if d <= t - 1]
    sizes += [(t, d, k) for t, d, k in itertools.product(*GRID.values()) if t - 1 <= k + d * k * k]  # fillable
    grid = {f"dynamic {t}/{d}/{k}": TreeSpec(total_tokens=t, depth=d, top_k=k) for t, d, k in sizes}
    if not params.greedy:
        grid |= {f"sampled {name}": TreeSpec("static", choices, children="sampled")
                 for name, choices in SAMPLED_GRID.items()}
    # A shared machine's speed can drift 2-3x over the minutes a grid takes, so AR runs again after every
    # AR_EVERY trees and each tree's speed-up is taken against the mean of the AR runs on either side of it.
    ar_runs, rows, block = [run(None)[0]], [], []
    for j, (name, tree) in enumerate(tqdm(grid.items(), desc="trees", unit="tree")):
        tps, tau = run(tree)
        block.append({"tree": name, "tokens_per_s": tps, "tau": tau}
                     | ({"total_tokens": tree.total_tokens, "depth": tree.depth, "top_k": tree.top_k}
                        if tree.kind == "dynamic" else {"choices": tree.choices}))
        if len(block) == AR_EVERY or j == len(grid) - 1:
            ar_runs.append(run(None)[0])
            rows += [r | {"speedup_vs_ar": r["tokens_per_s"] * 2 / (ar_runs[-2] + ar_runs[-1])} for r in block]
            block = []
    ar = statistics.median(ar_runs)
    rows.sort(key=lambda r: -r["speedup_vs_ar"])
    print(f"specref AR at T = {temperature:g}: {ar:.1f} tok/s (median; from {min(ar_runs):.1f} to {max(ar_runs):.1f})")
    print(f"{'tree':>20s} {'tok/s':>7s} {'vs AR':>6s} {'tau':>5s}")
    for r in rows[:10]:
        print(f"{r['tree']:>20s} {r['tokens_per_s']:7.1f} {r['speedup_vs_ar']:6.2f} {r['tau']:5.2f}")
    best = rows[0]
    print(f"best on {dev.type} at T = {temperature:g}: " + (
        f"TreeSpec(total_tokens={best['total_tokens']}, depth={best['depth']}, top_k={best['top_k']})"
        if "choices" not in best else f"TreeSpec('static', {best['choices']}, children='sampled')"))
    result = {"device": dev.type, "temperature": temperature, "seed": seed, "ar_tokens_per_s": ar, "ar_runs": ar_runs,
              "target_forward_ms": target_ms, "head_step_ms": head_ms, "packing_ms": packing, "packed": pack,
              "prompts": prompts, "max_new_tokens": max_new_tokens, "rows": rows}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
