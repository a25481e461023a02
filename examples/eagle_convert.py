"""EAGLE on the default target, and the same head converted to the speculators layout (what vLLM serves) and
read back: the converted head drafts the same trees, so greedy decoding gives the same tokens, the same tau,
and both equal greedy autoregressive decoding. Writes eagle_acceptance.png: how often each tree depth is
accepted, for a dynamic (EAGLE-2) and a static (EAGLE-1) tree.

Run: python examples/eagle_convert.py        (SPECREF_QUICK=1: fewer tokens; the CLI twin of the conversion is
`python -m specref convert --source DIR --output OUT`)
"""

import json
import os
import tempfile
from pathlib import Path

from specref import SamplingParams, generate_ar, load_model, load_tokenizer
from specref.api.speculator import Speculator
from specref.eagle_decode import generate
from specref.formats.default_model import default_head_dir, default_target_dir
from specref.formats.eagle import load_head
from specref.formats.prompts import encode
from specref.tools.plots import new_figure, plot_acceptance, save_figure
from specref.tree import DEVICE_TREES, TreeSpec

fig = new_figure(figsize=(7, 4))  # first: without matplotlib, say how to install it before any work
tokens = 24 if os.environ.get("SPECREF_QUICK") else 64
target = load_model(default_target_dir())
tokenizer = load_tokenizer(default_target_dir())
prompt = encode(tokenizer, "Give three tips for staying focused while studying.")
greedy = SamplingParams(0.0)
ar = generate_ar(target, prompt, max_new_tokens=tokens, params=greedy).token_ids[0]

head = load_head(default_head_dir(), target)  # the shipped EAGLE-3 head, specref's own layout
with tempfile.TemporaryDirectory() as tmp:
    out = Speculator.from_pretrained(default_head_dir(), verifier=target).save_pretrained(Path(tmp) / "speculator")
    config = json.loads((out / "config.json").read_text())
    print(f"converted to {out.name}/: {sorted(p.name for p in out.iterdir())}, speculators_model_type "
          f"{config['speculators_model_type']!r}, {config['speculators_config']['proposal_methods'][0]}")
    converted = Speculator.from_pretrained(out, verifier=target).head_for(target)

rows = []
trees = {"dynamic 6/3/4 (the packed CPU's default at T = 0)": DEVICE_TREES["cpu"],
         "static (EAGLE-1's 25 paths)": TreeSpec("static")}
for name, tree in trees.items():
    taus = []
    for which, h in (("shipped", head), ("converted", converted)):
        g = generate(target, h, prompt, tree=tree, max_new_tokens=tokens, params=greedy)
        assert g.token_ids[0] == ar, f"{which} head, {name}: greedy EAGLE must equal greedy AR"
        taus.append(g.stats.tau)
        print(f"{name:32s} {which:9s} head: tau {g.stats.tau:.2f}, alpha {g.stats.alpha:.2f} per depth, "
              f"identical to greedy AR")
    assert taus[0] == taus[1], "the converted head must draft the same trees"
    rows.append({"method": f"EAGLE, {name}", "alpha": g.stats.alpha,
                 "position_acceptance": g.stats.position_acceptance})
print("answer:", tokenizer.decode(ar, skip_special_tokens=True))

ax = fig.subplots()
plot_acceptance(ax, rows)
ax.set_title("EAGLE on the default pair: how often each depth of the tree is accepted")
print("wrote", save_figure(fig, "eagle_acceptance.png"))
