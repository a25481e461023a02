"""One speculative-sampling round, step by step, on two tiny random models over a 4-token vocabulary, then the
rejection step drawn: accepted mass min(p, q), residual (p - q)+, and the law of the emitted token, which is p.
Writes rejection.png.

Run: python examples/one_round_by_hand.py        (SPECREF_QUICK=1 changes nothing: it takes a second)
"""

import numpy as np
import torch

from specref import ModelConfig, SamplingParams, process_logits, random_model
from specref._sampler import SeededCoin, chain_law, verify_chain
from specref.tools.plots import new_figure, save_figure


def config(hidden: int, layers: int) -> ModelConfig:
    return ModelConfig(vocab_size=4, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2)


fig = new_figure(figsize=(10, 3.8))  # first: without matplotlib, say how to install it before any work
torch.set_printoptions(precision=3, sci_mode=False)
target = random_model(config(32, 2), seed=0, scale=3.0, dtype=torch.float64)
draft = random_model(config(16, 1), seed=1, scale=3.0, dtype=torch.float64)
params = SamplingParams(temperature=1.0)
prompt, gamma = [1, 2, 3], 3
gen = torch.Generator().manual_seed(0)

# 1. The draft samples gamma tokens one by one, remembering the law q_i each was drawn from.
tokens, qs = list(prompt), []
with torch.no_grad():
    for _ in range(gamma):
        ids = torch.tensor([tokens])
        q = process_logits(draft(ids, torch.arange(len(tokens))[None]).logits[0, -1], params)
        x = int(torch.multinomial(q, 1, generator=gen))
        print(f"draft   q = {q}  ->  x = {x}")
        tokens.append(x)
        qs.append(q)
    # 2. One target forward scores every draft at once: rows p_1..p_{gamma+1}.
    ids = torch.tensor([tokens])
    p = process_logits(target(ids, torch.arange(len(tokens))[None]).logits[0, len(prompt) - 1 :], params)
for i, row in enumerate(p):
    print(f"target  p_{i + 1} = {row}")

# 3. Rust decides: accept x_i iff u*q_i(x_i) < p_i(x_i); at the first rejection resample from (p_i - q_i)+.
drafts = np.array([tokens[len(prompt) :]])
accepted, token, _ = verify_chain(p[None].numpy(), torch.stack(qs)[None].numpy(), drafts, SeededCoin(0))
print(f"\naccepted {accepted[0]} of {gamma} drafts, then emitted token {token[0]}")
print("emitted:", [*tokens[len(prompt) : len(prompt) + accepted[0]], int(token[0])])

# 4. The exact law of this round's outcome (every random branch enumerated):
print("\nexact law of (accepted, next token) for these drafts:")
for acc, tok, _, prob in chain_law(p.numpy(), torch.stack(qs).numpy(), drafts[0]):
    print(f"  accepted {acc}, token {tok}: {prob:.4f}")

# 5. Why the first emitted token follows p_1, whatever the draft: averaged over x ~ q_1, token y is emitted by
#    acceptance with probability q(y) * min(1, p(y)/q(y)) = min(p, q)(y), and by the residual with probability
#    (1 - beta) * (p - q)+(y) / (1 - beta), beta = sum min(p, q) being the acceptance probability. The sum is p.
p1, q1 = p[0], qs[0]
kept = torch.minimum(p1, q1)
beta = float(kept.sum())
residual = (p1 - q1).clamp(min=0)
emitted = kept + (1 - beta) * residual / residual.sum()
print(f"\nposition 1: acceptance probability beta = sum min(p, q) = {beta:.3f} = 1 - TV(p, q)")
for name, row in (("q", q1), ("p", p1), ("min(p, q)", kept), ("(p - q)+", residual), ("emitted", emitted)):
    print(f"  {name:>10s} = {row}")
assert torch.allclose(emitted, p1, atol=1e-12), "the emitted law must be p"
by_law = np.zeros(4)  # the same law from Rust's enumeration, summed over the drafts x_1 ~ q_1 of a gamma = 1 round
for x, qx in enumerate(q1.tolist()):
    for acc, tok, _, prob in chain_law(p[:2].numpy(), q1[None].numpy(), np.array([x])):
        by_law[x if acc == 1 else tok] += qx * prob
print(f"  exact law of the first token over x_1 ~ q_1 (Rust's enumeration): {np.round(by_law, 3)}")
assert np.allclose(by_law, p1.numpy(), atol=1e-12)

left, right = fig.subplots(1, 2)
v = np.arange(4)
left.bar(v - 0.2, q1, 0.4, color="#8ac", label="q (draft)")
left.bar(v + 0.2, p1, 0.4, color="#555", label="p (target)")
left.set(title="the draft's q and the target's p", xlabel="token", ylabel="probability", xticks=v)
top = 1.4 * float(torch.maximum(p1, q1).max())
left.set_ylim(0, top)
left.legend(loc="upper left")
right.bar(v, kept, 0.6, color="#2a2", label="accepted: min(p, q)")
right.bar(v, emitted - kept, 0.6, bottom=kept, color="#db3", label="residual: (1-β)·(p − q)+ / Σ(p − q)+")
right.plot(v, p1, "k_", markersize=30, markeredgewidth=2, label="p")
right.set(title=f"what is emitted: min(p, q) + residual = p   (β = {beta:.2f})", xlabel="token", xticks=v)
right.set_ylim(0, top)
right.legend(loc="upper left", fontsize=8, markerscale=0.3)
print("wrote", save_figure(fig, "rejection.png"))
