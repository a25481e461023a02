"""`python -m specref conformance`: the kit run against specref's modes and Hugging Face generation.

Two suites, each with the same engines on the same weights:

* tiny: a random float64 Llama target (8-token vocabulary) with a random draft and a random EAGLE-3 head, made
  on the fly; the law of the first 3 tokens has 512 cells. The prompt repeats itself so that prompt lookup
  finds n-grams to propose.
* default: the embedded SmolLM2-135M target, its shipped draft and EAGLE-3 head; top-k 4 bounds the law
  of the first 3 tokens to 64 cells (21 target forwards to enumerate).

Rows: specref ar / sps / eagle, HF plain sampling (the control), HF assisted generation with the draft, HF
prompt lookup; sampled rows at T = 1 against the exact law, greedy rows at T = 0 against greedy AR.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from specref.conformance import check_greedy, check_sampler, exact_law
from specref.conformance.engines import hf_sampler, specref_sampler
from specref.eagle import random_head
from specref.formats.default_model import default_draft_dir, default_head_dir, default_target_dir
from specref.formats.eagle import load_head
from specref.formats.files import atomic_file
from specref.formats.hf import load_draft, load_model, standalone_draft, to_transformers
from specref.logits import SamplingParams
from specref.model import ModelConfig, random_model

SUITES = ("tiny", "default")
TINY_PROMPT = [3, 1, 4, 1, 3, 1, 4]
DEFAULT_PROMPT = "red green blue red green blue red green"  # raw text that repeats: prompt lookup finds n-grams


def tiny_models() -> dict[str, Any]:
    """A tiny random float64 target, draft and EAGLE-3 head, and the target and draft as transformers models."""
    def config(hidden: int, layers: int) -> ModelConfig:
        return ModelConfig(vocab_size=8, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                           max_position_embeddings=64)
    target = random_model(config(16, 2), seed=11, dtype=torch.float64, scale=3.0)  # peaked, context dependent
    draft = random_model(config(8, 1), seed=12, dtype=torch.float64, scale=3.0)
    head = random_head("eagle3", target, seed=13, scale=3.0)
    return {"target": target, "draft": draft, "head": head, "prompt": TINY_PROMPT, "params": SamplingParams(1.0),
            "hf_target": to_transformers(target), "hf_draft": to_transformers(draft)}


def default_models() -> dict[str, Any]:
    """The embedded default pair and head, and the target and (full-head) draft as transformers models."""
    from specref.formats.hf import load_tokenizer
    from specref.formats.prompts import encode

    target_dir = default_target_dir()
    target = load_model(target_dir)
    draft = load_draft(default_draft_dir(), target)
    head = load_head(default_head_dir(), target)
    prompt = encode(load_tokenizer(target_dir), DEFAULT_PROMPT, chat=False)
    return {"target": target, "draft": draft, "head": head, "prompt": prompt,
            "params": SamplingParams(1.0, top_k=4), "hf_target": to_transformers(target),
            "hf_draft": to_transformers(standalone_draft(draft, target))}


def rows(models: dict[str, Any], length: int, params: SamplingParams) -> list[tuple[str, str, Any, Any]]:
    """(engine, mode, sampler, the model that defines the law) for every row at `params`."""
    t, hf = models["target"], models["hf_target"]
    return [("specref", "ar", specref_sampler("ar", t, length, params), t),
            ("specref", "sps gamma=3", specref_sampler("sps", t, length, params, draft=models["draft"], gamma=3), t),
            ("specref", "eagle", specref_sampler("eagle", t, length, params, head=models["head"]), t),
            ("transformers", "sample", hf_sampler(hf, length, params), hf),
            ("transformers", "assisted", hf_sampler(hf, length, params, mode="assisted",
                                                    assistant=models["hf_draft"]), hf),
            ("transformers", "prompt_lookup", hf_sampler(hf, length, params, mode="prompt_lookup"), hf)]


def run_suite(suite: str, *, n: int, length: int, alpha: float, seed: int, greedy: bool) -> list[dict[str, Any]]:
    """Every row of one suite: the kit's report per row, as dicts (plus engine, mode, setting, seconds)."""
    models = tiny_models() if suite == "tiny" else default_models()
    prompt, params = models["prompt"], models["params"]
    setting = f"T={params.temperature:g}" + (f" top_k={params.top_k}" if params.top_k else "")
    out = []
    laws = {id(m): exact_law(m, prompt, length, params) for m in (models["target"], models["hf_target"])}
    for engine, mode, sampler, law_model in rows(models, length, params):
        start = time.perf_counter()
        r = check_sampler(sampler, law_model, prompt, length, params, n=n, seed=seed, alpha=alpha,
                          law=laws[id(law_model)], chunk=2000, name=f"{engine} {mode}")
        out.append({"suite": suite, "engine": engine, "mode": mode, "setting": setting,
                    "seconds": time.perf_counter() - start, **r.as_dict()})
        print_row(out[-1])
    if greedy:
        for engine, mode, sampler, law_model in rows(models, length, SamplingParams(0.0)):
            start = time.perf_counter()
            g = check_greedy(sampler, law_model, prompt, length, n=4, seed=seed, name=f"{engine} {mode}")
            out.append({"suite": suite, "engine": engine, "mode": mode, "setting": "T=0",
                        "seconds": time.perf_counter() - start, **g.as_dict()})
            print_row(out[-1])
    return out


HEADER = f"{'suite':8s} {'engine':13s} {'mode':14s} {'setting':14s} {'N':>7s} {'TV':>7s} {'p':>9s} {'verdict':>7s}"


def print_row(r: dict[str, Any]) -> None:
    if "p_value" in r:
        figures = f"{r['n']:7d} {r['tv']:7.4f} {r['p_value']:9.3g}"
    else:
        figures = f"{r['n']:7d} {'':7s} {'greedy':>9s}"
    print(f"{r['suite']:8s} {r['engine']:13s} {r['mode']:14s} {r['setting']:14s} {figures} {r['verdict']:>7s}",
          flush=True)


def conformance(out: str | None, *, suites: tuple[str, ...], n: int, n_default: int, length: int, alpha: float,
                seed: int, greedy: bool) -> list[dict[str, Any]]:
    """Run the suites, print the table, and write every report to `out` (JSON) if given."""
    import transformers

    transformers.logging.set_verbosity_error()  # its deprecation chatter would break the table
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; alpha {alpha:g}")
    print(HEADER)
    results = []
    for suite in suites:
        results += run_suite(suite, n=n if suite == "tiny" else n_default, length=length, alpha=alpha, seed=seed,
                             greedy=greedy)
    if out is not None:
        record = {"transformers": transformers.__version__, "torch": torch.__version__, "alpha": alpha,
                  "length": length, "seed": seed, "rows": results}
        with atomic_file(Path(out)) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
    return results
