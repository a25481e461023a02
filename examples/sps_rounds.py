"""SpS on the default pair, each round drawn: accepted drafts green, the rejected one red and struck through,
the drafts after it (never tried) grey, the correction yellow or the bonus blue. Writes sps_rounds.svg.

Run: python examples/sps_rounds.py   (SPECREF_QUICK=1: fewer tokens; the same as `generate --method sps --show-rounds`)
"""

import os
from pathlib import Path

from specref import SamplingParams, generate_sps, load_model, load_tokenizer
from specref.formats.default_model import default_draft_dir, default_target_dir
from specref.formats.hf import load_draft
from specref.formats.prompts import encode
from specref.tools.pictures import rounds_svg, show_round, token_text

tokens = 12 if os.environ.get("SPECREF_QUICK") else 48
target = load_model(default_target_dir())
draft = load_draft(default_draft_dir(), target)
tokenizer = load_tokenizer(default_target_dir())
prompt = encode(tokenizer, "Why is the sky blue?")
rounds = []
out = generate_sps(target, draft, prompt, gamma=4, max_new_tokens=tokens, params=SamplingParams(0.7), seed=0,
                   trace=rounds.append)
text = token_text(tokenizer)
for i, r in enumerate(rounds):
    print(f"round {i + 1:2d} " + show_round(r, text))
print(f"alpha {out.stats.alpha:.2f}, tau {out.stats.tau:.2f} tokens per target call")
Path("sps_rounds.svg").write_text(rounds_svg(rounds, text))
print("wrote sps_rounds.svg")
