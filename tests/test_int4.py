"""4-bit weights (`cpu.quantize_int4`): the codes, the kernel's arithmetic, row independence, and lossless
speculation with respect to the quantized target (exact law, greedy identity, bit-identical logits)."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHA_TEST, exact_law, g_test, tiny_config, total_variation
from test_eagle import SMALL_DYNAMIC, SMALL_SAMPLED, head_for

from specref import SamplingParams, generate_ar, generate_sps, random_model
from specref.cpu import INT4_GROUP, Int4Linear, quantize_int4
from specref.eagle_decode import generate as generate_eagle

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"),
                                reason="this PyTorch has no CPU int4 kernel")
N = 20_000
LENGTH = 3
PROMPT = [3, 1, 4]
GREEDY = SamplingParams(0.0)


def int4_model(seed: int, hidden: int = 32):
    model = random_model(tiny_config(8, hidden=hidden), seed=seed, dtype=torch.float32, scale=3.0)
    assert quantize_int4(model) == 2 * 4  # qkv, o, gate_up and down of each layer; the output head stays
    return model


@pytest.fixture(scope="module")
def target():
    return int4_model(21)


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight.data = weight
    if bias is not None:
        layer.bias.data = bias
    return layer


def read_back(layer: Int4Linear) -> torch.Tensor:
    """The weight a bias-free layer multiplies by, read through the identity (its bfloat16 rounding)."""
    return layer(torch.eye(layer.in_features)).t()


def test_codes_on_a_q4_1_grid_come_back_exactly():
    """A weight that lies on a Q4_1 grid (as the default target's GGUF weights do) keeps its own codes, scales
    and minima: s * c + m comes back exactly (s and m chosen exact in bfloat16)."""
    g = torch.Generator().manual_seed(0)
    n, groups = 48, 4
    codes = torch.randint(0, 16, (n, groups, INT4_GROUP), generator=g)
    codes[..., 0], codes[..., 1] = 0, 15  # each group spans the grid, so its min and max give s and m
    scale = torch.randint(1, 9, (n, groups, 1), generator=g) / 64
    low = -torch.randint(0, 64, (n, groups, 1), generator=g) / 64
    weight = (codes * scale + low).reshape(n, groups * INT4_GROUP)
    assert torch.equal(read_back(Int4Linear(linear(weight))), weight.bfloat16().float())


def test_off_grid_weights_take_the_nearest_code_and_products_are_bfloat16():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(32, 2 * INT4_GROUP, generator=g)
    layer = Int4Linear(linear(weight))
    groups = weight.reshape(32, 2, INT4_GROUP)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # one code
    error = (read_back(layer) - weight).reshape(32, 2, INT4_GROUP).abs()
    # half a code, plus the bfloat16 rounding of the scale, the zero and the read-back itself
    assert bool((error <= 0.5 * step[..., None] + 2**-7 * groups.abs().amax(-1, keepdim=True)).all())
    assert float(error.max()) > 0.1 * float(step.min())  # a real rounding took place
    x = torch.randn(5, 2 * INT4_GROUP, generator=g)
    expected = x.bfloat16().float() @ read_back(layer).t()
    assert torch.allclose(layer(x), expected, rtol=0, atol=2**-7 * float(expected.abs().max()))
    assert torch.equal(layer(x), layer(x).bfloat16().float())  # the product comes out in bfloat16
    assert torch.equal(layer(x), layer(x.bfloat16().float()))  # from inputs rounded to bfloat16
    bias = torch.randn(32, generator=g)
    assert torch.equal(Int4Linear(linear(weight, bias))(x), layer(x) + bias)


def test_rows_are_independent():
    """A row's product does not depend on the other rows of the call: verification needs it."""
    g = torch.Generator().manual_seed(2)
    layer = Int4Linear(linear(torch.randn(64, 96, generator=g)))
    x = torch.randn(40, 96, generator=g)
    assert torch.equal(layer(x), torch.cat([layer(x[i : i + 1]) for i in range(40)]))


def test_refusals_name_the_problem_and_leave_the_model_as_it_was():
    narrow = random_model(tiny_config(8, hidden=16), seed=1)  # 16 inputs: not a whole group of 32
    before = {k: v.clone() for k, v in narrow.state_dict().items()}
    with pytest.raises(ValueError, match=r"in_features divisible by 32.*qkv_proj maps 16 -> 32"):
        quantize_int4(narrow)
    assert narrow.state_dict().keys() == before.keys() and not narrow.row_exact
    assert all(torch.equal(v, before[k]) for k, v in narrow.state_dict().items())
    with pytest.raises(ValueError, match=r"CPU float32 model, not cpu torch\.float64"):
        quantize_int4(random_model(tiny_config(8, hidden=32), seed=1, dtype=torch.float64))


def ancestor_mask(parents) -> torch.Tensor:
    mask = torch.eye(len(parents), dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def stepped(model, prefix, path):
    """The output of the last of `path`'s tokens fed one at a time after `prefix`."""
    steps = model.new_cache(1, len(prefix) + len(path))
    model(torch.tensor([prefix]), torch.arange(len(prefix))[None], steps)
    for j, token in enumerate(path):
        last = model(torch.tensor([[token]]), torch.tensor([[len(prefix) + j]]), steps)
    return last


@torch.inference_mode()
def nodes_off_their_steps(model, prefix=(3, 1, 4, 1, 5), tokens=(2, 6, 0, 7, 3, 5),
                          parents=(-1, 0, 0, 1, 1, 3)) -> list[int]:
    """The nodes of a tree verified in one forward whose final hidden state differs in any bit from the one
    their path gets one token at a time (logits checked to the fp32 output head's summation order)."""
    prefix = list(prefix)
    mask = ancestor_mask(parents)
    cache = model.new_cache(1, len(prefix) + len(tokens))
    model(torch.tensor([prefix]), torch.arange(len(prefix))[None], cache)
    tree = model(torch.tensor([tokens]), (len(prefix) + mask.sum(-1) - 1)[None], cache, mask[None])
    off = []
    for i in range(len(tokens)):
        last = stepped(model, prefix, [tokens[k] for k in range(len(tokens)) if mask[i, k]])
        if not torch.equal(tree.hidden[0, i], last.hidden[0, -1]):
            off.append(i)
        else:
            assert torch.allclose(tree.logits[0, i], last.logits[0, -1], rtol=1e-6, atol=1e-6)
    return off


@torch.inference_mode()
def test_a_ragged_batch_gives_each_sequence_its_own_bits(target):
    """Two sequences of different lengths (padded prefill, then rolled back), each verifying its own tree in one
    forward: every node gets the bits its path gets alone, one token at a time."""
    prefixes = [[3, 1, 4, 1, 5], [2, 7, 1]]
    tokens = [[2, 6, 0, 7], [5, 4, 3, 1]]
    masks = torch.stack([ancestor_mask([-1, 0, 0, 1]), ancestor_mask([-1, 0, 1, 1])])
    cache = target.new_cache(2, 32)
    target(torch.tensor([p + [0] * (5 - len(p)) for p in prefixes]), torch.arange(5).expand(2, 5), cache)
    cache.keep(torch.tensor([len(p) for p in prefixes]))
    positions = torch.tensor([[len(p)] for p in prefixes]) + masks.sum(-1) - 1
    tree = target(torch.tensor(tokens), positions, cache, masks)
    for b, prefix in enumerate(prefixes):
        for i in range(4):
            last = stepped(target, prefix, [tokens[b][k] for k in range(4) if masks[b, i, k]])
            assert torch.equal(tree.hidden[b, i], last.hidden[0, -1]), f"sequence {b}, node {i}"


def test_a_tree_forward_gives_the_bits_of_one_token_steps(target):
    """With `model.attend_exactly` the quantized target's law is a function of the context alone; with
    attention masked over all rows (the fp32 path) bfloat16 rounding turns summation order into other bits.
    Where that order shows depends on the CPU's attention kernel (on the Intel Xeon measured, this 32-wide model
    after 5 tokens; on the AMD EPYC one, only 128-wide heads after 100 tokens), so the mutation must show in
    one of the two setups and the exact path in neither."""
    long_prefix = torch.randint(0, 8, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    setups = [(target, (3, 1, 4, 1, 5)), (int4_model(21, hidden=256), long_prefix)]
    assert [nodes_off_their_steps(model, prefix) for model, prefix in setups] == [[], []]
    seen = []
    for model, prefix in setups:
        model.row_exact = False
        try:
            seen += nodes_off_their_steps(model, prefix)
        finally:
            model.row_exact = True
    assert seen, "the mutation (masked attention over all rows) went unseen"


def test_the_exact_activation_keeps_its_bits_where_threads_split_rows():
    """Gates about Llama-7B's MLP width (11,008) over 7 rows on 3 threads: the threads split a gate mid-row, where
    F.silu's vector and scalar paths differ in the last bit; `silu_exact` gives every row the bits it gets alone.
    Which widths show it depends on the CPU's vector width (AVX-512: 11,008; an AVX2 Zen 3: 10,999 only)."""
    import torch.nn.functional as F

    from specref.model import silu_exact

    threads, off = torch.get_num_threads(), {silu_exact: 0, F.silu: 0}
    torch.set_num_threads(3)
    try:
        for width in (11008, 10999, 11001, 11007):
            gate = (4 * torch.randn(7, 2 * width, generator=torch.Generator().manual_seed(0))).chunk(2, dim=-1)[0]
            for f in off:
                off[f] += int((f(gate) != torch.cat([f(gate[i : i + 1]) for i in range(7)])).sum())
    finally:
        torch.set_num_threads(threads)
    assert off[silu_exact] == 0
    assert off[F.silu] > 0, "F.silu kept its bits here: the setup no longer splits rows, so this test tests nothing"


def test_quantizing_twice_or_after_packing_is_refused():
    from specref.cpu import pack_linears

    model = int4_model(24)
    with pytest.raises(ValueError, match="packed or quantized already"):
        quantize_int4(model)
    packed = random_model(tiny_config(8, hidden=32), seed=24)
    pack_linears(packed)
    with pytest.raises(ValueError, match="quantize before pack_linears"):
        quantize_int4(packed)
    assert not packed.row_exact


@pytest.mark.parametrize(("tree", "params"), [(None, SamplingParams(1.0)), (SMALL_DYNAMIC, SamplingParams(0.7)),
                                              (SMALL_SAMPLED, SamplingParams(1.0, top_p=0.9))])
def test_speculation_samples_the_quantized_targets_law(target, tree, params):
    """SpS (tree None) and EAGLE with a 4-bit target follow that target's autoregressive law (G-test)."""
    if tree is None:
        out = generate_sps(target, int4_model(22), PROMPT, gamma=3, max_new_tokens=LENGTH, params=params, seed=3,
                           num_samples=N)
    else:
        head = head_for(target, "eagle3", scale=0.5 if tree.children == "sampled" else 3.0)
        out = generate_eagle(target, head, PROMPT, tree=tree, max_new_tokens=LENGTH, params=params, seed=4,
                             num_samples=N)
    assert out.stats.accepted > 0
    law = exact_law(target, PROMPT, LENGTH, params)
    pvalue = g_test(out.token_ids, law, LENGTH)
    assert pvalue > ALPHA_TEST, f"G-test p = {pvalue:.3g}, TV = {total_variation(out.token_ids, law, LENGTH):.4f}"


@pytest.mark.parametrize("seed", range(4))
def test_greedy_speculation_equals_greedy_ar_of_the_quantized_target(target, seed):
    prompt = [seed, 3, 1, 4][: 2 + seed % 3]
    ar = generate_ar(target, prompt, max_new_tokens=24, params=GREEDY).token_ids
    assert generate_sps(target, int4_model(22), prompt, gamma=4, max_new_tokens=24, params=GREEDY).token_ids == ar
    head = head_for(target, "eagle", seed)
    assert generate_eagle(target, head, prompt, tree=SMALL_DYNAMIC, max_new_tokens=24, params=GREEDY).token_ids == ar


@pytest.mark.parametrize("swap", ["pack", "int4"])
def test_a_packed_or_quantized_model_is_not_saved_half_empty(tmp_path, swap):
    from specref import save_model
    from specref.cpu import pack_linears

    model = random_model(tiny_config(8, hidden=32), seed=3)
    if swap == "pack":
        pack_linears(model)
    else:
        quantize_int4(model)
    with pytest.raises(ValueError, match=r"packed or quantized .* save it before pack_linears / quantize_int4"):
        save_model(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_packed_head_is_not_saved_half_empty(tmp_path):
    from specref.cpu import pack_linears
    from specref.formats.eagle import save_head

    head = head_for(random_model(tiny_config(8, hidden=32), seed=3), "eagle")
    pack_linears(head)
    with pytest.raises(ValueError, match=r"fc is a PackedLinear\); save it before pack_linears"):
        save_head(head, tmp_path / "head")
    assert not (tmp_path / "head").exists()
