"""`specref train-eagle` end to end on a tiny target: both head kinds train, load, decode, and resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_cli import checkpoints  # noqa: F401  (the tiny target + tokenizer fixture)

from specref import SamplingParams, generate_ar
from specref.eagle_decode import generate as generate_eagle
from specref.formats.eagle import load_head
from specref.formats.hf import load_model
from specref.train.eagle import train_eagle
from specref.tree import TreeSpec

SMALL = {"train_prompts": 6, "samples": 2, "max_new_tokens": 6, "epochs": 2, "eval_prompts": 2, "vocab": 8,
         "batch_tokens": 64, "eval_new_tokens": 8, "tree": TreeSpec(total_tokens=5, depth=2, top_k=2)}


@pytest.mark.parametrize("kind", ["eagle", "eagle3"])
def test_train_eagle_saves_a_head_that_decodes_and_resumes(tmp_path, checkpoints, kind):  # noqa: F811
    target_dir = checkpoints[0]
    result = train_eagle(str(tmp_path / "a"), target=str(target_dir), work_dir=str(tmp_path / "work"), kind=kind,
                         **SMALL)
    assert result["steps"] > 0 and result["tau"] >= 1.0
    assert json.loads((tmp_path / "a" / "training.json").read_text())["kind"] == kind
    weights = load_file(tmp_path / "a" / "model.safetensors")
    assert all(w.dtype == torch.bfloat16 for k, w in weights.items() if k != "d2t")
    assert not any(k.startswith(("lm_head", "embed")) for k in weights) or kind == "eagle3"
    target = load_model(target_dir)
    head = load_head(tmp_path / "a", target)
    assert head.config.kind == kind
    prompt = [1, 5, 9]
    ar = generate_ar(target, prompt, max_new_tokens=10, params=SamplingParams(0.0))
    out = generate_eagle(target, head, prompt, tree=SMALL["tree"], max_new_tokens=10, params=SamplingParams(0.0))
    assert out.token_ids == ar.token_ids
    again = train_eagle(str(tmp_path / "b"), target=str(target_dir), work_dir=str(tmp_path / "work"), kind=kind,
                        **SMALL)
    assert again["final_loss"] == result["final_loss"]  # resumed at the last step: the losses were kept
    # states written before --weight-decay existed hold one optimizer group; runs without decay must still load them
    state = torch.load(tmp_path / "work" / f"train_state_{kind}.pt", weights_only=True)
    assert len(state["opt"]["param_groups"]) == 1
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(weights[k], b[k]) for k in weights)
    for other in ({"unroll": 1}, {"weight_decay": 0.1}):
        with pytest.raises(ValueError, match="other settings"):
            train_eagle(str(tmp_path / "c"), target=str(target_dir), work_dir=str(tmp_path / "work"), kind=kind,
                        **{**SMALL, **other})
    assert not (tmp_path / "c").exists()


def test_weight_decay_shrinks_matrices_only(tmp_path, checkpoints):  # noqa: F811
    # the warm-up keeps the learning rate ~1e-4 over SMALL's few steps, so only a large decay shows in them
    heads = {}
    for wd in (0.0, 1000.0):
        out = tmp_path / f"wd{wd:g}"
        train_eagle(str(out), target=str(checkpoints[0]), work_dir=str(tmp_path / f"work{wd:g}"), kind="eagle3",
                    weight_decay=wd, **SMALL)
        heads[wd] = load_file(out / "model.safetensors")
        assert json.loads((out / "training.json").read_text())["weight_decay"] == wd
    plain, decayed = heads[0.0], heads[1000.0]
    assert decayed["fc.weight"].float().norm() < 0.9 * plain["fc.weight"].float().norm()
    norm = next(k for k in plain if k.endswith("norm.weight"))
    assert torch.allclose(decayed[norm].float(), plain[norm].float(), rtol=0.01)
