"""Command line: `python -m specref generate ...` (run `python -m specref generate --help`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from specref import autoregressive, sps
from specref.checks import check_count, check_pair, check_request
from specref.loading import build_model, load_tokenizer, read_config, read_weights
from specref.logits import SamplingParams
from specref.model import Llama, ModelConfig, random_model

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
METHODS = ("ar", "sps")

# Stand-in pair until a real default model ships: a random target and a smaller random draft.
TINY_TARGET = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
TINY_DRAFT = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512)


def parse_ids(value: Any) -> list[int]:
    """`--prompt-ids 1,2,3` reaches us as a tuple, an int or a string, depending on how fire parsed it."""
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, tuple | list):
        items = list(value)
    elif isinstance(value, str):
        items = [s for s in value.replace(" ", ",").split(",") if s]
    else:
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {value!r}")
    try:
        return [int(s) for s in items]
    except (TypeError, ValueError):
        raise ValueError(f"--prompt-ids must be comma-separated integers, got {value!r}") from None


def resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a valid torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


class CLI:
    """specref: lossless speculative decoding, a readable reference."""

    def generate(self, prompt: str | None = None, *, target: str | None = None, draft: str | None = None,
                 method: str = "sps", gamma: int = 4, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32", prompt_ids: Any = None, num_samples: int = 1, output: str = "text",
                 greedy_draft: bool = False) -> None:
        """Generate a continuation of PROMPT (text) or --prompt-ids with the target, drafted by --draft.

        --method ar|sps; --gamma: drafts per round; --temperature 0 is greedy; --top-k 0 and --top-p 1 disable
        the filters; --num-samples N draws N independent continuations; --output text|json;
        --greedy-draft: the draft proposes its argmax (verified with a one-hot q, still lossless).
        Without --target, a tiny random model pair runs on token ids (default prompt ids 1,2,3).
        """
        # Every argument is checked before any weights are read.
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        check_count("gamma", gamma)
        if method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        if output not in ("text", "json"):
            raise ValueError(f"--output must be text or json, got {output!r}")
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if prompt is not None and prompt_ids is not None:
            raise ValueError("give either a text prompt or --prompt-ids, not both")
        if prompt == "":
            raise ValueError("prompt is empty")
        if draft is not None and target is None:
            raise ValueError("--draft needs --target (the default pair comes as a whole)")
        dev = resolve_device(device)
        ids = parse_ids(prompt_ids) if prompt_ids is not None else None

        if target is None:
            print("specref: no --target given; running a tiny random model pair (token ids only)",
                  file=sys.stderr)
            configs, tokenizer = (TINY_TARGET, TINY_DRAFT), None
            if prompt is None and ids is None:
                ids = [1, 2, 3]
        else:
            configs = (read_config(target), read_config(draft) if draft is not None else None)
            if method == "sps" and configs[1] is None:
                raise ValueError("--method sps needs --draft (or use --method ar)")
            tokenizer = load_tokenizer(target)
        if configs[1] is not None:
            check_pair(*configs)
        if ids is None:
            if prompt is None:
                raise ValueError("give a text prompt or --prompt-ids")
            if tokenizer is None:
                raise ValueError("this model has no tokenizer: give the prompt as --prompt-ids 1,2,3")
            ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        check_count("num_samples", num_samples)
        check_request([ids], [c for c in configs if c is not None], max_new_tokens, seed)

        if target is None:
            tgt = random_model(TINY_TARGET, seed=1, dtype=DTYPES[dtype], device=dev)
            drf = random_model(TINY_DRAFT, seed=2, dtype=DTYPES[dtype], device=dev)
        else:
            tgt = build_model(configs[0], read_weights(target), dtype=DTYPES[dtype], device=dev)
            drf = None if draft is None else build_model(configs[1], read_weights(draft), dtype=DTYPES[dtype],
                                                         device=dev)
        result = self._run(tgt, drf, ids, method=method, gamma=gamma, max_new_tokens=max_new_tokens,
                           params=params, seed=seed, num_samples=num_samples, greedy_draft=greedy_draft)
        texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.token_ids] if tokenizer else None
        if output == "json":
            record: dict[str, Any] = {"token_ids": result.token_ids, "stats": result.stats.as_dict()}
            if texts is not None:
                record["text"] = texts
            print(json.dumps(record))
        else:
            for i, toks in enumerate(result.token_ids):
                head = f"[sample {i}] " if num_samples > 1 else ""
                print(head + (texts[i] if texts is not None else " ".join(map(str, toks))))
            print(f"[{method}] {result.stats.summary()}")

    @staticmethod
    def _run(target: Llama, draft: Llama | None, ids: list[int], *, method: str, gamma: int,
             max_new_tokens: int, params: SamplingParams, seed: int, num_samples: int,
             greedy_draft: bool) -> Any:
        eos = target.config.eos_token_id
        common = {"max_new_tokens": max_new_tokens, "params": params, "seed": seed, "num_samples": num_samples,
                  "eos_token_ids": eos}
        if method == "ar":
            return autoregressive.generate(target, ids, **common)
        return sps.generate(target, draft, ids, gamma=gamma, greedy_draft=greedy_draft, **common)


def main() -> None:
    import fire

    try:
        fire.Fire(CLI, name="specref")
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"specref: error: {e}", file=sys.stderr)
        sys.exit(2)
