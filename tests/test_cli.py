"""`python -m specref generate`: outputs, JSON, and clear errors for bad input before any model work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from specref import SamplingParams, generate_ar, generate_sps, load_model, load_tokenizer, random_model, save_model
from specref.formats.hf import read_config
from specref.sps import DEVICE_GAMMAS
from specref.tools.cli import CLI, METHODS, choose_method

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


def test_int4_target_from_the_command_line(checkpoints, capsys):
    """--quantize int4 decodes with the 4-bit target that `cpu.quantize_int4` builds."""
    from specref.cpu import quantize_int4

    target, _ = checkpoints
    CLI().generate(target=str(target), method="ar", prompt_ids="3,4,5", max_new_tokens=12, quantize="int4",
                   output="json")
    cli = json.loads(capsys.readouterr().out)["token_ids"]
    model = load_model(target)
    quantize_int4(model)
    assert cli == generate_ar(model, [3, 4, 5], max_new_tokens=12, params=SamplingParams(0.0),
                              eos_token_ids=[2]).token_ids


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
    ({"seed": 2**70}, "seed must be below 2\\*\\*64"),
    ({"num_samples": 10**9, "max_new_tokens": 8, "gamma": 3}, "KV caches for 1000000000 samples x 14 positions needs"),
    ({"device": "meta"}, "cpu or cuda"),
    ({"quantize": "int8"}, "--quantize must be int4"),
    ({"quantize": "int4", "dtype": "float64"}, "--quantize int4 needs --device cpu and --dtype float32"),
    ({"quantize": "int4"}, "qkv_proj maps 16 -> 32"),  # the draft's width is no whole group of 32
]


DRAFTER = [  # (draft given, eagle given, method) -> the method run, or the error
    ({"method": None}, "needs a drafter"),  # a --target checkpoint alone: nothing to speculate with
    ({"method": None, "draft": True}, "sps"),
    ({"method": None, "eagle": True}, "eagle"),
    ({"method": "ar"}, "ar"),
    ({"method": None, "draft": True, "eagle": True}, "not both"),
    ({"method": "eagle", "draft": True}, "--draft is the drafter of --method sps, not of --method eagle"),
    ({"method": "ar", "eagle": True}, "--eagle is the drafter of --method eagle, not of --method ar"),
    ({"method": "sps"}, "--method sps needs --draft"),
    ({"method": None, "eagle": True, "gamma": 2}, r"--gamma sets SpS's draft, but the method here is eagle \(from"),
    ({"method": "ar", "greedy_draft": True}, "--greedy-draft sets SpS's draft, but the method here is ar: add"),
    ({"method": None, "eagle": True, "prompt_ids": "3"}, "EAGLE decoding needs prompts of at least 2 tokens"),
    ({"method": "eagle", "eagle": True, "tree": "dynamic", "tree_top_k": 10}, "top_k 10 .* the head drafts from 9"),
    ({"method": None, "draft": True, "tree": "static", "depth": 3}, "--tree, --depth apply to EAGLE's tree and "
                                                                      "head, but the method here is sps"),
    ({"method": "ar", "choices": "small"}, "--choices applies to EAGLE's tree and head, but the method here is ar"),
    ({"method": "sps", "draft": True, "head_dtype": "bfloat16"}, "--head-dtype applies to EAGLE's tree and head, but"),
    ({"method": None, "eagle": True, "head_dtype": "int8"}, "--head-dtype must be one of float32, float64, bfloat16"),
    ({"method": None, "eagle": True, "head_dtype": "bfloat16"}, "eagle"),
]


@pytest.mark.parametrize(("kwargs", "outcome"), DRAFTER)
def test_the_method_follows_the_drafter_given(checkpoints, heads, monkeypatch, kwargs, outcome):
    """Without --method, --draft means SpS and --eagle EAGLE; a drafter the method would not use is an error,
    not silently ignored (the default method changed from SpS to EAGLE: --gamma alone must not mean EAGLE)."""
    target, draft = checkpoints
    ran = []
    monkeypatch.setattr("specref.formats.hf.read_weights", lambda *_: (ran.append(1), pytest.fail("stop"))[1])
    args = {"prompt_ids": "3,4", **kwargs, "draft": str(draft) if kwargs.get("draft") else None,
            "eagle": str(heads / "eagle3") if kwargs.get("eagle") else None}
    if outcome in METHODS:
        with pytest.raises(pytest.fail.Exception):
            CLI().generate(target=str(target), max_new_tokens=4, **args)
        assert ran  # every check passed: the weights were about to be read
        assert choose_method(kwargs["method"], args["draft"], args["eagle"], default_pair=False) == outcome
    else:
        with pytest.raises(ValueError, match=outcome):
            CLI().generate(target=str(target), max_new_tokens=4, **args)
    # The default pair needs no drafter: it ships both, and EAGLE is its default.
    assert choose_method(None, None, None, default_pair=True) == "eagle"
    with pytest.raises(ValueError, match=r"--gamma sets SpS's draft, but the method here is eagle \(the default\)"):
        CLI().generate("hi", gamma=2)  # refused before the default model's cache is even looked at
    assert choose_method("sps", None, None, default_pair=True) == "sps"


@pytest.mark.parametrize(("kwargs", "needle"), BAD)
def test_bad_arguments_fail_before_loading_weights(checkpoints, monkeypatch, kwargs, needle):
    target, draft = checkpoints
    monkeypatch.setattr("specref.formats.hf.read_weights", lambda *_: pytest.fail("weights read before the check"))
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


@pytest.mark.parametrize(("edit", "needle"), [
    ({"vocab_size": "lots"}, "vocab_size must be an integer, got 'lots'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be >= 1, got 0"),
    ({"max_position_embeddings": 2.5}, "max_position_embeddings must be an integer"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be a bool"),
    ({"hidden_size": None}, "required field 'hidden_size' is missing"),
])
def test_config_fields_are_type_checked_naming_field_and_file(tmp_path, edit, needle):
    path = tmp_path / "ckpt"
    save_model(random_model(tiny_config(vocab=len(WORDS)), seed=3), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match=f"config.json: config: {needle}"):
        read_config(path)


def test_integer_weights_are_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "ints"
    save_model(random_model(tiny_config(vocab=len(WORDS)), seed=3), path)
    weights = load_file(path / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].long()
    save_file(weights, path / "model.safetensors")
    with pytest.raises(ValueError, match=r"norm\.weight has dtype torch\.int64, expected a floating-point"):
        load_model(path)


def test_a_shard_index_cannot_leave_its_directory(tmp_path):
    good = tmp_path / "good"
    save_model(random_model(tiny_config(vocab=len(WORDS)), seed=3), good)
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((good / "config.json").read_text())
    (evil / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../good/model.safetensors"}}))
    with pytest.raises(ValueError, match=r"names shards outside its directory: \['../good/model.safetensors'\]"):
        load_model(evil)


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


def test_calibrate_tries_sampled_trees_only_when_sampling(checkpoints, heads, tmp_path, monkeypatch):
    """calibrate on a tiny pair: at T = 0 the dynamic grid, at T > 0 also every sampled static tree; each row a
    real measurement (tau >= 1), the best speed-up over AR first. Bad settings are refused before any model."""
    from specref.tools import calibrate as cal

    monkeypatch.setattr(cal, "calibrate", lambda *_, **__: pytest.fail("calibrate ran"))
    for kwargs, needle in (({"temperature": -1.0}, "temperature must be"), ({"seed": -1}, "seed must be"),
                           ({"max_new_tokens": 0}, "max_new_tokens")):
        with pytest.raises(ValueError, match=needle):
            CLI().calibrate(**kwargs)
    monkeypatch.undo()
    monkeypatch.setattr(cal, "default_target_dir", lambda: checkpoints[0])
    monkeypatch.setattr(cal, "default_head_dir", lambda: heads / "eagle3")
    for temperature in (0.0, 1.0):
        result = cal.calibrate(str(tmp_path / "c.json"), prompts=1, max_new_tokens=4, temperature=temperature)
        names = [r["tree"] for r in result["rows"]]
        sampled = {n for n in names if n.startswith("sampled ")}
        assert sampled == (set() if temperature == 0 else {f"sampled {k}" for k in cal.SAMPLED_GRID})
        assert len(names) - len(sampled) == len([n for n in names if n.startswith("dynamic ")]) > 30
        assert all(r["tau"] >= 1 for r in result["rows"])
        speedups = [r["speedup_vs_ar"] for r in result["rows"]]
        assert speedups == sorted(speedups, reverse=True)
        # AR ran before the grid and after every block of trees: each speed-up has AR runs on both sides
        assert len(result["ar_runs"]) == 1 + -(-len(names) // cal.AR_EVERY)
        assert json.loads((tmp_path / "c.json").read_text())["temperature"] == temperature
        # both CPU products timed for a one-token step and a verification's worth of tokens
        assert {k: sorted(v) for k, v in result["packing_ms"].items()} == {"default": [1, 6], "packed": [1, 6]}
        assert all(ms > 0 for v in result["packing_ms"].values() for ms in v.values())


@pytest.mark.parametrize(("kind", "tree"), [("eagle", ["--tree", "static", "--choices", "medusa"]),
                                            ("eagle3", ["--total-tokens", "6", "--depth", "3", "--tree-top-k", "2"]),
                                            ("eagle", ["--tree", "sampled", "--choices", "small"])])
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
    size = {"medusa": 63, "small": 7}.get(tree[-1], 5)
    assert record["stats"]["tree_size"] == size and record["stats"]["target_calls"] > 0
    sampled = run_cli(*common, "--temperature", "0.9", "--top-p", "0.9", "--num-samples", "3", "--seed", "4")
    assert sampled.returncode == 0, sampled.stderr
    assert json.loads(sampled.stdout)["token_ids"] == json.loads(run_cli(*sampled.args[4:]).stdout)["token_ids"]


def test_default_tree_follows_the_cpu_product(checkpoints, heads):
    # packed products cost about one step up to 8 rows, PyTorch's default ones grow past 3 (`tree.DEVICE_TREES`)
    target, _ = checkpoints
    for flag, size in (("--pack", 5), ("--nopack", 2)):
        res = run_cli("--target", str(target), "--prompt-ids", "3,4,5", "--max-new-tokens", "8", "--output", "json",
                      "--method", "eagle", "--eagle", str(heads / "eagle3"), flag)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["stats"]["tree_size"] == size


def test_sps_drafts_the_devices_default_gamma(checkpoints, capsys):
    # without --gamma, SpS drafts `sps.DEVICE_GAMMAS`'s count a round, packed or not; --gamma overrides it
    target, draft = checkpoints
    for pack, gamma in ((True, None), (False, None), (True, 3)):
        CLI().generate(prompt_ids=(3, 4, 5), target=str(target), draft=str(draft), max_new_tokens=8, pack=pack,
                       gamma=gamma, output="json")
        stats = json.loads(capsys.readouterr().out)["stats"]
        drafts = gamma or DEVICE_GAMMAS["cpu"]
        assert len(stats["position_acceptance"]) == drafts and stats["draft_calls"] == drafts * stats["target_calls"]


EAGLE_BAD = [
    ({"tree": "bushy"}, "tree must be static or dynamic"),
    ({"total_tokens": 0}, "total_tokens"),
    ({"depth": 0}, "depth"),
    ({"tree_top_k": 0}, "top_k"),
    ({"tree": "static", "choices": "bushy"}, "choices"),
    ({"tree": "static", "choices": [[0], [1, 1]]}, "no parent"),
    ({"tree": "static", "choices": [[0], [-1]]}, "rank -1"),
    ({"tree": "static", "choices": [[0], [0]]}, "repeats"),
    ({"tree": "sampled", "choices": [[0], [2]]}, "ranks 0..m-1"),
]


@pytest.mark.parametrize(("kwargs", "needle"), EAGLE_BAD)
def test_bad_tree_arguments_fail_before_loading_weights(checkpoints, heads, monkeypatch, kwargs, needle):
    target, _ = checkpoints
    monkeypatch.setattr("specref.formats.hf.read_weights", lambda *_: pytest.fail("weights read before the check"))
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


@pytest.mark.parametrize("prompt", ["Hi, there", "123", "True", "[1,2]", "--dashes"])
def test_a_text_prompt_is_always_text(checkpoints, prompt):
    """fire reads arguments as Python literals; the front end hands text prompts over quoted."""
    target, _ = checkpoints
    flags = ["--target", str(target), "--method", "ar", "--max-new-tokens", "3", "--raw", "--output", "json"]
    res = run_cli(*flags, "--", prompt) if prompt.startswith("--") else run_cli(prompt, *flags)
    assert res.returncode == 0, res.stderr
    ids = load_tokenizer(target)(prompt, add_special_tokens=True)["input_ids"]
    expected = generate_ar(load_model(target), ids, max_new_tokens=3, params=SamplingParams(0.0))
    assert json.loads(res.stdout)["token_ids"] == expected.token_ids


@pytest.mark.parametrize(("args", "needle"), [
    (["--gamm", "2"], "unknown flag --gamm for generate; did you mean --gamma?"),
    (["--max_new_token", "8"], "did you mean --max-new-tokens?"),
    (["two", "words"], "generate takes PROMPT positional argument(s), got 3"),
    (["--seed"], "--seed needs a value"),
])
def test_bad_flags_fail_at_once_with_a_suggestion(checkpoints, args, needle):
    res = run_cli("the cat", "--target", str(checkpoints[0]), *args)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [f"specref: error: {res.stderr.split('error: ', 1)[1].strip()}"]
    assert needle in res.stderr


def test_help_is_on_stdout_readable_and_imports_no_torch():
    probe = "import sys; from specref.tools.cli import main; main(sys.argv[1:]); print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", probe, "generate", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stderr == ""
    assert "--max-new-tokens INT" in res.stdout and "--temperature FLOAT" in res.stdout
    assert "--pack / --nopack" in res.stdout and res.stdout.strip().endswith("False")
    res = subprocess.run([sys.executable, "-m", "specref", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "train-draft" in res.stdout and "train-eagle" in res.stdout
    assert "\n  write-prompts  Have the target" in res.stdout and "\n  generate       Continue" in res.stdout
    res = subprocess.run([sys.executable, "-m", "specref", "gen"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "did you mean generate?" in res.stderr


# The child restores Python's own SIGINT handler: started from a background job, it inherits SIGINT as ignored
# (as a shell's `cmd &` does), Python then installs none, and the Ctrl-C below would never arrive.
STALLED = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from specref.tools.cli import CLI, main
def stalled(self, *args, **kwargs):
    print("ready", flush=True)
    if sys.argv[1] == "pipe":
        raise BrokenPipeError
    time.sleep(60)
CLI.generate = stalled
main(["generate", "x", "--method", "ar"])
"""


def test_ctrl_c_exits_130_with_one_line():
    import signal

    proc = subprocess.Popen([sys.executable, "-c", STALLED, "sleep"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "specref: interrupted\n"


def test_a_closed_pipe_ends_quietly():
    res = subprocess.run([sys.executable, "-c", STALLED, "pipe"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 141 and res.stderr == ""


def test_the_api_checks_its_arguments_as_the_cli_does(checkpoints):
    target = load_model(checkpoints[0])
    for bad in (float("inf"), float("nan"), -1.0, "1"):
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            SamplingParams(temperature=bad)
    with pytest.raises(ValueError, match="seed must be below 2\\*\\*64"):
        generate_ar(target, [3, 4], max_new_tokens=2, seed=2**70)
    with pytest.raises(ValueError, match="prompt_ids must be a list of token ids, got 3"):
        generate_ar(target, 3, max_new_tokens=2)
    from specref.autoregressive import generate_batch

    with pytest.raises(ValueError, match="prompts must be a list of token-id lists"):
        generate_batch(target, [3, 4], max_new_tokens=2)
    with pytest.raises(ValueError, match="eos_token_ids must be a token id or a list of them"):
        generate_ar(target, [3, 4], max_new_tokens=2, eos_token_ids="2")
    one = generate_ar(target, [3, 4], max_new_tokens=20, eos_token_ids=2, params=SamplingParams(0.0))
    assert one.token_ids == generate_ar(target, [3, 4], max_new_tokens=20, eos_token_ids=[2],
                                        params=SamplingParams(0.0)).token_ids
    with pytest.raises(ValueError, match=r"10000000000 samples needs [\d.]+ GiB but only [\d.]+ GiB"):
        generate_ar(target, [3, 4], max_new_tokens=2, num_samples=10**10)
    with pytest.raises(ValueError, match="probabilities for 1000000000 drafts needs"):
        generate_sps(target, target, [3, 4], max_new_tokens=12, gamma=10**9)
    from specref.kv_cache import KVCache

    with pytest.raises(ValueError, match="a KV cache for 1000 sequences x 100000 positions needs"):
        KVCache(30, 1000, 8, 100_000, 128, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="--device meta: specref runs on cpu or cuda"):
        CLI().generate("the cat", target=str(checkpoints[0]), device="meta")
    with pytest.raises(ValueError, match="temperature"):
        generate_ar(random_model(tiny_config(vocab=8), seed=0, scale=3.0), [1, 2], max_new_tokens=2,
                    params=SamplingParams(temperature=1e-300))


def test_problems_in_arguments_and_directories_are_found_before_any_model(tmp_path, checkpoints, monkeypatch):
    target, _ = checkpoints
    monkeypatch.setattr("specref.formats.hf.build_model", lambda *_, **__: pytest.fail("a model was built"))
    monkeypatch.setattr("specref.formats.default_model.resolve_target", lambda *_: pytest.fail("cache verified"))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        CLI().generate("hi", max_new_tokens=0)
    monkeypatch.undo()
    monkeypatch.setattr("specref.formats.hf.build_model", lambda *_, **__: pytest.fail("a model was built"))
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights in"):
        CLI().generate(target=str(target), method="eagle", eagle=str(tmp_path / "head"), prompt_ids="3,4")
    from specref.eagle import random_head
    from specref.formats.eagle import save_head

    wide = random_model(tiny_config(vocab=len(WORDS), hidden=16), seed=3)
    save_head(random_head("eagle", wide, 0), tmp_path / "wide")
    with pytest.raises(ValueError, match="hidden size"):
        CLI().generate(target=str(target), method="eagle", eagle=str(tmp_path / "wide"), prompt_ids="3,4")
    with pytest.raises(ValueError, match="temperature 1e-300 is below 1e-30"):
        CLI().generate(target=str(target), method="ar", prompt_ids="3,4", temperature=1e-300)
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"cannot write .*model\.gguf/out: "):
        save_model(random_model(tiny_config(vocab=8), seed=0), tmp_path / "model.gguf" / "out")
    with pytest.raises(ValueError, match="is a file, not a checkpoint directory"):
        CLI().generate(target=str(tmp_path / "model.gguf"), method="ar", prompt_ids="3,4")



@pytest.mark.parametrize(("argv", "fire_argv"), [
    (["generate", "x", "--pack", "False"], ["generate", "'x'", "--nopack"]),
    (["generate", "--raw", "true", "x"], ["generate", "'x'", "--raw"]),
    (["generate", "x", "--greedy-draft=false"], ["generate", "'x'", "--nogreedy_draft"]),
    (["generate", "x", "--nopack=True"], ["generate", "'x'", "--nopack"]),
    (["generate", "--prompt", "it's \"quoted\" \\ text"], ["generate", "--prompt='it\\'s \"quoted\" \\\\ text'"]),
    (["bench", "--out", "o", "--gammas", "1,2", "--seed=-1"], ["bench", "--out='o'", "--gammas=1,2", "--seed=-1"]),
])
def test_switches_values_and_keyword_spellings_reach_fire_as_meant(argv, fire_argv):
    from specref.tools.args import check
    from specref.tools.cli import COMMANDS

    assert check(COMMANDS, argv)[1] == fire_argv


def test_switch_values_and_integer_lists_are_strict(checkpoints):
    from specref.tools.cli import parse_ids

    res = run_cli("x", "--target", str(checkpoints[0]), "--pack=maybe")
    assert res.returncode == 2 and "--pack takes no value or one of true/false, got 'maybe'" in res.stderr
    assert parse_ids("1,2,3") == parse_ids((1, 2, 3)) == parse_ids("[1, 2, 3]") == [1, 2, 3]
    for bad in ("1.9,2", (True, 2), 1.5, (1.0, 2), "x"):
        with pytest.raises(ValueError, match="--gammas must be comma-separated integers"):
            parse_ids(bad, "--gammas")
    target, draft = checkpoints
    res = run_cli("the cat", "--target", str(target), "--draft", str(draft), "--greedy-draft=false", "--pack", "False",
                  "--max-new-tokens", "3", "--output", "json")
    assert res.returncode == 0, res.stderr


def test_the_head_runs_in_the_dtype_asked_for(checkpoints, heads, monkeypatch):
    """--head-dtype reaches the decoding loop (default: the target's dtype); bench refuses a bad one, and one
    for groups without an EAGLE row, before any model work."""
    import torch

    from specref import eagle_decode
    from specref.tools import bench

    seen = []
    monkeypatch.setattr(eagle_decode, "generate", lambda tgt, head, *_, **__: (seen.append(head.dtype),
                                                                            pytest.fail("stop"))[1])
    for dtype, expected in ((None, torch.float32), ("bfloat16", torch.bfloat16), ("float64", torch.float64)):
        with pytest.raises(pytest.fail.Exception):
            CLI().generate(target=str(checkpoints[0]), eagle=str(heads / "eagle3"), prompt_ids="3,4",
                           max_new_tokens=4, head_dtype=dtype)
        assert seen.pop() == expected
    monkeypatch.setattr(bench, "bench", lambda *_, **__: pytest.fail("bench ran"))
    for kwargs, needle in (({"head_dtype": "int8"}, "--head-dtype must be one of"),
                           ({"head_dtype": "bfloat16", "groups": "sps"}, "--groups runs no EAGLE row")):
        with pytest.raises(ValueError, match=needle):
            CLI().bench(**kwargs)


def test_show_rounds_and_show_tree(checkpoints, heads, tmp_path, capsys):
    """--show-rounds prints one coloured line per round; --show-tree writes the first EAGLE round as SVG."""
    import xml.etree.ElementTree as ET

    from specref.tools.cli import CLI

    target, draft = checkpoints
    for kwargs, needle in (({"method": "ar", "show_rounds": True}, "--method sps or eagle"),
                           ({"method": "sps", "draft": str(draft), "show_tree": "t.svg"}, "EAGLE tree"),
                           ({"method": "eagle", "eagle": str(heads / "eagle3"), "show_tree": "t.png"}, ".svg"),
                           ({"method": "eagle", "eagle": str(heads / "eagle3"),
                             "show_tree": str(tmp_path / "missing" / "t.svg")}, "directory does not exist")):
        with pytest.raises(ValueError, match=needle):
            CLI().generate(target=str(target), prompt_ids="3,4", max_new_tokens=4, **kwargs)
    CLI().generate(target=str(target), draft=str(draft), method="sps", prompt_ids="3,4,5", max_new_tokens=8,
                   show_rounds=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("round")]
    assert lines and all("accepted +" in line for line in lines)
    svg = tmp_path / "tree.svg"
    CLI().generate(target=str(target), method="eagle", eagle=str(heads / "eagle3"), prompt_ids="3,4,5",
                   max_new_tokens=4, show_tree=str(svg))
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_show_rounds_keeps_json_output_clean(checkpoints, capsys):
    from specref.tools.cli import CLI

    target, draft = checkpoints
    CLI().generate(target=str(target), draft=str(draft), method="sps", prompt_ids="3,4,5", max_new_tokens=6,
                   show_rounds=True, output="json")
    captured = capsys.readouterr()
    assert json.loads(captured.out)["token_ids"] and "round" in captured.err
