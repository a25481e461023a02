"""`specref train-draft` end to end on a tiny target: it trains, saves a loadable draft, resumes, is seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_cli import checkpoints  # noqa: F401  (the tiny target + tokenizer fixture)

from specref.formats.hf import load_draft, load_model
from specref.train.draft import train_draft

SMALL = {"train_prompts": 6, "samples": 2, "max_new_tokens": 6, "epochs": 2, "eval_prompts": 2, "vocab": 8,
         "batch_tokens": 64, "eval_new_tokens": 8}


def test_train_resume_and_reproduce(tmp_path, checkpoints):  # noqa: F811
    target_dir = checkpoints[0]
    result = train_draft(str(tmp_path / "a"), target=str(target_dir), work_dir=str(tmp_path / "work"), **SMALL)
    assert (tmp_path / "work" / "train_state.pt").is_file()
    assert json.loads((tmp_path / "a" / "training.json").read_text())["steps"] == result["steps"] > 0
    target = load_model(target_dir)
    draft = load_draft(tmp_path / "a", target)
    assert draft.config.head_vocab_size == 8 and draft.config.num_hidden_layers == 2
    assert "model.embed_tokens.weight" not in load_file(tmp_path / "a" / "model.safetensors")
    # a second run in the same work dir finds every stage done and gives the same draft
    again = train_draft(str(tmp_path / "b"), target=str(target_dir), work_dir=str(tmp_path / "work"), **SMALL)
    assert again["final_loss"] == result["final_loss"]  # resumed at the last step: the losses were kept
    a, b = (load_file(tmp_path / d / "model.safetensors") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a fresh work dir with the same seed reproduces it bit for bit
    train_draft(str(tmp_path / "c"), target=str(target_dir), work_dir=str(tmp_path / "work2"), **SMALL)
    c = load_file(tmp_path / "c" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):
        train_draft(str(tmp_path / "d"), target=str(target_dir), work_dir=str(tmp_path / "work"),
                    **{**SMALL, "epochs": 3})
    assert not (tmp_path / "d").exists()
    # the work dir remembers what its data was made with, and work files that go bad are named
    with pytest.raises(ValueError, match=r"another max_new_tokens 6 \(now 7\); delete it or use another"):
        train_draft(str(tmp_path / "e"), target=str(target_dir), work_dir=str(tmp_path / "work"),
                    **{**SMALL, "max_new_tokens": 7})
    data = sorted((tmp_path / "work").glob("data_*"))[0]
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"work file {data} is corrupt or truncated"):
        train_draft(str(tmp_path / "f"), target=str(target_dir), work_dir=str(tmp_path / "work"), **SMALL)
    assert not list((tmp_path / "work").glob(".*"))  # no temporary file left behind


def test_an_existing_output_is_refused_at_the_start(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.setattr("specref.train.draft.prepare", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(FileExistsError, match="already exists"):
        train_draft(str(tmp_path / "out"), target="unused")


def test_a_divergent_loss_stops_training_at_once(tmp_path):
    from specref.train.distill import fit

    model = torch.nn.Linear(2, 2)
    data = [(torch.zeros(3),)] * 8
    calls = []

    def loss_of(rows):
        calls.append(len(rows))
        return model.weight.sum() * (float("nan") if len(calls) == 3 else 1.0)

    with pytest.raises(ValueError, match=r"training diverged: loss nan at step 3 of \d+ with learning rate"):
        fit(model, data, loss_of, lr=1e-3, epochs=2, batch_tokens=3, seed=0, state_file=tmp_path / "state.pt",
            settings={}, desc="test")
    assert len(calls) == 3 and torch.isfinite(model.weight).all() and not (tmp_path / "state.pt").exists()


def test_noise_drawn_in_training_resumes_where_it_stopped_and_spares_validation(tmp_path):
    # A loss that draws from torch's CPU generator, as `train-eagle --feature-noise` does: a run stopped after its
    # state at step 100 and resumed must end with the uninterrupted run's weights (it would not without the saved
    # generator), and the validation passes run in eval mode, where such noise is not drawn.
    from specref.train.distill import fit

    data = [(torch.zeros(3),)] * 8  # one batch a step: 150 steps, a state written at step 100
    modes: dict[bool, int] = {True: 0, False: 0}

    def run(state_file, stop_at=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(2, 2)
        steps = []

        def loss_of(rows):
            modes[model.training] += 1
            if model.training:
                steps.append(1)
                if len(steps) == stop_at:
                    raise KeyboardInterrupt
            return (model(torch.rand(4, 2)) ** 2).sum() if model.training else model.weight.sum()

        fit(model, data, loss_of, lr=1e-2, epochs=150, batch_tokens=30, seed=0, state_file=state_file, settings={},
            desc="test", val=data[:1])
        return model.weight.detach().clone()

    whole = run(tmp_path / "whole.pt")
    assert modes == {True: 150, False: 150}
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped.pt", stop_at=120)
    assert torch.load(tmp_path / "stopped.pt", weights_only=True)["step"] == 100
    assert torch.equal(run(tmp_path / "stopped.pt"), whole)


def test_each_prompt_is_answered_greedily_once(tmp_path, checkpoints):  # noqa: F811
    """More answers per prompt than temperatures: the extra ones are sampled, never a second greedy answer
    (which would repeat the first word for word), and a work dir an older specref filled with one is refused."""
    from specref.formats.hf import load_tokenizer
    from specref.formats.prompts import encode, load_prompts
    from specref.train.distill import answer_temperature, claim

    assert [answer_temperature(s) for s in range(6)] == [0.0, 0.7, 1.0, 0.7, 1.0, 0.7]
    target_dir, settings = checkpoints[0], {**SMALL, "samples": 4}
    tok = load_tokenizer(target_dir)
    prompts = [encode(tok, p) for p in load_prompts("train")[: settings["train_prompts"]]]
    claim(tmp_path / "old", target_dir, prompts, samples=4, max_new_tokens=settings["max_new_tokens"], top_k=32,
          seed=0)  # the fingerprint an older specref wrote: no answer schedule
    with pytest.raises(ValueError, match=r"another answer_temperatures unset \(now \[0.0, 0.7, 1.0, 0.7\]\)"):
        train_draft(str(tmp_path / "out"), target=str(target_dir), work_dir=str(tmp_path / "old"), **settings)


def test_bf16_training_is_its_own_run(tmp_path, checkpoints, monkeypatch, capsys):  # noqa: F811
    """--bf16 trains with bfloat16 products: weights differ from the fp32 run's, the loss stays finite, the
    result says so, and a work dir's fp32 training state is not resumed in bf16 (nor the other way). On a CPU
    without a bf16 path (AVX2: ~30x slower there) the request trains in fp32 and says so."""
    from specref import cpu

    monkeypatch.setattr(cpu, "onednn_bf16", lambda: True)  # bf16 runs (slowly) on an AVX2-only CPU too
    target_dir, runs = checkpoints[0], {}
    for bf16 in (False, True):
        out = tmp_path / f"bf16-{bf16}"
        runs[bf16] = train_draft(str(out), target=str(target_dir), work_dir=str(tmp_path / f"work-{bf16}"), bf16=bf16,
                                 **SMALL)
        assert runs[bf16]["bf16"] is bf16 and np.isfinite(runs[bf16]["final_loss"])
    a, b = (load_file(tmp_path / f"bf16-{x}" / "model.safetensors") for x in (False, True))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="other settings"):
        train_draft(str(tmp_path / "mixed"), target=str(target_dir), work_dir=str(tmp_path / "work-False"), bf16=True,
                    **SMALL)
    monkeypatch.setattr(cpu, "onednn_bf16", lambda: False)
    fell_back = train_draft(str(tmp_path / "fell-back"), target=str(target_dir), work_dir=str(tmp_path / "work-False"),
                            bf16=True, **SMALL)  # resumes the finished fp32 state: its settings match
    assert fell_back["bf16"] is False and "training in fp32" in capsys.readouterr().err
    assert all(torch.equal(a[k], t) for k, t in load_file(tmp_path / "fell-back" / "model.safetensors").items())


def test_validation_prompts_are_held_out_of_training(tmp_path, checkpoints, capsys):  # noqa: F811
    """--val-prompts N: every answer to the last N training prompts, and nothing else, leaves training for a
    validation loss measured after each epoch (resumed with the training state); N must leave a prompt to train."""
    from specref.formats.hf import load_tokenizer
    from specref.formats.prompts import encode, load_prompts
    from specref.train.distill import hold_out, load_examples

    target_dir, work = checkpoints[0], tmp_path / "work"
    result = train_draft(str(tmp_path / "a"), target=str(target_dir), work_dir=str(work), **SMALL, val_prompts=2)
    assert len(result["val_loss_per_epoch"]) == SMALL["epochs"]
    assert all(np.isfinite(v) and v > 0 for v in result["val_loss_per_epoch"])
    assert result["train_sequences"] == 4 * SMALL["samples"]
    printed = capsys.readouterr()  # beside the progress bar: stdout carries the command's JSON result only
    assert "epoch 2: validation loss" in printed.err and "validation" not in printed.out
    files = sorted(work.glob("data_*"))
    train, val = hold_out(load_examples(files, sorted(work.glob("labels_*"))), files, 2)
    prompts = [encode(load_tokenizer(target_dir), p) for p in load_prompts("train")[: SMALL["train_prompts"]]]
    prompt_of = {tuple(p): i for i, p in enumerate(prompts)}
    owners = [[prompt_of[tuple(row[0][: row[3] + 1].tolist())] for row in part] for part in (train, val)]
    assert sorted(owners[0]) == sorted(list(range(4)) * SMALL["samples"])
    assert sorted(owners[1]) == sorted([4, 5] * SMALL["samples"])
    again = train_draft(str(tmp_path / "b"), target=str(target_dir), work_dir=str(work), **SMALL, val_prompts=2)
    assert again["val_loss_per_epoch"] == result["val_loss_per_epoch"]  # resumed, not re-measured or lost
    with pytest.raises(ValueError, match=r"--val-prompts must lie in \[0, 6\)"):
        train_draft(str(tmp_path / "c"), target=str(target_dir), work_dir=str(tmp_path / "work2"), **SMALL,
                    val_prompts=6)
    assert not (tmp_path / "work2").exists()  # refused before any data was written
    twentieth = train_draft(str(tmp_path / "d"), target=str(target_dir), work_dir=str(tmp_path / "work3"),
                            **{**SMALL, "train_prompts": 40, "samples": 1, "epochs": 1}, val_prompts=None)
    assert twentieth["val_prompts"] == 2 and twentieth["train_sequences"] == 38  # None: a twentieth of the prompts
    with pytest.raises(ValueError, match=r"must lie in \[1, 1200\] \(the package's training prompts\), got 5000"):
        train_draft(str(tmp_path / "c"), target=str(target_dir), work_dir=str(tmp_path / "work2"),
                    **{**SMALL, "train_prompts": 5000})
    assert not (tmp_path / "work2").exists()


def test_another_text_batch_is_another_work_dir(tmp_path, checkpoints):  # noqa: F811
    """--text-batch N: the target answers N prompts at a time (data files start every N prompts); other batches
    seed the sampled answers otherwise, so a work dir refuses a batch size other than its own."""
    target_dir, work = str(checkpoints[0]), tmp_path / "work"
    result = train_draft(str(tmp_path / "a"), target=target_dir, work_dir=str(work), **SMALL, text_batch=4)
    assert sorted(f.name for f in work.glob("data_*")) == [f"data_{s}_{i:04d}.safetensors" for s in (0, 1)
                                                           for i in (0, 4)]
    assert result["text_batch"] == 4 and result["train_sequences"] == SMALL["train_prompts"] * SMALL["samples"]
    with pytest.raises(ValueError, match=r"another text_batch 4 \(now unset\)"):
        train_draft(str(tmp_path / "b"), target=target_dir, work_dir=str(work), **SMALL)
    with pytest.raises(ValueError, match="text_batch must be an integer >= 1"):
        from specref.tools.cli import CLI

        CLI().train_draft(str(tmp_path / "c"), target=target_dir, text_batch=0)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
