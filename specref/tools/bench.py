"""`python -m specref bench`: specref against Hugging Face on the default pair, in one process and one run.

Rows, all on the same held-out prompts (chat template, batch 1) and settings:
  HF AR          transformers' `generate()` on the same weights (`LlamaForCausalLM`)
  specref AR     autoregressive decoding with specref's decoder
  specref SpS    speculative sampling with the shipped draft, gamma = 1..8
  HF assisted    `generate(assistant_model=...)` with the same draft exported as a `LlamaForCausalLM` (HF has
                 no reduced-vocabulary head, so its draft computes all 49,152 output rows)
  specref EAGLE  tree speculation with the shipped EAGLE head, for each tree of --trees (`default`: the
                 device's tree for each temperature, sampled children at T > 0 on a CPU)
  ... int4       (group int4) AR and EAGLE with the first of --trees, the target's layers in 4 bits
                 (`cpu.quantize_int4`: the GGUF's own Q4_1 codes, bfloat16 activations), a different target:
                 its rows are compared with its own AR
  llama.cpp      (group int4, when llama-cpp-python is installed) llama.cpp on the default target's Q4_1 GGUF
                 with as many threads as torch uses
Each row reports tokens/s (median of the repeats), the speed-up over specref AR and over HF AR, alpha, tau,
and beside the measured SpS speed-up the one predicted from alpha and the cost ratio c = draft step time /
target step time (`stats.predicted_speedup`). Speeds are the median repeat; alpha, tau and the acceptance of
each draft position are pooled over all repeats.
Greedy outputs of every specref row are compared token by token with HF AR (int4 rows: with specref AR int4).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from specref import autoregressive, eagle_decode, sps
from specref.cpu import pack_linears, quantize_int4, should_pack
from specref.formats.default_model import (
    default_draft_dir,
    default_head_dir,
    default_target_dir,
    file_digest,
    locate_gguf,
)
from specref.formats.eagle import load_head
from specref.formats.hf import load_draft, load_model, load_tokenizer, standalone_draft, to_transformers
from specref.formats.prompts import encode, load_prompts
from specref.logits import SamplingParams
from specref.stats import position_acceptance, predicted_speedup
from specref.tools.options import describe, trees_at
from specref.tools.plots import check_plot_path, speculation_figure
from specref.tools.timing import step_time, weight_read_floor
from specref.tree import TreeSpec

PEAK_PROBE = """
import sys
from specref.tools.cli import main
try:
    main()
finally:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print("VmHWM", hwm[0].split()[1] if hwm else "nan", file=sys.stderr)
"""


def generate_peak_rss_gb(prompt: str, max_new_tokens: int, device: str) -> float:
    """Peak resident memory (Linux VmHWM) of a separate `specref generate` run (EAGLE) on the default pair.

    Measured inside the child: rusage would report the forked copy of this process, which holds the HF models.
    """
    args = ["generate", prompt, "--method", "eagle", "--max-new-tokens", str(max_new_tokens), "--device", device,
            "--output", "json"]  # the main job's default method, named so that the figure keeps its meaning
    res = subprocess.run([sys.executable, "-c", PEAK_PROBE, *args], check=True, capture_output=True, text=True)
    kib = res.stderr.strip().splitlines()[-1].split()[-1]
    return float(kib) / 2**20


GROUPS = ("sps", "assisted", "eagle", "int4")  # the first three run by default
POOLED = ("tokens", "accepted", "tried", "rounds", "nodes")  # counts summed over prompts, then over repeats


def bench(out: str = "bench_out", *, prompts: int = 4, max_new_tokens: int = 128, repeats: int = 3,
          gammas: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8), temperatures: tuple[float, ...] = (0.0, 1.0),
          device: str = "cpu", pack: bool | None = None, seed: int = 0,
          trees: tuple[str, ...] = ("default", "dynamic", "static"),
          groups: tuple[str, ...] = GROUPS[:3], plot: str | None = None,
          head_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Time the rows of `groups` (of GROUPS; default sps, assisted, eagle) beside the baselines HF AR and
    specref AR; with `plot`, draw them there (`tools/plots.py::speculation_figure`). `pack` None: the CPU's rule
    (`cpu.should_pack`); `head_dtype` None: the target's."""
    from transformers import LlamaForCausalLM

    if plot is not None:
        check_plot_path(plot)  # before an hour of measuring, not after
    dev = torch.device(device)
    pack = should_pack(pack)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    target_dir, draft_dir = default_target_dir(), default_draft_dir()
    tok = load_tokenizer(target_dir)
    texts = load_prompts("heldout")[:prompts]
    inputs = [encode(tok, t) for t in texts]
    eos = [tok.eos_token_id]

    target = load_model(target_dir, device=dev)
    draft = load_draft(draft_dir, target)
    head_dtype = head_dtype or target.dtype
    head = load_head(default_head_dir(), target, head_dtype)
    hf_target = LlamaForCausalLM.from_pretrained(target_dir, dtype=torch.float32).to(dev).eval()
    hf_draft = to_transformers(standalone_draft(draft, target))  # before packing; a full output head
    floor, bandwidth = weight_read_floor(target)  # before packing: packed weights are no parameters
    quantized = quantized_head = None
    if "int4" in groups:
        quantized = copy.deepcopy(target)
        quantize_int4(quantized)
        quantized_head = load_head(default_head_dir(), quantized, head_dtype)  # a head serves the target it was put on
        int4_floor, _ = weight_read_floor(quantized)
    if pack:
        for model in (target, draft, head, quantized, quantized_head):
            if model is not None:
                pack_linears(model)
    target_step = step_time(target, dev)
    c = step_time(draft, dev) / target_step

    def specref_run(method: int | TreeSpec | None, params: SamplingParams, rep: int,
                    model: Any = target, eagle: Any = head) -> tuple[list[list[int]], dict]:
        """AR (None), SpS (gamma) or EAGLE (a tree) over the prompts, with `model` (and `eagle`) as the target."""
        outs, seconds, hist = [], 0.0, []
        counts = dict.fromkeys(POOLED, 0)
        for i, ids in enumerate(inputs if rep >= 0 else inputs[:1]):  # rep -1: a short warm-up
            kw = {"max_new_tokens": max_new_tokens if rep >= 0 else 16, "params": params,
                  "seed": seed + 100 * (rep + 1) + i, "eos_token_ids": eos}
            if method is None:
                g = autoregressive.generate(model, ids, **kw)
            elif isinstance(method, TreeSpec):
                g = eagle_decode.generate(model, eagle, ids, tree=method, **kw)
            else:
                g = sps.generate(model, draft, ids, gamma=method, **kw)
            outs.append(g.token_ids[0])
            seconds += g.stats.wall_time
            for key, value in zip(counts, (g.stats.new_tokens, g.stats.accepted, g.stats.tried, g.stats.rounds,
                                           g.stats.tree_nodes), strict=True):
                counts[key] += value
            hist = [a + b for a, b in zip_longest(hist, g.stats.accept_hist, fillvalue=0)]
        return outs, {**counts, "seconds": seconds, "hist": hist}

    def hf_run(assistant: Any, params: SamplingParams, rep: int, **extra: Any) -> tuple[list[list[int]], dict]:
        outs, tokens, seconds = [], 0, 0.0
        sampling = ({"do_sample": False} if params.greedy else
                    {"do_sample": True, "temperature": params.temperature, "top_k": 0, "top_p": 1.0})
        for i, ids in enumerate(inputs if rep >= 0 else inputs[:1]):  # rep -1: a short warm-up
            torch.manual_seed(seed + 100 * (rep + 1) + i)
            x = torch.tensor([ids], device=dev)
            t = time.perf_counter()
            y = hf_target.generate(x, attention_mask=torch.ones_like(x),
                                   max_new_tokens=max_new_tokens if rep >= 0 else 16,
                                   eos_token_id=eos, pad_token_id=eos[0], assistant_model=assistant,
                                   **sampling, **extra)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            seconds += time.perf_counter() - t
            new = y[0, len(ids):].tolist()
            outs.append(new)
            tokens += len(new)
        return outs, {"tokens": tokens, "seconds": seconds}

    llama = None
    if quantized is not None and importlib.util.find_spec("llama_cpp") is not None:
        from llama_cpp import Llama as LlamaCpp

        # n_batch 1: llama-cpp-python 0.3.36 built here crashes decoding several tokens at once on AMX CPUs
        llama = LlamaCpp(str(locate_gguf()[0]), n_threads=torch.get_num_threads(), n_ctx=2048, n_batch=1,
                         n_ubatch=1, verbose=False)
    rows: list[tuple[str, float, Any]] = []
    for temp in temperatures:
        eagle_rows = {"eagle", "int4"} & set(groups)
        tree_specs = trees_at(trees, dev.type, SamplingParams(temp), packed=pack) if eagle_rows else []
        rows += [("HF AR", temp, lambda p, r: hf_run(None, p, r)),
                 ("specref AR", temp, lambda p, r: specref_run(None, p, r))]
        if "sps" in groups:
            rows += [(f"specref SpS gamma={g}", temp, lambda p, r, g=g: specref_run(g, p, r)) for g in gammas]
        if "assisted" in groups:
            rows += [("HF assisted (HF defaults)", temp, lambda p, r: hf_run(hf_draft, p, r))]
            rows += [(f"HF assisted gamma={g}", temp, lambda p, r, g=g: hf_run(
                hf_draft, p, r, num_assistant_tokens=g, num_assistant_tokens_schedule="constant",
                assistant_confidence_threshold=0.0)) for g in (4,) if g in gammas]
        if "eagle" in groups:
            rows += [(f"specref EAGLE {describe(t)}", temp, lambda p, r, t=t: specref_run(t, p, r)) for t in tree_specs]
        if quantized is not None:
            rows += [("specref AR int4", temp, lambda p, r: specref_run(None, p, r, quantized))]
            rows += [(f"specref EAGLE {describe(t)} int4", temp,
                      lambda p, r, t=t: specref_run(t, p, r, quantized, quantized_head)) for t in tree_specs[:1]]
            if llama is not None:
                rows += [("llama.cpp Q4_1 GGUF", temp, lambda p, r: llama_cpp_run(llama, inputs, max_new_tokens, p,
                                                                                  seed + 100 * (r + 1), r))]
    # The rows take turns, one repeat each per pass, so that a machine whose speed drifts over the minutes of a
    # bench (shared or throttled CPUs) slows every row alike instead of whichever ran during a slow spell.
    measured: list[list[dict]] = [[] for _ in rows]
    greedy_outputs = {}
    with tqdm(total=len(rows) * repeats, desc="bench", unit="run") as bar:
        for rep in range(repeats):
            for (name, temp, fn), runs in zip(rows, measured, strict=True):
                params = SamplingParams(temp)
                if rep == 0:
                    fn(params, -1)
                outs, r = fn(params, rep)
                runs.append(r)
                bar.update(1)
                if temp == 0 and rep == 0:
                    greedy_outputs[name] = outs
    results = []
    for (name, temp, _), runs in zip(rows, measured, strict=True):
        # speed: the median repeat; acceptance: pooled over every repeat, so alpha, tau and the position
        # acceptance describe the same rounds
        n = {k: sum(r.get(k, 0) for r in runs) for k in POOLED}
        hist = [sum(col) for col in zip_longest(*(r.get("hist", []) for r in runs), fillvalue=0)]
        results.append({"method": name, "temperature": temp,
                        "tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                        "tokens": runs[0]["tokens"], "alpha": n["accepted"] / n["tried"] if n["tried"] else None,
                        "tau": n["tokens"] / n["rounds"] if n["rounds"] else None,
                        "tree_size": n["nodes"] / n["rounds"] if n["nodes"] else None,
                        "position_acceptance": position_acceptance(hist) or None})
    for r in results:
        base = {m["method"]: m["tokens_per_s"] for m in results if m["temperature"] == r["temperature"]}
        own = "specref AR int4" if r["method"].endswith("int4") or r["method"].startswith("llama.cpp") else "specref AR"
        r["speedup_vs_specref_ar"] = r["tokens_per_s"] / base[own]
        r["speedup_vs_hf_ar"] = r["tokens_per_s"] / base["HF AR"]
        if r["method"].startswith("specref SpS") and r["alpha"] is not None:
            r["gamma"] = int(r["method"].split("=")[1])
            r["predicted_speedup"] = predicted_speedup(r["alpha"], r["gamma"], c)
    mismatches = {}
    for name, outs in greedy_outputs.items():
        reference = greedy_outputs.get("specref AR int4" if name.endswith("int4") else "HF AR")
        if reference is not None and not name.startswith("llama.cpp"):  # llama.cpp: another implementation
            mismatches[name] = [i for i, (a, b) in enumerate(zip(outs, reference, strict=True)) if a != b]
    summary = {
        "machine": machine(dev), "settings": {  # with `out`, the command line that reproduces this run
            "prompts": prompts, "max_new_tokens": max_new_tokens, "repeats": repeats, "gammas": list(gammas),
            "temperatures": list(temperatures), "device": device, "pack": pack, "seed": seed,
            "trees": list(trees), "groups": list(groups), "head_dtype": str(head_dtype).removeprefix("torch.")},
        "weights_sha256": {  # 16 hex digits: which shipped draft or head a stored result measured
            name: file_digest(Path(d) / "model.safetensors", "sha256")[:16]
            for name, d in (("target", target_dir), ("draft", draft_dir), ("eagle", default_head_dir()))},
        "prompts": prompts, "max_new_tokens": max_new_tokens, "repeats": repeats,
        "packed_linears": pack, "cost_ratio_c": c, "target_step_ms": target_step * 1e3,
        "weight_read_floor_ms": floor * 1e3, "read_bandwidth_GBps": bandwidth,
        "generate_peak_rss_gb": generate_peak_rss_gb(texts[0], max_new_tokens, device),
        "greedy_mismatches": mismatches,
        "greedy_identical": all(not v for v in mismatches.values()), "rows": results,
    }
    if quantized is not None:
        summary["int4_target_step_ms"] = step_time(quantized, dev) * 1e3
        summary["int4_weight_read_floor_ms"] = int4_floor * 1e3
        if "specref AR" in greedy_outputs:
            summary["int4_vs_fp32"] = logit_difference(target, quantized, inputs, greedy_outputs["specref AR"])
    (out_dir / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    if plot:
        speculation_figure(results, c, plot, summary["machine"])
        print(f"wrote {plot}")
    return summary


def llama_cpp_run(llama: Any, inputs: list[list[int]], max_new_tokens: int, params: SamplingParams, seed: int,
                  rep: int) -> tuple[list[list[int]], dict]:
    """llama.cpp's own decoding of the prompts with the same sampling law (no top-k, top-p or min-p filter and no
    repetition penalty unless the row asks for them). Timed from the first new token on: decoding only, which
    favours llama.cpp (specref's rows include the prompt), because its prompt goes in one token at a time."""
    outs, tokens, seconds = [], 0, 0.0
    for i, ids in enumerate(inputs if rep >= 0 else inputs[:1]):
        llama.set_seed(seed + i)
        new: list[int] = []
        start = 0.0
        for token in llama.generate(ids, temp=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                    min_p=0.0, repeat_penalty=1.0, reset=True):
            if not new:
                start = time.perf_counter()
            if token == llama.token_eos():
                break
            new.append(token)
            if len(new) == (max_new_tokens if rep >= 0 else 16):
                break
        if new:  # a first token that is EOS leaves nothing to time
            seconds += time.perf_counter() - start
            tokens += len(new) - 1  # the tokens decoded after the first
        outs.append(new)
    return outs, {"tokens": tokens, "seconds": seconds}


@torch.inference_mode()
def logit_difference(reference: Any, other: Any, inputs: list[list[int]], outputs: list[list[int]]) -> dict:
    """How `other`'s next-token logits differ from `reference`'s over the prompts' continuations `outputs`
    (teacher-forced, one forward per sequence): the largest absolute difference, the mean and largest
    KL(reference || other) in nats, and how often both put the same token first."""
    diffs, kls, agree, n = [], [], 0, 0
    for ids, out in zip(inputs, outputs, strict=True):
        seq = torch.tensor([ids + out], device=reference.device)
        pos = torch.arange(seq.shape[1], device=seq.device)[None]
        a, b = (m(seq, pos).logits[0, len(ids) - 1 : -1].double() for m in (reference, other))
        la, lb = a.log_softmax(-1), b.log_softmax(-1)
        diffs.append(float((a - b).abs().max()))
        kls.append((la.exp() * (la - lb)).sum(-1))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        n += len(out)
    kl = torch.cat(kls)
    return {"positions": n, "max_abs_logit_difference": max(diffs), "mean_kl": float(kl.mean()),
            "max_kl": float(kl.max()), "top1_agreement": agree / n}


def machine(dev: torch.device) -> str:
    import platform

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_table(s: dict[str, Any]) -> None:
    print(f"\nmachine: {s['machine']}; {s['prompts']} held-out prompts x {s['max_new_tokens']} new tokens, "
          f"median of {s['repeats']}; c = {s['cost_ratio_c']:.3f}; target step {s['target_step_ms']:.1f} ms "
          f"(weight-read floor {s['weight_read_floor_ms']:.1f} ms at {s['read_bandwidth_GBps']:.0f} GB/s)")
    print(f"{'method':38s} {'T':>4s} {'tok/s':>7s} {'vs AR':>6s} {'vs HF':>6s} {'alpha':>6s} {'tau':>5s} {'pred':>5s}")
    for r in s["rows"]:
        alpha, tau, pred = (format(v, ".3g") if v is not None else "-"
                            for v in (r["alpha"], r["tau"], r.get("predicted_speedup")))
        print(f"{r['method']:38s} {r['temperature']:4.1f} {r['tokens_per_s']:7.1f} "
              f"{r['speedup_vs_specref_ar']:6.2f} {r['speedup_vs_hf_ar']:6.2f} {alpha:>6s} {tau:>5s} {pred:>5s}")
    same = "identical" if s["greedy_identical"] else f"NOT identical: {s['greedy_mismatches']}"
    print(f"greedy outputs of every specref row vs HF AR (int4 rows: vs specref AR int4): {same}")
    if "int4_target_step_ms" in s:
        print(f"int4 target step {s['int4_target_step_ms']:.1f} ms (floor {s['int4_weight_read_floor_ms']:.1f} ms)",
              end="")
        d = s.get("int4_vs_fp32")
        print("" if d is None else f"; int4 vs fp32 logits over {d['positions']} greedy positions: max |difference| "
              f"{d['max_abs_logit_difference']:.3f}, mean KL {d['mean_kl']:.2g} nats, top-1 agreement "
              f"{d['top1_agreement']:.3f}")
    print(f"peak memory of `python -m specref generate` on the default pair: {s['generate_peak_rss_gb']:.2f} GB")
