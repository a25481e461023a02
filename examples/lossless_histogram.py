"""Speculative sampling draws from the target's distribution: compare first-token-pair histograms.

Run: python examples/lossless_histogram.py
"""

from collections import Counter

import torch

from specref import ModelConfig, SamplingParams, generate_ar, generate_sps, random_model

cfg = ModelConfig(vocab_size=4, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8)
target = random_model(cfg, seed=0, scale=3.0, dtype=torch.float64)
draft = random_model(cfg, seed=1, scale=3.0, dtype=torch.float64)  # unrelated: a poor draft on purpose
params, n = SamplingParams(temperature=0.8), 50_000

ar = Counter(tuple(s) for s in generate_ar(target, [0], max_new_tokens=2, params=params, seed=0,
                                           num_samples=n).token_ids)
sps = generate_sps(target, draft, [0], gamma=3, max_new_tokens=2, params=params, seed=1, num_samples=n)
spec = Counter(tuple(s) for s in sps.token_ids)
print(f"draft acceptance alpha = {sps.stats.alpha:.3f} (a poor draft), yet the histograms agree:")
print(" pair    AR      SpS")
for pair in sorted(set(ar) | set(spec)):
    print(f" {pair}  {ar[pair] / n:.4f}  {spec[pair] / n:.4f}")
