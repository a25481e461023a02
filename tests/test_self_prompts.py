"""`specref write-prompts` and `--prompts FILE`: training prompts the target writes itself (Magpie), on a tiny
target whose tokenizer has a chat template."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from test_cli import checkpoints  # noqa: F401  (the tiny target + tokenizer fixture)
from test_train_draft import SMALL

from specref.formats.hf import load_model, load_tokenizer
from specref.formats.prompts import load_prompts, prompt_key, read_prompts
from specref.tools.cli import main
from specref.train.draft import train_draft
from specref.train.self_prompts import sample_prompts, user_turn_prefix

# The user's turn begins after "<s>": what the target writes from there, up to "</s>", is a user message.
TEMPLATE = "<s> {% for m in messages %}{{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s>{% endif %}"


@pytest.fixture(scope="module")
def chat_target(checkpoints, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("chat") / "target"
    shutil.copytree(checkpoints[0], path)
    tok = load_tokenizer(path)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(path)
    return path


def test_the_target_writes_new_ended_messages_and_never_a_heldout_prompt(chat_target, monkeypatch):
    target, tok = load_model(chat_target), load_tokenizer(chat_target)
    assert user_turn_prefix(tok) == [1]  # "<s>": the chat template cut where a user's message begins
    prompts, tried = sample_prompts(target, tok, 12, max_new_tokens=16, top_p=1.0, seed=3)
    assert len(prompts) == 12 and tried >= 12
    assert len({prompt_key(p) for p in prompts}) == 12 and all(p.strip() == p and p for p in prompts)
    assert all(len(p.split()) <= 15 for p in prompts)  # ended by "</s>" within 16 tokens; cut-off ones dropped
    assert sample_prompts(target, tok, 12, max_new_tokens=16, top_p=1.0, seed=3)[0] == prompts  # seeded
    # a message that is a held-out prompt is skipped, and the rest keep their order
    monkeypatch.setattr("specref.train.self_prompts.load_prompts", lambda name: [prompts[0].upper() + "  "])
    again, _ = sample_prompts(target, tok, 12, max_new_tokens=16, top_p=1.0, seed=3)
    assert prompts[0] not in again and again[:11] == prompts[1:]


def test_a_target_that_never_ends_a_message_is_an_error(chat_target, checkpoints):  # noqa: F811
    target, tok = load_model(chat_target), load_tokenizer(chat_target)
    with pytest.raises(ValueError, match=r"ended only 0 new messages of 5 in 16 tries"):
        sample_prompts(target, tok, 5, max_new_tokens=1, batch=8, max_batches=2)  # "</s>" at once: empty
    with pytest.raises(ValueError, match="no chat template"):
        user_turn_prefix(load_tokenizer(checkpoints[0]))


def test_write_prompts_then_train_on_them(chat_target, tmp_path, capsys):
    out = tmp_path / "mine.jsonl"
    main(["write-prompts", str(out), "--target", str(chat_target), "--count", "6", "--max-new-tokens", "16",
          "--top-p", "1"])
    assert json.loads(capsys.readouterr().out)["prompts"] == 6
    written = read_prompts(out)
    assert len(written) == 6 and all(json.loads(line)["prompt"] for line in out.read_text().splitlines())
    result = train_draft(str(tmp_path / "draft"), target=str(chat_target), work_dir=str(tmp_path / "work"),
                         **SMALL, prompts=str(out))
    assert result["prompts_file"] == str(out) and result["train_sequences"] == 6 * SMALL["samples"]
    with pytest.raises(ValueError, match="another prompts"):  # the work dir knows which prompts its text answers
        train_draft(str(tmp_path / "again"), target=str(chat_target), work_dir=str(tmp_path / "work"), **SMALL)
    with pytest.raises(ValueError, match=r"--train-prompts must lie in \[1, 6\] \(--prompts .*mine.jsonl\), got 7"):
        train_draft(str(tmp_path / "more"), target=str(chat_target), **{**SMALL, "train_prompts": 7},
                    prompts=str(out))


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "fine"}', "not json"], r"line 2: expected a JSON object"),
    (['{"text": "x"}'], r"line 1: expected a JSON object"),
    (['{"prompt": "  "}'], r"line 1: the prompt must be non-empty text"),
    (["", " "], "holds no prompts"),
    (['{"prompt": "fine"}', json.dumps({"prompt": load_prompts("heldout")[3].lower()})],
     r"holds 1 of the held-out prompts \(such as"),
])
def test_a_bad_prompts_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys, lines, message):
    for module in ("specref.formats.hf", "specref.train.distill"):
        monkeypatch.setattr(f"{module}.load_model", lambda *a, **k: pytest.fail("work started"))
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(lines) + "\n")
    for command in ("train-draft", "train-eagle"):
        with pytest.raises(SystemExit) as exit_:
            main([command, str(tmp_path / "out"), "--prompts", str(path)])
        assert exit_.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_write_prompts_refuses_bad_arguments_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("specref.train.self_prompts.write_prompts", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "old.jsonl").write_text("{}\n")
    for args, message in ([str(tmp_path / "p.txt")], "write a .jsonl file"), \
            ([str(tmp_path / "old.jsonl")], "already exists"), \
            ([str(tmp_path / "p.jsonl"), "--temperature", "0"], "--temperature must be > 0"), \
            ([str(tmp_path / "p.jsonl"), "--top-p", "1.5"], "top_p"), \
            ([str(tmp_path / "p.jsonl"), "--count", "0"], "count"):
        with pytest.raises(SystemExit):
            main(["write-prompts", *args])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
