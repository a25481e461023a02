"""Speculator checkpoints: every source layout converts, reloads bit for bit and decodes losslessly; bad input
is refused with a message naming the problem and leaves nothing behind (issue: convert + Speculator API)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from conftest import tiny_target
from safetensors.torch import load_file, save_file

from specref import SamplingParams, eagle_decode
from specref.api.speculator import Speculator
from specref.conformance import check_sampler
from specref.conformance.engines import specref_sampler
from specref.eagle import EagleHead, random_head
from specref.eagle_decode import generate as generate_eagle
from specref.formats.eagle import load_head
from specref.formats.hf import config_to_hf, save_model, split_hf
from specref.model import RMSNorm
from specref.tools.cli import main
from specref.tree import TreeSpec

TREE = TreeSpec("dynamic", total_tokens=5, depth=2, top_k=2)
PROMPT = [3, 1, 4]
OPTIONS = ("norm_before_fc", "fc_norm", "norm_before_residual", "norm_output")


@pytest.fixture(scope="module")
def target():
    return tiny_target()


@pytest.fixture(scope="module")
def verifier(target, tmp_path_factory):
    path = tmp_path_factory.mktemp("verifier") / "target"
    save_model(target, path)
    return path


def original(head: EagleHead, path, layout: str) -> None:
    """Write `head` as the original project would have: key names, config fields and weight file per layout
    (formats.md §1-3): "eagle1" (Vicuna-style: no `bias` field, fc.bias and an embedding, pytorch_model.bin),
    "eagle2" (LLaMA-3 style: "bias": false and no fc.bias), "hass" (the config says no bias, the weights carry
    one: HASS always trains with it), "eagle3" (midlayer., d2t/t2d, no rope_theta, no layer ids, .bin),
    "speculators-trained" (Eagle3DraftModel, layers.0., bf16, embed_tokens)."""
    c = head.config
    state = {k: v.detach().clone() for k, v in split_hf(head.state_dict(), c.layer).items()}
    cfg = {k: v for k, v in config_to_hf(c.layer).items() if not k.startswith("specref_")}
    cfg.pop("rope_parameters")
    path.mkdir(parents=True)
    if layout == "speculators-trained":
        cfg = {"architectures": ["Eagle3DraftModel"], "draft_vocab_size": c.draft_vocab_size,
               "eagle_aux_hidden_state_layer_ids": list(c.layer_ids), "speculators_model_type": "eagle3",
               "speculators_version": "0.9.0", "transformer_layer_config": {**cfg, "num_hidden_layers": 1},
               "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                      "proposal_methods": [], "verifier": {"architectures": ["LlamaForCausalLM"],
                                                                           "name_or_path": "some/hub-id"}},
               **{o: getattr(c, o) for o in OPTIONS}}
        state["embed_tokens.weight"] = torch.randn(c.layer.vocab_size, c.hidden, dtype=torch.float64)
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
        state["t2d"] = torch.zeros(c.layer.vocab_size, dtype=torch.bool)
        state["t2d"][torch.arange(len(state["d2t"])) + state["d2t"]] = True
        (path / "config.json").write_text(json.dumps(cfg))
        save_file(state, path / "model.safetensors")
        return
    if layout == "eagle3":
        single = c.layer.num_hidden_layers == 1
        state = {(k.replace("layers.0.", "midlayer.", 1) if single else k.replace("layers.", "midlayer.", 1)): v
                 for k, v in state.items()}
        state["t2d"] = torch.zeros(c.layer.vocab_size, dtype=torch.bool)
        state["t2d"][torch.arange(len(state["d2t"])) + state["d2t"]] = True
        cfg |= {"architectures": ["LlamaForCausalLMEagle3"], "draft_vocab_size": c.draft_vocab_size,
                "num_hidden_layers": 40}  # a wrong layer count, as in yuhuili/EAGLE3-Vicuna1.3-13B
        torch.save(state, path / "pytorch_model.bin")
    else:
        cfg["num_hidden_layers"] = 1
        if layout == "eagle1":  # a frozen copy of the target's embedding, as EAGLE-1 releases ship
            state["embed_tokens.weight"] = head.target.embed_tokens.weight.detach().clone()
            torch.save(state, path / "pytorch_model.bin")
        elif layout == "eagle2":
            cfg["bias"] = False
            del state["fc.bias"]
            save_file(state, path / "model.safetensors")
        else:  # hass
            cfg["bias"] = False
            state["embed_tokens.weight"] = head.target.embed_tokens.weight.detach().clone()
            save_file(state, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(cfg))


def head_of(target, layout: str, **options):
    kind = "eagle" if layout in ("eagle1", "eagle2", "hass") else "eagle3"
    vd = None if kind == "eagle" else 6
    return random_head(kind, target, 5, draft_vocab_size=vd, scale=3.0,
                       layers=2 if layout == "eagle3-2layer" else 1, **options)


LAYOUTS = ["eagle1", "eagle2", "hass", "eagle3", "eagle3-2layer"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_source_layout_converts_reloads_and_decodes_the_same(tmp_path, target, verifier, layout, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    original(head_of(target, layout), src, "eagle3" if layout == "eagle3-2layer" else layout)
    algorithm = "hass" if layout == "hass" else "auto"
    main(["convert", "--source", str(src), "--output", str(out), "--verifier", str(verifier), "--algorithm",
          algorithm])
    said = capsys.readouterr()
    assert f"wrote {out}" in said.out and "layout" in said.err
    from_original = load_head(src, target)
    converted = load_head(out, target)
    # the legacy layout drops the embedding copy (speculators <= 0.6 did): the verifier's, equal to it, is used
    kept = {k: v for k, v in from_original.state_dict().items() if not (k == "embed_tokens.weight" and
                                                                      layout in ("eagle1", "hass"))}
    assert converted.state_dict().keys() == kept.keys()
    for k, v in kept.items():
        assert torch.equal(converted.state_dict()[k], v), k
    cfg = json.loads((out / "config.json").read_text())
    assert "model_type" not in cfg and cfg["speculators_config"]["verifier"]["name_or_path"] == str(verifier)
    if layout.startswith("eagle3"):
        assert cfg["norm_before_residual"] is False and len(cfg["eagle_aux_hidden_state_layer_ids"]) == 3
        tensors = load_file(out / "model.safetensors")
        assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
        assert not any(k.startswith("midlayer") for k in tensors)
    else:
        assert cfg["speculators_version"] == "0.6.0.2" and cfg["fusion_bias"] == (layout != "eagle2")
        assert not any(k.startswith(("fc.", "layers.", "embed_tokens")) for k in load_file(out / "model.safetensors"))
    for params, seed in ((SamplingParams(0.0), 0), (SamplingParams(1.0), 1)):  # greedy, and one seeded sample
        a = generate_eagle(target, from_original, PROMPT, tree=TREE, max_new_tokens=10, params=params, seed=seed)
        b = generate_eagle(target, converted, PROMPT, tree=TREE, max_new_tokens=10, params=params, seed=seed)
        assert a.token_ids == b.token_ids
    ids = Speculator.from_pretrained(out, quiet=True).generate([PROMPT], max_new_tokens=10, verifier=target, tree=TREE)
    assert ids[0, 3:].tolist() == generate_eagle(target, from_original, PROMPT, tree=TREE, max_new_tokens=10,
                                                 params=SamplingParams(0.0)).token_ids[0]


def test_a_converted_head_samples_the_targets_law(tmp_path, target, verifier):
    src, out = tmp_path / "src", tmp_path / "out"
    original(head_of(target, "eagle3"), src, "eagle3")
    Speculator.from_pretrained(src, verifier=verifier, quiet=True).save_pretrained(out)
    head = Speculator.from_pretrained(out, quiet=True).head_for(target)
    params = SamplingParams(1.0)
    r = check_sampler(specref_sampler("eagle", target, 3, params, head=head, tree=TREE), target, PROMPT, 3, params)
    assert r.passed, r.summary()


def test_speculators_round_trip_keeps_every_field_and_tensor(tmp_path, target, verifier):
    src = tmp_path / "src"
    original(head_of(target, "eagle3"), src, "eagle3")
    first = Speculator.from_pretrained(src, verifier=verifier, quiet=True)
    first.save_pretrained(tmp_path / "a")
    again = Speculator.from_pretrained(tmp_path / "a", quiet=True)
    assert again.config.verifier == first.config.verifier and again.config.source == "speculators"
    again.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_eagle3_config_is_what_speculators_writes(tmp_path, target, verifier):
    """Every field speculators 0.9.0 writes (formats.md §4.2), with its fixed values, and nothing else."""
    src = tmp_path / "src"
    original(head_of(target, "eagle3"), src, "eagle3")
    Speculator.from_pretrained(src, verifier=verifier, quiet=True).save_pretrained(tmp_path / "out")
    text = (tmp_path / "out" / "config.json").read_text()
    cfg = json.loads(text)
    assert text == json.dumps(cfg, indent=2, sort_keys=True) + "\n"
    assert set(cfg) == {"architectures", "auto_map", "draft_vocab_size", "dtype", "eagle_aux_hidden_state_layer_ids",
                        "embed_requires_grad", "fc_norm", "norm_before_fc", "norm_before_residual", "norm_output",
                        "speculators_config", "speculators_model_type", "speculators_version", "target_hidden_size",
                        "tie_word_embeddings", "transformer_layer_config", "transformers_version"}
    assert cfg["architectures"] == ["Eagle3Speculator"] and cfg["auto_map"] == {"": "config.Eagle3SpeculatorConfig"}
    assert cfg["speculators_config"] == {
        "algorithm": "eagle3", "default_proposal_method": "greedy",
        "proposal_methods": [{"accept_tolerance": 0.0, "proposal_type": "greedy", "speculative_tokens": 3,
                              "verifier_accept_k": 1}],
        "verifier": {"architectures": ["LlamaForCausalLM"], "name_or_path": str(verifier)}}
    layer = cfg["transformer_layer_config"]
    assert layer["model_type"] == "llama" and layer["vocab_size"] == 8 and layer["num_hidden_layers"] == 1
    assert layer["rope_parameters"] == {"rope_theta": 10000.0, "rope_type": "default"}  # EAGLE-3's when absent
    assert (cfg["draft_vocab_size"], cfg["dtype"], cfg["target_hidden_size"]) == (6, "float64", None)


@pytest.mark.parametrize("option", OPTIONS)
def test_speculators_trained_eagle31_heads_load_and_run(tmp_path, target, option):
    src = tmp_path / option
    head = head_of(target, "speculators-trained", **{option: True})
    original(head, src, "speculators-trained")
    spec = Speculator.from_pretrained(src, verifier=target, quiet=True)
    assert getattr(spec.config.head, option) and spec.own_embedding and spec.config.dtype == torch.bfloat16
    loaded = spec.head_for(target)
    out = generate_eagle(target, loaded, PROMPT, tree=TREE, max_new_tokens=6, params=SamplingParams(1.0), seed=3)
    assert len(out.token_ids[0]) == 6


def test_eagle31_norms_follow_their_definitions(target):
    """Each option against its equation (eagle.py's docstring), on one random head per option."""
    f = torch.randn(2, 3, 3 * 16, dtype=torch.float64)
    norm = lambda w, x: w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)  # noqa: E731
    head = random_head("eagle3", target, 1, norm_before_fc=True)
    assert isinstance(head.input_norm, RMSNorm)
    torch.testing.assert_close(head.fuse(f), head.fc(norm(head.input_norm.weight, f)))
    head = random_head("eagle3", target, 1, fc_norm=True)
    chunks = [norm(n.weight, x) for n, x in zip(head.fc_norm, f.chunk(3, -1), strict=True)]
    torch.testing.assert_close(head.fuse(f), head.fc(torch.cat(chunks, -1)))
    normed = random_head("eagle3", target, 1, norm_before_residual=True)
    tokens, pos = torch.tensor([[1]]), torch.tensor([[0]])  # one token: no mask to rebuild by hand
    g, _ = normed(tokens, f[:1, :1], pos)
    layer, h = normed.layers[0], normed.fuse(f[:1, :1])
    e = target.embed_tokens(tokens).to(torch.float64)
    cos, sin = normed.rotary(pos, e.dtype)
    hn = layer.hidden_norm(h)
    r = hn + layer.self_attn(torch.cat([layer.input_layernorm(e), hn], -1), cos, sin, None, None, 0)
    torch.testing.assert_close(g, r + layer.mlp(layer.post_attention_layernorm(r)))  # residual from hidden_norm(h)
    tokens, pos = torch.tensor([[1, 2]]), torch.tensor([[0, 1]])
    out_head = random_head("eagle3", target, 1, norm_output=True)
    base = random_head("eagle3", target, 1)
    g_out, logits_out = out_head(tokens, f[:1, :2], pos)
    g_base, logits_base = base(tokens, f[:1, :2], pos)
    torch.testing.assert_close(g_out, base.norm(g_base))  # same weights: it feeds back norm(g)
    torch.testing.assert_close(logits_out, logits_base)  # and drafts from the same distribution


def test_generate_and_the_cli_accept_a_speculators_dir(tmp_path, target, verifier, capsys, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    original(head_of(target, "eagle3"), src, "eagle3")
    Speculator.from_pretrained(src, verifier=verifier, quiet=True).save_pretrained(out)
    spec = Speculator.from_pretrained(out, quiet=True)  # the config names the verifier: a local directory
    from_disk = spec.generate(torch.tensor([PROMPT]), max_new_tokens=7)  # loads it (float32)
    assert from_disk.shape == (1, 10) and from_disk[0, :3].tolist() == PROMPT
    ids = spec.generate(torch.tensor(PROMPT), max_new_tokens=7, verifier=target)  # the float64 one in memory
    expected = generate_eagle(target, load_head(src, target), PROMPT, tree=TREE, max_new_tokens=7,
                              params=SamplingParams(0.0))
    assert ids[0, 3:].tolist() == expected.token_ids[0]  # greedy: any tree gives greedy AR's tokens
    assert spec.generate([PROMPT, [2, 5]], max_length=6, verifier=target).shape == (2, 6)
    # prompts of different lengths line up as transformers' do: new tokens from column T, padding never decoded
    alone = spec.generate([[2, 5]], max_new_tokens=4, verifier=target)[0].tolist()
    ragged = spec.generate([PROMPT, [2, 5]], max_new_tokens=4, verifier=target)
    assert not target.config.eos_token_id
    pad = 0  # this verifier has no EOS token: rows are padded with id 0
    assert ragged[1].tolist() == [pad, *alone] and ragged[0, 3:].tolist() == ids[0, 3:7].tolist()
    decoded, real_batch = [], eagle_decode.generate_batch  # the prompts the loop is given: padding stripped
    monkeypatch.setattr(eagle_decode, "generate_batch",
                        lambda t, h, prompts, **kw: decoded.append(prompts) or real_batch(t, h, prompts, **kw))
    masked = spec.generate(torch.tensor([[7, 2, 5], PROMPT]), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                           max_new_tokens=4, verifier=target)
    assert decoded == [[[2, 5], PROMPT]]
    assert masked[0].tolist() == [7, *alone] and torch.equal(masked[1], ragged[0])
    one = spec.generate(torch.tensor([7, 2, 5]), attention_mask=torch.tensor([False, True, True]), max_new_tokens=4,
                        verifier=target)  # one row, 1-D, a bool mask
    assert one[0].tolist() == [7, *alone] and decoded[-1] == [[2, 5]]
    for ids_, mask, problem in (([PROMPT], [[1, 1]], "has shape"), ([PROMPT], [[0, 2, 1]], "only 0"),
                                ([PROMPT], [[0, 0, 0]], "left padding"), ([PROMPT], [[1, 1, 0]], "left padding"),
                                ([PROMPT], [[1, 0, 1]], "left padding"), ([PROMPT, [2, 5]], [[1, 1, 1], [1, 1, 1]],
                                                                          "padded to one width")):
        with pytest.raises(ValueError, match=problem):
            spec.generate(ids_, attention_mask=mask, max_new_tokens=2, verifier=target)
    assert len(decoded) == 2  # every refusal came before decoding
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1, got 0"):
        spec.generate([PROMPT], max_new_tokens=0, verifier=target)
    with pytest.raises(ValueError, match="max_length 3 leaves no room"):
        spec.generate([PROMPT], max_length=3, verifier=target)
    sampled = spec.generate([PROMPT], max_new_tokens=5, do_sample=True, temperature=0.7, top_k=3, seed=2)
    assert sampled.shape == (1, 8)
    main(["generate", "--target", str(verifier), "--method", "eagle", "--eagle", str(out), "--prompt-ids", "3,1,4",
          "--max-new-tokens", "7", "--output", "json"])
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["token_ids"] == [from_disk[0, 3:].tolist()]


def test_the_shipped_head_through_the_api(tmp_path):
    from specref.formats.default_model import default_head_dir

    spec = Speculator.from_pretrained(default_head_dir(), verifier="smollm2", quiet=True)
    spec.save_pretrained(tmp_path / "s")
    again = Speculator.from_pretrained(tmp_path / "s", quiet=True)
    assert again.config.verifier.name_or_path == "smollm2" and again.config.head == spec.config.head
    a = spec.generate([[1, 2, 3, 4]], max_new_tokens=6)
    assert torch.equal(a, again.generate([[1, 2, 3, 4]], max_new_tokens=6))


def test_push_to_hub_makes_the_upload_calls(tmp_path, target, verifier, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    src = tmp_path / "src"
    original(head_of(target, "eagle3"), src, "eagle3")
    spec = Speculator.from_pretrained(src, verifier=verifier, quiet=True)
    with pytest.raises(ValueError, match="repo_id"):
        spec.save_pretrained(tmp_path / "x", push_to_hub=True)
    spec.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/head", private=True, token="t0")
    assert calls == [("init", "t0"), ("create_repo", "me/head", {"private": True, "exist_ok": True,
                                                                  "repo_type": "model"}),
                     ("upload_folder", {"folder_path": str(tmp_path / "out"), "repo_id": "me/head",
                                        "repo_type": "model"})]


def corrupt_cases(tmp_path, target, verifier):
    """(name, source dir, extra flags, words the error must contain) for every kind of bad input."""
    good = tmp_path / "good"
    original(head_of(target, "eagle3"), good, "eagle3")
    cases = []

    def variant(name, edit, flags=(), needle=""):
        path = tmp_path / name
        path.mkdir()
        for f in good.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        edit(path)
        cases.append((name, path, list(flags), needle))

    state = torch.load(good / "pytorch_model.bin", weights_only=True)

    def save(path, new):
        torch.save(new, path / "pytorch_model.bin")

    variant("no-config", lambda p: (p / "config.json").unlink(), needle="config.json")
    variant("no-weights", lambda p: (p / "pytorch_model.bin").unlink(), needle="no weights")
    variant("bad-json", lambda p: (p / "config.json").write_text("{nope"), needle="config.json")

    def truncated(p):
        (p / "pytorch_model.bin").unlink()
        save_file({k: v.contiguous() for k, v in state.items()}, p / "model.safetensors")
        data = (p / "model.safetensors").read_bytes()
        (p / "model.safetensors").write_bytes(data[: len(data) // 2])
    variant("truncated", truncated, needle="model.safetensors")
    variant("wrong-shape", lambda p: save(p, {**state, "norm.weight": torch.ones(5, dtype=torch.float64)}),
            needle="norm.weight")
    variant("extra-key", lambda p: save(p, {**state, "stray.weight": torch.ones(2)}), needle="stray.weight")
    variant("missing-key", lambda p: save(p, {k: v for k, v in state.items() if k != "norm.weight"}),
            needle="norm.weight")
    variant("unknown-format", lambda p: save(p, {"model.layers.0.mlp.up_proj.weight": torch.ones(2, 2)}),
            needle="not an EAGLE head")

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))
    variant("pickle", lambda p: (p / "pytorch_model.bin").write_bytes(pickle.dumps({"fc.weight": Exploit()})),
            needle="pytorch_model.bin")
    other = tmp_path / "other-verifier"
    save_model(tiny_target(vocab=12, seed=3), other)
    variant("verifier-mismatch", lambda p: None, flags=["--verifier", str(other)], needle="vocab size")

    def missing_shard(p):
        (p / "pytorch_model.bin").unlink()
        (p / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {k: "model-00001-of-00002.safetensors" for k in state}}))
    variant("missing-shard", missing_shard, needle="model-00001-of-00002.safetensors")

    def mtp(p):
        save(p, {"eh_proj.weight": torch.ones(2, 2), "enorm.weight": torch.ones(2)})
    variant("mtp-module", mtp, needle="not an EAGLE head")

    def unknown_field(p):
        spec_dir = tmp_path / "spec-for-field"
        if not spec_dir.exists():
            Speculator.from_pretrained(good, verifier=verifier, quiet=True).save_pretrained(spec_dir)
        cfg = json.loads((spec_dir / "config.json").read_text()) | {"dflash_block": 4}
        (p / "config.json").write_text(json.dumps(cfg))
        (p / "pytorch_model.bin").unlink()
        (p / "model.safetensors").write_bytes((spec_dir / "model.safetensors").read_bytes())
    variant("unknown-field", unknown_field, needle="dflash_block")

    def flag_without_weight(p):
        cfg = json.loads((p / "config.json").read_text()) | {"norm_before_fc": True}
        (p / "config.json").write_text(json.dumps(cfg))
    variant("norm-flag-without-weight", flag_without_weight, needle="input_norm.weight")
    return cases


def test_corrupt_inputs_are_refused_and_leave_nothing_behind(tmp_path, target, verifier, capsys):
    cases = corrupt_cases(tmp_path, target, verifier)
    assert len(cases) >= 12
    for name, src, flags, needle in cases:
        out = tmp_path / f"out-{name}"
        with pytest.raises(SystemExit) as e:
            main(["convert", "--source", str(src), "--output", str(out), *(flags or ["--verifier", str(verifier)])])
        err = capsys.readouterr().err
        assert e.value.code == 2, name
        assert needle in err, (name, err)
        assert "pwned" not in err and not out.exists(), name
        assert not list(tmp_path.glob(f".out-{name}*")), name
    good = tmp_path / "good"
    (tmp_path / "a-file").write_text("x")
    for output, needle in ((tmp_path / "a-file", "is a file"), ("/dev/null/out", "cannot write"),
                           (good, "exists and is not empty")):
        with pytest.raises(SystemExit) as e:
            main(["convert", "--source", str(good), "--output", str(output), "--verifier", str(verifier)])
        assert e.value.code == 2 and needle in capsys.readouterr().err
    main(["convert", "--source", str(good), "--output", str(tmp_path / "o"), "--verifier", str(verifier)])
    main(["convert", "--source", str(good), "--output", str(tmp_path / "o"), "--verifier", str(verifier),
          "--overwrite", "--dtype", "float32"])
    assert json.loads((tmp_path / "o" / "config.json").read_text())["dtype"] == "float32"
    with pytest.raises(SystemExit):
        main(["convert", "--source", str(good), "--output", str(tmp_path / "p"), "--algorithm", "eagle"])
    assert "eagle_aux_hidden_state_layer_ids" in capsys.readouterr().err  # no verifier: the layers are not guessed
    with pytest.raises(SystemExit):
        main(["convert", "--source", str(good), "--output", str(tmp_path / "p"), "--algorithm", "eagle",
              "--verifier", str(verifier)])
    assert "holds an eagle3 head, not eagle" in capsys.readouterr().err


def test_a_hub_verifier_is_recorded_not_read(tmp_path, capsys):
    from specref.formats.default_model import default_head_dir

    main(["convert", "--source", str(default_head_dir()), "--output", str(tmp_path / "o"), "--verifier",
          "HuggingFaceTB/SmolLM2-135M-Instruct"])
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["speculators_config"]["verifier"]["name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    spec = Speculator.from_pretrained(tmp_path / "o", quiet=True)
    with pytest.raises(ValueError, match="not a local checkpoint directory"):
        spec.generate([[1, 2, 3]], max_new_tokens=2)
    assert spec.generate([[1, 2, 3]], max_new_tokens=2, verifier="smollm2").shape == (1, 5)


def test_rope_scaling_and_modelopt_layer_ids_are_kept(tmp_path, target):
    """Pitfalls 3 and 5 of formats.md: rope scaling survives conversion; ModelOpt's nested layer ids are read."""
    src = tmp_path / "src"
    head = head_of(target, "eagle3")
    original(head, src, "eagle3")
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 32}
    cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [0, 1, 1]}
    (src / "config.json").write_text(json.dumps(cfg))
    Speculator.from_pretrained(src, verifier=target, quiet=True).save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["eagle_aux_hidden_state_layer_ids"] == [0, 1, 1]
    rope = written["transformer_layer_config"]["rope_parameters"]
    assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
    assert Speculator.from_pretrained(tmp_path / "out", verifier=target, quiet=True).config.head.layer.rope_scaling


def test_atomic_directory_replaces_only_when_complete_and_never_a_filled_one(tmp_path):
    from specref.formats.files import atomic_directory

    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError
    assert (out / "a").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / "a").write_text("new")
    assert (out / "a").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError), atomic_directory(empty) as tmp:
        (tmp / "x").write_text("1")
        (empty / "meanwhile").write_text("someone else's")  # filled during the write: not ours to replace
    assert (empty / "meanwhile").exists() and not (empty / "x").exists()


def test_convert_refuses_a_dtype_for_legacy_heads_and_an_output_above_the_source(tmp_path, target, verifier, capsys):
    src = tmp_path / "heads" / "src"
    original(head_of(target, "eagle2"), src, "eagle2")
    for flags, needle in ((["--output", str(tmp_path / "o"), "--dtype", "float16"], "always float32"),
                          (["--output", str(tmp_path / "heads"), "--overwrite"], "contains it")):
        with pytest.raises(SystemExit):
            main(["convert", "--source", str(src), "--verifier", str(verifier), *flags])
        assert needle in capsys.readouterr().err
    assert src.exists() and not (tmp_path / "o").exists()
