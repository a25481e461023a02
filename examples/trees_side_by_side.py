"""EAGLE's static and dynamic draft trees for the same context, side by side: each edge carries the target's
probability of the child's token, and the accepted path (then the emitted token) is green. Writes trees.svg.

A static tree (EAGLE-1) has a fixed shape of rank paths; a dynamic one (EAGLE-2) keeps the nodes with the
highest cumulative draft probability. Both are verified by the same lossless procedure
(rust_sampler/src/tree.rs::verify_tree).

Run: python examples/trees_side_by_side.py        (SPECREF_QUICK=1 changes nothing: one round each)
"""

from pathlib import Path

from specref import SamplingParams, load_model, load_tokenizer
from specref.eagle_decode import generate
from specref.formats.default_model import default_head_dir, default_target_dir
from specref.formats.eagle import load_head
from specref.formats.prompts import encode
from specref.tools.pictures import token_text, tree_svg
from specref.tree import TreeSpec

target = load_model(default_target_dir())
head = load_head(default_head_dir(), target)
tokenizer = load_tokenizer(default_target_dir())
prompt = encode(tokenizer, "Name three primary colors.")
trees = {"static (EAGLE-1, 8 paths)": TreeSpec("static", choices=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0],
                                                                 [0, 0, 1]]),
         "dynamic (EAGLE-2, 9 nodes)": TreeSpec("dynamic", total_tokens=9, depth=3, top_k=3)}
rounds = []
for name, tree in trees.items():
    traced = []
    out = generate(target, head, prompt, tree=tree, max_new_tokens=1, params=SamplingParams(1.0), seed=1,
                   trace=traced.append)
    rounds.append(traced[0])
    path = [tokenizer.decode([traced[0].tokens[i]]) for i in traced[0].path[1:]]
    print(f"{name}: {len(traced[0].tokens) - 1} drafted nodes, accepted {path}, "
          f"then {tokenizer.decode([traced[0].token])!r}")

Path("trees.svg").write_text(tree_svg(rounds, token_text(tokenizer), list(trees)))
print("wrote trees.svg")
