"""One speculative-sampling round, step by step, on two tiny random models (a classroom walk-through).

Run: python examples/one_round_by_hand.py
"""

import numpy as np
import torch

from specref import ModelConfig, SamplingParams, process_logits, random_model
from specref._sampler import SeededCoin, chain_law, verify_chain


def config(hidden: int, layers: int) -> ModelConfig:
    return ModelConfig(vocab_size=6, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2)


torch.set_printoptions(precision=3, sci_mode=False)
target = random_model(config(32, 2), seed=0, scale=3.0)
draft = random_model(config(16, 1), seed=1, scale=3.0)
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
