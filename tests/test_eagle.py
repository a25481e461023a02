"""EAGLE tree speculation end to end: exact law (G-test), greedy identity, KV cache, heads' checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ALPHA_TEST, exact_law, g_test, tiny_config, tiny_target, total_variation
from hypothesis import given, settings
from hypothesis import strategies as st

from specref import SamplingParams, generate_ar, random_model
from specref.eagle import random_head
from specref.eagle_decode import generate as generate_eagle
from specref.formats.eagle import load_head, save_head
from specref.tree import TreeSpec, device_tree

N = 20_000
LENGTH = 3
PROMPT = [3, 1, 4]
SMALL_STATIC = TreeSpec("static", choices=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
SMALL_DYNAMIC = TreeSpec("dynamic", total_tokens=7, depth=2, top_k=2)
SMALL_SAMPLED = TreeSpec("static", choices=SMALL_STATIC.choices, children="sampled")
GREEDY = SamplingParams(0.0)


def head_for(target, kind: str, seed: int = 5, scale: float = 3.0):
    """A random head; scale 3 makes peaked draft laws (like a trained head's), a small scale flat ones."""
    taps = (0, 1, 1) if kind == "eagle3" else None
    vd = 6 if kind == "eagle3" else None  # EAGLE-3 drafts from a reduced vocabulary
    return random_head(kind, target, seed, layer_ids=taps, draft_vocab_size=vd, scale=scale)


@pytest.fixture(scope="module")
def target():
    return tiny_target()


CASES = [
    ("eagle", SMALL_STATIC, SamplingParams(1.0)),
    ("eagle", SMALL_DYNAMIC, SamplingParams(0.7, top_k=4)),
    ("eagle3", SMALL_STATIC, SamplingParams(0.7, top_p=0.85)),
    ("eagle3", SMALL_DYNAMIC, SamplingParams(1.0, top_k=5, top_p=0.9)),
    ("eagle", SMALL_SAMPLED, SamplingParams(1.0)),
    ("eagle3", SMALL_SAMPLED, SamplingParams(0.7, top_p=0.8)),  # small supports: some nodes fall back to top ranks
    ("eagle3", device_tree("cpu", SamplingParams(1.0)), SamplingParams(1.0)),  # the CPU's tree at T > 0
    ("eagle3", device_tree("cpu", SamplingParams(1.0), packed=False), SamplingParams(1.0)),  # unpacked products
]


BFLOAT16_CASES = [  # a head in bfloat16 beside the float32 target (`--head-dtype bfloat16`): rounded drafts and q
    ("eagle", SMALL_DYNAMIC, SamplingParams(1.0)),  # EAGLE-1 drafts with the target's own float32 output layer
    ("eagle3", device_tree("cpu", SamplingParams(1.0)), SamplingParams(1.0)),  # sampled children, q from bf16 logits
]


@pytest.mark.parametrize(("kind", "tree", "params", "dtype"),
                         [(*c, torch.float32) for c in CASES] + [(*c, torch.bfloat16) for c in BFLOAT16_CASES])
def test_eagle_sampling_matches_exact_law(target, kind, tree, params, dtype):
    head = head_for(target, kind, scale=0.5 if tree.children == "sampled" else 3.0).to(dtype)  # flat q: varied draws
    out = generate_eagle(target, head, PROMPT, tree=tree, max_new_tokens=LENGTH, params=params, seed=7,
                         num_samples=N)
    assert head.dtype == dtype and all(len(s) == LENGTH for s in out.token_ids)
    assert out.stats.accepted > 0, "the test must exercise accepted tree paths"
    law = exact_law(target, PROMPT, LENGTH, params)
    pvalue = g_test(out.token_ids, law, LENGTH)
    assert pvalue > ALPHA_TEST, f"G-test p = {pvalue:.3g}, TV = {total_variation(out.token_ids, law, LENGTH):.4f}"


@settings(max_examples=30, deadline=None, derandomize=True)
@given(kind=st.sampled_from(["eagle", "eagle3"]), tree=st.sampled_from([SMALL_STATIC, SMALL_DYNAMIC, SMALL_SAMPLED]),
       seed=st.integers(0, 50), prompt=st.lists(st.integers(0, 7), min_size=2, max_size=6),
       max_new=st.integers(1, 30), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_greedy_eagle_equals_greedy_ar(target, kind, tree, seed, prompt, max_new, dtype):
    head = head_for(target, kind, seed).to(dtype)
    ar = generate_ar(target, prompt, max_new_tokens=max_new, params=GREEDY)
    out = generate_eagle(target, head, prompt, tree=tree, max_new_tokens=max_new, params=GREEDY)
    assert out.token_ids == ar.token_ids


@torch.inference_mode()
@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
def test_a_bfloat16_heads_logits_come_back_in_float32_unchanged(target, kind):
    """Ranking and sampling read a bfloat16 head's logits in float32 or wider: promoted, never re-rounded."""
    head = head_for(target, kind, seed=4).to(torch.bfloat16)
    g, logits = head(torch.tensor([[1, 2]]), torch.randn(1, 2, head.target.config.hidden_size * (
        3 if kind == "eagle3" else 1)), torch.arange(2)[None])
    own = head.logits(g, draft_vocab=True)
    wide = torch.float32 if kind == "eagle3" else target.dtype  # (this test's target is float64)
    assert g.dtype == torch.bfloat16 and logits.dtype == own.dtype == wide
    if kind == "eagle3":  # its own output layer runs in bfloat16; the promotion is exact
        assert torch.equal(own, head.lm_head(head.norm(g)).float())
        assert torch.equal(logits[..., head.vocab_ids], own)
    else:  # EAGLE-1 drafts with the target's own output layer, in the target's dtype
        assert torch.equal(own, target.logits(g.to(target.dtype)))


def test_bf16_weights_stay_unpacked_where_onednn_has_no_bf16_path(monkeypatch):
    # an AVX2-only CPU: oneDNN refused to reorder bf16 weights (`--head-dtype bfloat16` crashed there)
    from specref import cpu

    monkeypatch.setattr(cpu, "onednn_bf16", lambda: False)
    model = random_model(tiny_config(8, hidden=32), seed=3).to(torch.bfloat16)
    assert cpu.pack_linears(model) == 0 and not cpu.is_packed(model)
    assert cpu.pack_linears(model.float()) > 0  # fp32 weights still pack


@torch.inference_mode()
def test_target_kv_after_tree_rounds_equals_recompute(target):
    """Every cached tree forward of a long sampled run equals a no-cache recompute of each node's path."""
    t = copy.deepcopy(target)
    head = head_for(t, "eagle3", seed=9)
    calls = []
    forward = t.forward

    def recording(ids, pos, cache=None, mask=None, **kw):
        out = forward(ids, pos, cache, mask, **kw)
        if cache is not None and out.logits is not None:
            calls.append((ids.clone(), pos.clone(), None if mask is None else mask.clone(), out.logits.clone()))
        return out

    t.forward = recording
    out = generate_eagle(t, head, [1, 2, 3], tree=SMALL_DYNAMIC, max_new_tokens=40, params=SamplingParams(1.0),
                         seed=3, num_samples=3)
    del t.forward
    assert out.stats.accepted > 0 and len(calls) > 10
    final = [[1, 2, 3, *row] for row in out.token_ids]
    for ids, pos, mask, logits in calls:
        for b, seq in enumerate(final):
            start = int(pos[b, 0])
            for i in range(ids.shape[1]):
                path = [j for j in range(ids.shape[1]) if mask[b if mask.shape[0] > 1 else 0, i, j]]
                x = torch.tensor(seq[:start] + ids[b, path].tolist())[None]
                p = torch.cat([torch.arange(start), pos[b, path]])[None]
                torch.testing.assert_close(logits[b, i], t(x, p).logits[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
def test_head_checkpoint_round_trip(tmp_path, target, kind):
    head = head_for(target, kind)
    save_head(head, tmp_path / "head")
    loaded = load_head(tmp_path / "head", target)
    assert loaded.config == head.config
    width = head.config.hidden if kind == "eagle" else head.fc.weight.shape[1]  # final hidden, or 3 taps
    tokens, feats = torch.tensor([[1, 2, 3]]), torch.randn(1, 3, width, dtype=torch.float64)
    pos = torch.arange(3)[None]
    with torch.no_grad():
        for a, b in zip(head(tokens, feats, pos), loaded(tokens, feats, pos), strict=True):
            torch.testing.assert_close(a, b)


def test_original_eagle_layout_with_bias_and_embedding(tmp_path, target):
    """EAGLE-1/HASS files: fc.bias decided by the weights, an embed_tokens copy used when present, .bin read
    with weights_only."""
    import json

    from safetensors.torch import load_file

    head = head_for(target, "eagle")
    save_head(head, tmp_path / "h")
    weights = load_file(tmp_path / "h" / "model.safetensors")
    weights["embed_tokens.weight"] = torch.randn(8, 16, dtype=torch.float64)
    cfg = json.loads((tmp_path / "h" / "config.json").read_text())
    cfg["bias"] = False  # the config lies; the weights carry fc.bias (SafeAILab/EAGLE #100)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text(json.dumps(cfg))
    torch.save(weights, tmp_path / "bin" / "pytorch_model.bin")
    loaded = load_head(tmp_path / "bin", target)
    assert loaded.fc.bias is not None and loaded.embed_tokens is not None
    torch.testing.assert_close(loaded.embed_tokens.weight, weights["embed_tokens.weight"])


def test_bad_heads_and_trees(tmp_path, target):
    head = head_for(target, "eagle")
    save_head(head, tmp_path / "h")
    other = tiny_target(vocab=12, seed=3)
    with pytest.raises(ValueError, match="vocab size"):
        load_head(tmp_path / "h", other)
    foreign = random_head("eagle", tiny_target(vocab=8, seed=1), 0)  # built for another model object
    with pytest.raises(ValueError, match="another target"):
        generate_eagle(target, foreign, PROMPT, tree=SMALL_STATIC, max_new_tokens=2)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        generate_eagle(target, head, [1], tree=SMALL_STATIC, max_new_tokens=2)
    for bad in ({"total_tokens": 0}, {"depth": 0}, {"top_k": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TreeSpec("dynamic", **bad)
    for choices in ([[0], [0]], [[0, 1]], [[-1]], [[]]):
        with pytest.raises(ValueError):
            TreeSpec("static", choices=choices)
    with pytest.raises(FileNotFoundError):
        load_head(tmp_path / "missing", target)
    with pytest.raises(ValueError, match="choices is empty"):
        TreeSpec("static", choices=[])
    with pytest.raises(ValueError, match="sampled children need a static tree"):
        TreeSpec("dynamic", children="sampled")
    with pytest.raises(ValueError, match=r"ranks 0..m-1, but one has ranks \[0, 2\]"):
        TreeSpec("static", choices=[[0], [2]], children="sampled")  # draw 1 would be dropped: biased
    with pytest.raises(ValueError, match="children must be top or sampled"):
        TreeSpec("static", children="random")
    vocab = target.config.vocab_size
    for tree, needle in ((TreeSpec(top_k=vocab + 2), f"top_k {vocab + 2} needs at least {vocab + 2} tokens"),
                         (TreeSpec("static", choices=[[0], [vocab]]), f"choices rank {vocab} needs")):
        with pytest.raises(ValueError, match=needle):
            generate_eagle(target, head, PROMPT, tree=tree, max_new_tokens=2)


def test_shipped_choice_lists_and_tree_specs(tmp_path):
    import json

    import numpy as np

    from specref.tools.options import parse_tree, read_choices, tree_for, trees_at
    from specref.tree import (
        CHAIN1_CHOICES,
        DEFAULT_CHOICES,
        DEVICE_TREES,
        FORK_CHOICES,
        MEDUSA_CHOICES,
        static_tree,
        tree_buffers,
    )

    for choices, per_depth in ((DEFAULT_CHOICES, [4, 8, 8, 3, 2]), (MEDUSA_CHOICES, [10, 28, 22, 3])):
        depth, _ = tree_buffers(static_tree(choices)[0])
        assert np.bincount(depth)[1:].tolist() == per_depth
    assert parse_tree("dynamic", "cuda") == DEVICE_TREES["cuda"]
    # the default tree follows the temperature: sampled children pay at T > 0 on a CPU (README, speed levers)
    greedy, sampling = SamplingParams(0.0), SamplingParams(0.8)
    assert parse_tree("default", "cpu", greedy) == parse_tree("dynamic") == DEVICE_TREES["cpu"]
    assert parse_tree("default", "cpu", sampling) == TreeSpec("static", FORK_CHOICES, children="sampled")
    assert parse_tree("default", "mps", sampling) == parse_tree("default", "cpu", sampling)  # unmeasured: the CPU's
    assert parse_tree("default", "cuda", sampling) == DEVICE_TREES["cuda"]  # none measured on CUDA yet
    assert tree_for("cpu", params=sampling, depth=5) == TreeSpec(total_tokens=6, depth=5, top_k=4)  # sizes: dynamic
    # a CPU target with PyTorch's default products (not packed) verifies 2 drafted nodes; other devices ignore it
    dense = TreeSpec(total_tokens=3, depth=2, top_k=2)
    assert parse_tree("default", "cpu", greedy, packed=False) == DEVICE_TREES["cpu-unpacked"] == dense
    assert parse_tree("default", "cpu", sampling, packed=False) == TreeSpec("static", CHAIN1_CHOICES,
                                                                             children="sampled")
    assert parse_tree("default", "cuda", greedy, packed=False) == DEVICE_TREES["cuda"]
    assert tree_for("cpu", depth=3, packed=False) == TreeSpec(total_tokens=3, depth=3, top_k=2)
    assert trees_at(["default", "dynamic"], "cpu", greedy, packed=False) == [dense]
    # the bench's trees per temperature: `default` resolved, each tree once, two trees under one name refused
    assert trees_at(["default", "dynamic", "static"], "cpu", greedy) == [DEVICE_TREES["cpu"], parse_tree("static")]
    assert trees_at(["default", "dynamic", "sampled:fork"], "cpu", sampling) == [device_tree("cpu", sampling),
                                                                                 DEVICE_TREES["cpu"]]
    (tmp_path / "a.json").write_text(json.dumps([[0], [1]]))
    (tmp_path / "b.json").write_text(json.dumps([[0], [0, 0]]))
    with pytest.raises(ValueError, match="two different trees are both 'static custom"):
        trees_at([f"static:{tmp_path / 'a.json'}", f"static:{tmp_path / 'b.json'}"], "cpu", greedy)
    assert parse_tree("dynamic:9:3:2") == TreeSpec(total_tokens=9, depth=3, top_k=2)
    assert parse_tree("static:medusa").choices == MEDUSA_CHOICES
    for text, choices in (("sampled", DEFAULT_CHOICES), ("sampled:medusa", MEDUSA_CHOICES)):
        tree = parse_tree(text)
        assert (tree.kind, tree.choices, tree.children) == ("static", choices, "sampled")
    (tmp_path / "c.json").write_text(json.dumps([[0], [0, 0]]))
    assert read_choices(str(tmp_path / "c.json")) == [[0], [0, 0]]
    (tmp_path / "bad.json").write_text("[[0], 3]")
    for bad in ("dynamic:9:3", "dynamic:a:b:c", "bushy", "static:nothing", f"static:{tmp_path / 'bad.json'}"):
        with pytest.raises(ValueError):
            parse_tree(bad)


def test_sample_children_draws_without_replacement_from_q():
    """Ordered pairs of children follow q(a) q(b) / (1 - q(a)): the law the verifier's WithoutReplacement kind
    assumes. A row whose q has fewer tokens than children takes its top-ranked tokens and says so."""
    from collections import Counter

    from scipy.stats import chisquare

    from specref.tree import sample_children

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -4.0]], dtype=torch.float64).repeat(40_000, 1)
    gen = torch.Generator().manual_seed(0)
    for params in (SamplingParams(1.0), SamplingParams(0.5, top_p=0.95)):  # the draws follow the processed q
        drawn, q, sampled = sample_children(logits, 2, params, gen)
        assert sampled.all() and (drawn[:, 0] != drawn[:, 1]).all()
        law = q[0].tolist()
        pairs = [(a, b) for a in range(5) for b in range(5) if a != b and law[a] * law[b] > 0]
        expected = [law[a] * law[b] / (1 - law[a]) * len(drawn) for a, b in pairs]
        seen = Counter(map(tuple, drawn.tolist()))
        assert sum(seen[pair] for pair in pairs) == len(drawn)  # nothing outside q's support
        assert chisquare([seen[pair] for pair in pairs], expected).pvalue > 1e-6
    narrow = SamplingParams(1.0, top_k=1)  # one token left: two children cannot both be sampled
    drawn, _, sampled = sample_children(logits[:3], 2, narrow, gen)
    assert not sampled.any() and drawn.tolist() == [[0, 1]] * 3
    # Rows with different supports (a head's reduced vocabulary, per-row top-k): noise is drawn only over
    # tokens some row can take, and each row still draws from its own q alone, with the same law.
    inf = float("-inf")
    mixed = torch.tensor([[inf, 1.0, inf, 0.0, inf, -1.0], [inf, inf, 0.5, 0.5, inf, inf]],
                         dtype=torch.float64).repeat(20_000, 1)
    drawn, q, sampled = sample_children(mixed, 2, SamplingParams(1.0), gen)
    assert sampled.all() and (q.gather(1, drawn) > 0).all()  # every draw inside its own row's support
    first, law = Counter(drawn[::2, 0].tolist()), q[0]
    assert set(drawn[1::2].flatten().tolist()) == {2, 3}
    assert chisquare([first[t] for t in (1, 3, 5)], [float(law[t]) * 20_000 for t in (1, 3, 5)]).pvalue > 1e-6


def test_sampled_children_are_drawn_and_verified_by_their_kind(target, monkeypatch):
    """At T > 0 the sampled tree's children vary with the seed and carry the WithoutReplacement kind with their
    q; at T = 0 the same tree takes top-ranked children (q one-hot allows no second draw)."""
    import specref.eagle_decode as ed
    from specref.tree import DETERMINISTIC, WITHOUT_REPLACEMENT

    head, grown, grow = head_for(target, "eagle", scale=0.5), [], ed.grow  # flat q: draws vary

    def recording(*args, **kw):
        drafted = grow(*args, **kw)
        grown.append(drafted)
        return drafted

    monkeypatch.setattr(ed, "grow", recording)
    for seed in range(6):
        generate_eagle(target, head, PROMPT, tree=SMALL_SAMPLED, max_new_tokens=1, params=SamplingParams(1.0),
                       seed=seed)
    assert len({tuple(t.tokens[0, 1:].tolist()) for t in grown}) > 1
    assert all(t.q is not None and WITHOUT_REPLACEMENT in t.kinds[0] for t in grown)
    grown.clear()
    for seed in range(3):
        generate_eagle(target, head, PROMPT, tree=SMALL_SAMPLED, max_new_tokens=1, params=GREEDY, seed=seed)
    assert len({tuple(t.tokens[0, 1:].tolist()) for t in grown}) == 1  # top-ranked: the same tree for any seed
    assert all(t.q is None and (t.kinds == DETERMINISTIC).all() for t in grown)
    grown.clear()  # a peaked head under top-p: nodes with too few tokens left keep top-ranked children
    generate_eagle(target, head_for(target, "eagle3"), PROMPT, tree=SMALL_SAMPLED, max_new_tokens=8,
                   params=SamplingParams(0.7, top_p=0.8), seed=1, num_samples=4)
    parents_kinds = {int(k) for t in grown for b, row in enumerate(t.kinds) for i, k in enumerate(row)
                     if i in t.parents[b]}
    assert parents_kinds == {DETERMINISTIC, WITHOUT_REPLACEMENT}


def test_sampled_children_verified_as_iid_draws_are_caught(target, monkeypatch):
    """Mutation: children drawn without replacement but verified as i.i.d. draws (q not renormalised over the
    undrawn tokens) bias the output; the G-test sees it. The same run with the right kind passes above."""
    import specref.tree as tree_module

    monkeypatch.setattr(tree_module, "WITHOUT_REPLACEMENT", 1)  # the verifier's code for i.i.d. children
    params = SamplingParams(1.0)
    out = generate_eagle(target, head_for(target, "eagle", scale=0.5), PROMPT, tree=SMALL_SAMPLED,
                         max_new_tokens=LENGTH, params=params, seed=7, num_samples=N)
    assert g_test(out.token_ids, exact_law(target, PROMPT, LENGTH, params), LENGTH) < ALPHA_TEST


def test_dynamic_trees_ranked_in_the_heads_vocabulary_are_the_full_vocabularys(target, monkeypatch):
    """`grow_dynamic` ranks children over an EAGLE-3 head's own columns and names them by `vocab_ids`: every
    round's tree must be the one that ranking over the full vocabulary (-inf outside the head's) grows. Any head
    is lossless, so only this test sees a wrong column-to-token mapping."""
    from specref.eagle import EagleHead
    from specref.model import full_vocabulary

    head = head_for(target, "eagle3")
    assert not torch.equal(head.vocab_ids, torch.arange(len(head.vocab_ids)))  # d2t moves tokens: mapping matters

    def trees() -> list[tuple[list[int], list[int] | None]]:
        rounds: list = []
        generate_eagle(target, head, PROMPT, tree=SMALL_DYNAMIC, max_new_tokens=8, params=GREEDY,
                       trace=rounds.append)
        return [(r.tokens, r.parents) for r in rounds]

    reduced = trees()
    ids, vocab = head.vocab_ids, target.config.vocab_size

    def full_logits(self, g, draft_vocab=False):  # always the full vocabulary: token ids are column indices
        return full_vocabulary(self.lm_head(g if self.config.norm_output else self.norm(g)), ids, vocab)

    monkeypatch.setattr(EagleHead, "logits", full_logits)
    monkeypatch.setattr(EagleHead, "vocab_ids", property(lambda self: None))
    assert len(reduced) >= 2 and reduced == trees()
