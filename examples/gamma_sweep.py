"""How many drafts per round? SpS on the default pair for gamma = 1..5: measured tokens/s and tau against the
curves predicted from the draft's acceptance alpha and the cost ratio c = draft step / target step,
tau = (1 - alpha^(gamma+1)) / (1 - alpha) and speed-up = tau / (gamma c + 1). Writes gamma_sweep.png.

Run: python examples/gamma_sweep.py        (SPECREF_QUICK=1: gamma 1..3 and fewer tokens; the full comparison
with Hugging Face is `python -m specref bench OUT --plot OUT.png`)
"""

import os

import torch

from specref import SamplingParams, generate_ar, generate_sps, load_model, load_tokenizer
from specref.cpu import pack_linears, should_pack
from specref.formats.default_model import default_draft_dir, default_target_dir
from specref.formats.hf import load_draft
from specref.formats.prompts import encode
from specref.stats import expected_tau, predicted_speedup
from specref.tools.plots import check_plot_path, speculation_figure
from specref.tools.timing import step_time

check_plot_path("gamma_sweep.png")  # first: without matplotlib, say how to install it before any work
quick = bool(os.environ.get("SPECREF_QUICK"))
tokens, gammas = (24, (1, 2, 3)) if quick else (48, (1, 2, 3, 4, 5))
target = load_model(default_target_dir())
draft = load_draft(default_draft_dir(), target)
for model in (target, draft):
    if should_pack():  # oneDNN-packed fp32 weights where they are faster, as `generate` and `bench` decide
        pack_linears(model)
tokenizer = load_tokenizer(default_target_dir())
prompt = encode(tokenizer, "Explain in a few sentences why the sky is blue.")
cpu = torch.device("cpu")
c = step_time(draft, cpu) / step_time(target, cpu)  # the cost of one draft step in target steps
greedy = SamplingParams(0.0)
generate_ar(target, prompt, max_new_tokens=8, params=greedy)  # warm-up: the first call pays one-off costs

ar = generate_ar(target, prompt, max_new_tokens=tokens, params=greedy)
rows = [{"method": "specref AR", "temperature": 0.0, "tokens_per_s": ar.stats.tokens_per_s,
         "speedup_vs_specref_ar": 1.0}]
print(f"c = {c:.3f}; specref AR {ar.stats.tokens_per_s:.1f} tok/s")
print(" gamma  tok/s  alpha  tau (predicted)  speed-up (predicted)")
for gamma in gammas:
    s = generate_sps(target, draft, prompt, gamma=gamma, max_new_tokens=tokens, params=greedy).stats
    assert s.new_tokens == ar.stats.new_tokens
    rows.append({"method": f"specref SpS gamma={gamma}", "gamma": gamma, "temperature": 0.0,
                 "tokens_per_s": s.tokens_per_s, "speedup_vs_specref_ar": s.tokens_per_s / ar.stats.tokens_per_s,
                 "alpha": s.alpha, "tau": s.tau, "position_acceptance": s.position_acceptance})
    r = rows[-1]
    print(f" {gamma:5d}  {s.tokens_per_s:5.1f}  {s.alpha:.2f}  {s.tau:.2f} ({expected_tau(s.alpha, gamma):.2f})"
          f"      {r['speedup_vs_specref_ar']:.2f} ({predicted_speedup(s.alpha, gamma, c):.2f})")
print("The prediction prices a round at gamma draft steps plus one target step; what else a round costs (scoring\n"
      "gamma + 1 tokens instead of one, the draft re-reading the last token, sampling, verification, cache\n"
      "bookkeeping) is why measured speed-ups fall below it.")
speculation_figure(rows, c, "gamma_sweep.png", "SpS on the default pair, greedy, one prompt")
print("wrote gamma_sweep.png")
