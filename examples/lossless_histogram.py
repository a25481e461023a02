"""Speculative sampling draws from the target's distribution: the histogram of the first two new tokens from SpS
with a poor draft matches plain sampling's and the exact law (every continuation enumerated), and the
conformance kit's G-test says so with a stated power. Writes lossless_histogram.png.

Run: python examples/lossless_histogram.py        (SPECREF_QUICK=1: 5,000 samples instead of 50,000)
"""

import os
from collections import Counter

import numpy as np
import torch

from specref import ModelConfig, SamplingParams, generate_ar, generate_sps, random_model
from specref.conformance import check_sampler, exact_law
from specref.tools.plots import new_figure, save_figure

fig = new_figure(figsize=(10, 3.8))  # first: without matplotlib, say how to install it before any work
cfg = ModelConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8)
target = random_model(cfg, seed=0, scale=3.0, dtype=torch.float64)
draft = random_model(cfg, seed=1, scale=3.0, dtype=torch.float64)  # unrelated: a poor draft on purpose
params, n = SamplingParams(temperature=0.8), 5_000 if os.environ.get("SPECREF_QUICK") else 50_000
law = exact_law(target, [0], 2, params)  # P(x1, x2) = p(x1 | 0) p(x2 | 0, x1), the target's own law

ar = Counter(tuple(s) for s in generate_ar(target, [0], max_new_tokens=2, params=params, seed=0,
                                           num_samples=n).token_ids)
sps = generate_sps(target, draft, [0], gamma=3, max_new_tokens=2, params=params, seed=1, num_samples=n)
spec = Counter(tuple(s) for s in sps.token_ids)
print(f"draft acceptance alpha = {sps.stats.alpha:.3f} (a poor draft), yet the histograms agree:")
pairs = sorted(law)
print(" pair    exact   AR      SpS")
for pair in pairs:
    print(f" {pair}  {law[pair]:.4f}  {ar[pair] / n:.4f}  {spec[pair] / n:.4f}")
report = check_sampler(lambda prompt, k, seed: sps.token_ids[:k], target, [0], 2, params, n=n, law=law,
                       name="SpS, poor draft")
print(report.summary())
assert report.passed, "SpS must sample the target's law"

ax = fig.subplots()
x = np.arange(len(pairs))
ax.bar(x - 0.27, [law[s] for s in pairs], 0.27, color="#555", label="exact law of the target")
ax.bar(x, [ar[s] / n for s in pairs], 0.27, color="#8ac", label=f"plain sampling, {n:,} samples")
ax.bar(x + 0.27, [spec[s] / n for s in pairs], 0.27, color="#2a2",
       label=f"SpS with a poor draft (α = {sps.stats.alpha:.2f}), {n:,} samples")
ax.set(xticks=x, xticklabels=[f"{a}{b}" for a, b in pairs], xlabel="first two new tokens",
       ylabel="probability",
       title=f"SpS against the exact law: G-test p = {report.p_value:.2g} at level {report.alpha:g}, {report.verdict}")
ax.legend(fontsize=8)
print("wrote", save_figure(fig, "lossless_histogram.png"))
