# EAGLE with the shipped head in float32 and in bfloat16 (`--head-dtype bfloat16`), on the default tree of
# each temperature, the two heads taking turns in one process so that a machine whose speed drifts slows both
# alike: 4 held-out prompts x 128 tokens, 4 turns. Usage: python benchmarks/scripts/head_dtype_interleaved.py OUT.json
import json
import statistics
import sys

import torch

from specref.cpu import pack_linears, should_pack
from specref.eagle_decode import generate
from specref.formats.default_model import default_head_dir, default_target_dir
from specref.formats.eagle import load_head
from specref.formats.hf import load_model, load_tokenizer
from specref.formats.prompts import encode, load_prompts
from specref.logits import SamplingParams
from specref.tree import device_tree

if len(sys.argv) != 2:
    sys.exit("usage: python benchmarks/scripts/head_dtype_interleaved.py OUT.json")
target = load_model(default_target_dir())
pack = should_pack()
heads = {str(d).removeprefix("torch."): load_head(default_head_dir(), target, d)
         for d in (torch.float32, torch.bfloat16)}
if pack:
    for model in (target, *heads.values()):
        pack_linears(model)
inputs = [encode(load_tokenizer(default_target_dir()), text) for text in load_prompts("heldout")[:4]]
for head in heads.values():  # warm-up, untimed: the first turn would pay for allocations and oneDNN's set-up
    generate(target, head, inputs[0], tree=device_tree("cpu", SamplingParams(0.0), packed=pack), max_new_tokens=16)
results = {}
for temperature in (0.0, 1.0):
    params = SamplingParams(temperature)
    tree = device_tree("cpu", params, packed=pack)
    runs = {name: {"tokens_per_s": [], "tau": []} for name in heads}
    for _ in range(4):
        for name, head in heads.items():
            seconds = tokens = 0.0
            taus = []
            for i, ids in enumerate(inputs):
                out = generate(target, head, ids, tree=tree, max_new_tokens=128, params=params, seed=i,
                               eos_token_ids=target.config.eos_token_id)
                seconds, tokens = seconds + out.stats.wall_time, tokens + out.stats.new_tokens
                taus.append(out.stats.tau)
            runs[name]["tokens_per_s"].append(tokens / seconds)
            runs[name]["tau"].append(statistics.mean(taus))
    for name, r in runs.items():
        r["median_tokens_per_s"] = statistics.median(r["tokens_per_s"])
        print(f"T = {temperature}: {name} head {r['median_tokens_per_s']:.1f} tok/s (turns "
              f"{', '.join(f'{x:.1f}' for x in r['tokens_per_s'])}), tau {statistics.mean(r['tau']):.3f}")
    results[str(temperature)] = runs
with open(sys.argv[1], "w") as f:
    json.dump(results, f, indent=2)
