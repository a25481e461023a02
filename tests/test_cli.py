"""`python -m specref generate`: outputs, JSON, and clear errors for bad input before any model work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from specref import SamplingParams, generate_ar, load_model, load_tokenizer, random_model, save_model
from specref.tools.cli import CLI

WORDS = ["<unk>", "<s>", "</s>", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "and", "then"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A target with a word-level tokenizer and a smaller draft, both saved as HF checkpoints."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("ckpt")
    save_model(random_model(tiny_config(vocab=len(WORDS), hidden=32, eos_token_id=(2,)), seed=1, scale=2.0),
               root / "target")
    save_model(random_model(tiny_config(vocab=len(WORDS), layers=1), seed=2), root / "draft")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(root / "target")
    return root / "target", root / "draft"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "specref", "generate", *args], capture_output=True, text=True,
                          timeout=300)


def test_json_output_matches_python_api(checkpoints):
    target, draft = checkpoints
    res = run_cli("--target", str(target), "--draft", str(draft), "--prompt-ids", "3,4,5", "--max-new-tokens",
                  "12", "--temperature", "0.8", "--top-k", "5", "--seed", "7", "--num-samples", "2",
                  "--method", "sps", "--gamma", "3", "--output", "json")
    assert res.returncode == 0, res.stderr
    record = json.loads(res.stdout)
    assert len(record["token_ids"]) == 2 and record["stats"]["proposed"] > 0
    assert set(record["stats"]) >= {"target_calls", "draft_calls", "accepted", "accept_hist", "tau", "alpha",
                                    "wall_time", "position_acceptance"}
    assert len(record["text"]) == 2
    # same seed, same output
    assert json.loads(run_cli(*res.args[4:]).stdout)["token_ids"] == record["token_ids"]


def test_text_prompt_and_greedy_ar_agree_with_api(checkpoints, capsys):
    target, draft = checkpoints
    CLI().generate("the cat sat", target=str(target), draft=str(draft), max_new_tokens=10, output="json")
    sps = json.loads(capsys.readouterr().out)
    CLI().generate("the cat sat", target=str(target), method="ar", max_new_tokens=10, output="json")
    ar = json.loads(capsys.readouterr().out)
    assert sps["token_ids"] == ar["token_ids"]
    tokenizer = load_tokenizer(target)
    prompt = tokenizer("the cat sat")["input_ids"]
    api = generate_ar(load_model(target), prompt, max_new_tokens=10, params=SamplingParams(0.0),
                      eos_token_ids=[2]).token_ids
    assert ar["token_ids"] == api
    assert ar["text"][0] == tokenizer.decode(api[0], skip_special_tokens=True)


def test_text_output_streams_then_prints_stats(checkpoints):
    target, draft = checkpoints
    res = run_cli("the cat", "--target", str(target), "--draft", str(draft), "--max-new-tokens", "6", "--temperature",
                  "1", "--seed", "3")
    assert res.returncode == 0, res.stderr
    text, stats = res.stdout.rstrip("\n").rsplit("\n", 1)
    record = json.loads(run_cli("the cat", "--target", str(target), "--draft", str(draft), "--max-new-tokens", "6",
                                "--temperature", "1", "--seed", "3", "--output", "json").stdout)
    assert text == record["text"][0]
    assert stats.startswith("[sps]") and "tok/s" in stats and "alpha" in stats


BAD = [
    ({"gamma": 0}, "gamma"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"num_samples": 0}, "num_samples"),
    ({"method": "beam"}, "method"),
    ({"dtype": "int8"}, "dtype"),
    ({"output": "xml"}, "output"),
    ({"prompt_ids": ""}, "empty"),
    ({"prompt_ids": "1,x"}, "prompt-ids"),
    ({"prompt_ids": "1,99"}, "prompt token ids"),
    ({"max_new_tokens": 200}, "max_position_embeddings"),
]


@pytest.mark.parametrize(("kwargs", "needle"), BAD)
def test_bad_arguments_fail_before_loading_weights(checkpoints, monkeypatch, kwargs, needle):
    target, draft = checkpoints
    monkeypatch.setattr("specref.tools.cli.read_weights", lambda *_: pytest.fail("weights read before the check"))
    args = {"target": str(target), "draft": str(draft), "prompt_ids": "3,4", **kwargs}
    with pytest.raises(ValueError, match=needle):
        CLI().generate(**args)


def test_bad_checkpoints(tmp_path, checkpoints):
    target, _ = checkpoints
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CLI().generate(target=str(tmp_path / "nope"), method="ar", prompt_ids="1", max_new_tokens=8)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CLI().generate(target=str(tmp_path / "bad"), method="ar", prompt_ids="1", max_new_tokens=8)
    other = tmp_path / "other_vocab"
    save_model(random_model(tiny_config(vocab=32), seed=3), other)
    with pytest.raises(ValueError, match="vocab size"):
        CLI().generate(target=str(target), draft=str(other), prompt_ids="1", max_new_tokens=8)
    truncated = tmp_path / "truncated"
    save_model(random_model(tiny_config(vocab=len(WORDS)), seed=3), truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        CLI().generate(target=str(truncated), method="ar", prompt_ids="1", max_new_tokens=8)


def test_error_exit_code_and_message(checkpoints):
    target, draft = checkpoints
    res = run_cli("--target", str(target), "--draft", str(draft), "--prompt-ids", "1", "--gamma", "0")
    assert res.returncode == 2 and "gamma" in res.stderr and "Traceback" not in res.stderr


def test_missing_tensor_and_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "m"
    save_model(random_model(tiny_config(), seed=4), path)
    weights = load_file(path / "model.safetensors")
    weights.pop("model.norm.weight")
    save_file(weights, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing tensors \['norm.weight'\]"):
        load_model(path)
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"norm\.weight has shape"):
        load_model(path)


@pytest.fixture(scope="module")
def heads(checkpoints, tmp_path_factory):
    """An EAGLE-1 and an EAGLE-3 head with random weights for the tiny target, saved as checkpoints."""
    from specref.eagle import random_head
    from specref.formats.eagle import save_head

    root, target = tmp_path_factory.mktemp("heads"), load_model(checkpoints[0])
    save_head(random_head("eagle", target, 4, scale=2.0), root / "eagle")
    save_head(random_head("eagle3", target, 5, draft_vocab_size=9, scale=2.0), root / "eagle3")
    return root


@pytest.mark.parametrize(("kind", "tree"), [("eagle", ["--tree", "static", "--choices", "medusa"]),
                                            ("eagle3", ["--total-tokens", "6", "--depth", "3", "--tree-top-k", "2"])])
def test_eagle_from_the_command_line(checkpoints, heads, kind, tree):
    target, _ = checkpoints
    common = ["--target", str(target), "--prompt-ids", "3,4,5", "--max-new-tokens", "12", "--output", "json",
              "--method", "eagle", "--eagle", str(heads / kind), *tree]
    greedy = run_cli(*common)
    assert greedy.returncode == 0, greedy.stderr
    record = json.loads(greedy.stdout)
    api = generate_ar(load_model(target), [3, 4, 5], max_new_tokens=12, params=SamplingParams(0.0),
                      eos_token_ids=[2])
    assert record["token_ids"] == api.token_ids
    assert record["stats"]["tree_size"] == (63 if kind == "eagle" else 5) and record["stats"]["target_calls"] > 0
    sampled = run_cli(*common, "--temperature", "0.9", "--top-p", "0.9", "--num-samples", "3", "--seed", "4")
    assert sampled.returncode == 0, sampled.stderr
    assert json.loads(sampled.stdout)["token_ids"] == json.loads(run_cli(*sampled.args[4:]).stdout)["token_ids"]


EAGLE_BAD = [
    ({"tree": "bushy"}, "tree must be static or dynamic"),
    ({"total_tokens": 0}, "total_tokens"),
    ({"depth": 0}, "depth"),
    ({"tree_top_k": 0}, "top_k"),
    ({"tree": "static", "choices": "bushy"}, "choices"),
    ({"tree": "static", "choices": [[0], [1, 1]]}, "no parent"),
    ({"tree": "static", "choices": [[0], [-1]]}, "rank -1"),
    ({"tree": "static", "choices": [[0], [0]]}, "repeats"),
]


@pytest.mark.parametrize(("kwargs", "needle"), EAGLE_BAD)
def test_bad_tree_arguments_fail_before_loading_weights(checkpoints, heads, monkeypatch, kwargs, needle):
    target, _ = checkpoints
    monkeypatch.setattr("specref.tools.cli.read_weights", lambda *_: pytest.fail("weights read before the check"))
    with pytest.raises(ValueError, match=needle):
        CLI().generate(target=str(target), method="eagle", eagle=str(heads / "eagle"), prompt_ids="3,4", **kwargs)


def test_eagle_needs_a_fitting_head(tmp_path, checkpoints, heads):
    from specref.eagle import random_head
    from specref.formats.eagle import save_head

    target, _ = checkpoints
    with pytest.raises(ValueError, match="needs --eagle"):
        CLI().generate(target=str(target), method="eagle", prompt_ids="3,4", max_new_tokens=8)
    wide = random_model(tiny_config(vocab=len(WORDS), hidden=16), seed=3)
    save_head(random_head("eagle", wide, 0), tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden"):
        CLI().generate(target=str(target), method="eagle", eagle=str(tmp_path / "wide"), prompt_ids="3,4",
                       max_new_tokens=8)
    with pytest.raises(FileNotFoundError):
        CLI().generate(target=str(target), method="eagle", eagle=str(tmp_path / "none"), prompt_ids="3,4",
                       max_new_tokens=8)
