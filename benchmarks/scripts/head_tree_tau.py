# τ of greedy EAGLE on the 60 held-out prompts x 128 tokens with a dynamic tree TOTAL/DEPTH/TOP_K, for each trained
# head directory given (loaded from its saved weights into float32), one JSON line each: how the heads of the
# training-recipe runs compare on a tree deeper than the one `training.json` records.
# Usage: python benchmarks/scripts/head_tree_tau.py 16/5/4 HEAD_DIR [HEAD_DIR ...]
import json
import sys

import torch

from specref.eagle_decode import generate_batch
from specref.formats.default_model import default_target_dir
from specref.formats.eagle import load_head
from specref.formats.hf import load_model, load_tokenizer
from specref.formats.prompts import encode, load_prompts
from specref.logits import SamplingParams
from specref.tree import TreeSpec

shape = sys.argv[1].split("/") if len(sys.argv) >= 3 else []
if len(shape) != 3 or not all(s.isdigit() for s in shape):
    sys.exit("usage: python benchmarks/scripts/head_tree_tau.py TOTAL/DEPTH/TOP_K HEAD_DIR [HEAD_DIR ...]")
tree = TreeSpec(total_tokens=int(shape[0]), depth=int(shape[1]), top_k=int(shape[2]))
target = load_model(default_target_dir())
prompts = [encode(load_tokenizer(default_target_dir()), p) for p in load_prompts("heldout")[:60]]
for path in sys.argv[2:]:
    head = load_head(path, target, torch.float32).eval()
    gen = generate_batch(target, head, prompts, tree=tree, max_new_tokens=128, params=SamplingParams(0.0),
                         eos_token_ids=target.config.eos_token_id)
    print(json.dumps({"head": path, "tree": sys.argv[1], "tau": gen.stats.tau, "alpha": gen.stats.alpha}), flush=True)
