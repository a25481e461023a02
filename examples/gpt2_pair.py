"""A GPT-2 pair through specref's SpS: any transformers causal LM can be the target or the draft
(`specref/formats/hf_adapter.py::HFCausalLM`). Here a small GPT-2 and, as its draft, the same model with only
its first layer (a layer-skipping draft); random weights, because no model hub is reachable offline: with
the hub, wrap `AutoModelForCausalLM.from_pretrained("gpt2")` and `("distilgpt2")` the same way.

It shows greedy SpS equal to transformers' own greedy `generate`, sampling that passes the conformance kit's
G-test against the target's exact law, and the rounds drawn. Writes gpt2_rounds.svg.

Run: python examples/gpt2_pair.py        (SPECREF_QUICK=1: 4,000 samples instead of 20,000)
"""

import os
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from specref import SamplingParams, generate_sps
from specref.conformance import check_sampler
from specref.formats.hf_adapter import HFCausalLM
from specref.tools.pictures import rounds_svg, show_round

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "tree", "and", ".", "<eos>"]
torch.manual_seed(0)
config = GPT2Config(vocab_size=len(WORDS), n_positions=64, n_embd=32, n_layer=3, n_head=2, bos_token_id=0,
                    eos_token_id=None)
gpt2 = GPT2LMHeadModel(config).double().eval()
with torch.no_grad():
    for p in gpt2.parameters():
        p.mul_(6)  # random weights give near-uniform laws; scaled up, each context has a few likely words
skip = GPT2LMHeadModel(GPT2Config(**{**config.to_dict(), "n_layer": 1})).double().eval()
skip.load_state_dict(gpt2.state_dict(), strict=False)  # embeddings, layer 0 and the final norm: shared
target, draft = HFCausalLM(gpt2), HFCausalLM(skip)
prompt = [0, 2, 4]  # "the cat sat"


def text(token: int) -> str:
    return WORDS[token]


greedy = generate_sps(target, draft, prompt, gamma=3, max_new_tokens=16, params=SamplingParams(0.0))
ids = torch.tensor([prompt])
theirs = gpt2.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                       pad_token_id=len(WORDS) - 1)[0, 3:].tolist()
assert greedy.token_ids[0] == theirs, "greedy SpS must equal transformers' greedy generate"
print("greedy SpS == transformers generate:", " ".join(map(text, theirs)))
print(f"alpha {greedy.stats.alpha:.2f}, tau {greedy.stats.tau:.2f}")

rounds = []
params = SamplingParams(1.0)
generate_sps(target, draft, prompt, gamma=3, max_new_tokens=24, params=params, seed=0, trace=rounds.append)
for i, r in enumerate(rounds):
    print(f"round {i + 1:2d} " + show_round(r, text))
Path("gpt2_rounds.svg").write_text(rounds_svg(rounds, text))
print("wrote gpt2_rounds.svg")

n = 4_000 if os.environ.get("SPECREF_QUICK") else 20_000
report = check_sampler(lambda p, k, seed: generate_sps(target, draft, p, gamma=3, max_new_tokens=3, params=params,
                                                       seed=seed, num_samples=k).token_ids,
                       gpt2, prompt, 3, params, n=n, name="GPT-2 pair, SpS gamma=3, T=1")
print(report.summary())
assert report.passed
