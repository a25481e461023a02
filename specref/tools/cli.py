"""Command line: `python -m specref COMMAND ...` (`python -m specref --help` lists the commands).

The arguments are checked against each command's signature first (`tools/args.py`), so a misspelled flag
fails at once; torch and the models are imported only once a command runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

from specref.tools.args import check, dashed

DEFAULT_PROMPT = "Explain in a few sentences why the sky is blue."
DTYPES = ("float32", "float64", "bfloat16", "float16")
METHODS = ("ar", "sps", "eagle")


class TextStream:
    """Print the text of tokens as they are committed (decoding the whole answer each time keeps multi-token
    characters intact; an incomplete one is held back)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def __call__(self, new: list[int]) -> None:
        self.ids += new
        if self.tokenizer is None:
            print(" ".join(map(str, new)), end=" ", flush=True)
            return
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            print(text[self.shown :], end="", flush=True)
            self.shown = len(text)


def check_tokenizers(target: Any, draft: Any) -> None:
    """A draft that ships its own tokenizer must map every token exactly as the target's does."""
    if target is not None and draft is not None and target.get_vocab() != draft.get_vocab():
        raise ValueError("the draft's tokenizer differs from the target's: the two models must share one vocabulary")


def check_training(*, seed: int, train_prompts: int | None, lr: float, val_prompts: int | None,
                   prompts: str | None, **counts: int) -> None:
    """The arguments train-draft and train-eagle share: counts >= 1, seed and val_prompts >= 0, lr > 0, and a
    --prompts file that reads as prompts and holds no held-out prompt."""
    from specref.checks import check_count
    from specref.formats.prompts import check_disjoint, load_prompts, read_prompts

    for name, value in counts.items():
        check_count(name, value)
    check_count("seed", seed, minimum=0)
    if val_prompts is not None:
        check_count("val_prompts", val_prompts, minimum=0)
    if train_prompts is not None:
        check_count("train_prompts", train_prompts)
    if not (isinstance(lr, int | float) and lr > 0):
        raise ValueError(f"--lr must be > 0, got {lr!r}")
    if prompts is not None:
        check_disjoint(read_prompts(prompts)[:train_prompts], load_prompts("heldout"), f"--prompts {prompts}")


def parse_ids(value: Any, flag: str = "--prompt-ids") -> list[int]:
    """A list of integers (`--prompt-ids 1,2,3`, `--gammas 1,2`) as fire hands it over: a tuple, an int or a
    string. Anything that is not exactly an integer (1.9, True, "x") is refused, never rounded."""
    items = list(value) if isinstance(value, tuple | list) else str(value).strip("[]()").replace(" ", ",").split(",")
    items = [v.strip() if isinstance(v, str) else v for v in items]
    exact = [int(v) for v in items if (isinstance(v, int) and not isinstance(v, bool))
             or (isinstance(v, str) and v.removeprefix("-").isdigit())]
    if len(exact) != len([v for v in items if v != ""]) or isinstance(value, bool | float):
        raise ValueError(f"{flag} must be comma-separated integers, got {value!r}")
    return exact


def comma_list(value: Any) -> list[str]:
    """A list option as fire hands it over: a tuple or list, or one comma-separated string."""
    items = value if isinstance(value, tuple | list) else str(value).split(",")
    return [str(v).strip() for v in items if str(v).strip()]


def show_pictures(rounds: list[Any], tokenizer: Any, show_rounds: bool, show_tree: str | None, out: Any) -> None:
    """Print each traced round in colour to `out` and/or draw the first round's tree (--show-rounds/--show-tree)."""
    from specref.tools.pictures import show_round, token_text, tree_svg

    text = token_text(tokenizer)
    if show_rounds:
        for i, r in enumerate(rounds):
            print(f"round {i + 1:3d} " + show_round(r, text), file=out)
    if show_tree and rounds:
        from specref.formats.files import atomic_file

        with atomic_file(show_tree) as tmp:
            tmp.write_text(tree_svg(rounds[:1], text, ["round 1: the accepted path in green"]))
        print(f"specref: wrote {show_tree}", file=sys.stderr)


def resolve_device(device: str) -> Any:
    """A torch.device, refused with a clear message when it is malformed or absent."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a valid torch device") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: specref runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


def check_one_of(flag: str, value: object, choices: Collection[str]) -> None:
    """Refuse a flag's value that is not among `choices`, naming them."""
    if value not in choices:
        raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def check_int4_run(flag: str, device: Any, dtype: str) -> None:
    """4-bit weights need PyTorch's CPU int4 kernel and the float32 weights it quantizes."""
    from specref.cpu import check_int4_kernel

    if device.type != "cpu" or dtype != "float32":
        raise ValueError(f"{flag} needs --device cpu and --dtype float32 (PyTorch's int4 kernel is a CPU one, and "
                         "it takes the float32 weights)")
    check_int4_kernel()


def choose_method(method: str | None, draft: str | None, eagle: str | None, default_pair: bool) -> str:
    """--method, or the one the given drafter implies: a strict CLI never ignores a --draft or an --eagle."""
    if method is not None:
        check_one_of("--method", method, METHODS)
    if draft is not None and eagle is not None:
        raise ValueError("give --draft (SpS) or --eagle (EAGLE), not both")
    if method is None:
        if draft is None and eagle is None and not default_pair:
            raise ValueError("a --target checkpoint needs a drafter: --draft DIR (SpS) or --eagle DIR (EAGLE), "
                             "or --method ar")
        method = "sps" if draft is not None else "eagle"
    if draft is not None and method != "sps":
        raise ValueError(f"--draft is the drafter of --method sps, not of --method {method}")
    if eagle is not None and method != "eagle":
        raise ValueError(f"--eagle is the drafter of --method eagle, not of --method {method}")
    if method == "sps" and draft is None and not default_pair:
        raise ValueError("--method sps needs --draft for a --target checkpoint (or use --method ar)")
    if method == "eagle" and eagle is None and not default_pair:
        raise ValueError("--method eagle needs --eagle (a head directory) for a --target checkpoint")
    return method


class CLI:
    """specref: lossless speculative decoding, a readable reference."""

    def generate(self, prompt: str | None = None, *, target: str | None = None, draft: str | None = None,
                 method: str | None = None, gamma: int | None = None, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32", prompt_ids: Any = None, num_samples: int = 1, output: str = "text",
                 greedy_draft: bool = False, raw: bool = False, pack: bool | None = None, eagle: str | None = None,
                 tree: str = "default", choices: Any = "eagle", total_tokens: int | None = None,
                 depth: int | None = None, tree_top_k: int | None = None, show_rounds: bool = False,
                 show_tree: str | None = None, quantize: str | None = None, head_dtype: str | None = None) -> None:
        """Continue PROMPT (text) or --prompt-ids with the target, drafted by an EAGLE head (the default) or a
        --draft model (SpS).

        Without --target the embedded default pair runs: SmolLM2-135M-Instruct, drafted by its shipped EAGLE-3
        head (in fp32 the fastest method at T = 0 on every CPU measured; with --quantize int4, --method ar is
        faster) or, with --method sps, by its shipped draft model.
        --method ar|sps|eagle (default: eagle with --eagle or the default target, sps with --draft); --gamma
        (SpS): drafts per round (default `specref/sps.py::DEVICE_GAMMAS`: 1 on the CPU, the fastest measured with the
        shipped draft; 3 on CUDA); --temperature 0 is greedy; --top-k 0 and --top-p 1 disable the filters;
        --num-samples N draws N independent continuations;
        --output text|json; --raw skips the chat template; --greedy-draft (SpS): the draft proposes its argmax
        (verified with a one-hot q: lossless); --pack/--nopack: oneDNN's packed CPU matrix
        products or PyTorch's default ones (default: packed, except on Intel CPUs with MKL, whose default product
        is faster for 1-3 rows); --quantize int4 stores the target's and the draft's layers as 4-bit weights (CPU,
        float32; a different target, whose law every method then samples exactly: see the README).
        EAGLE: --eagle DIR (an EAGLE-1/2, HASS or EAGLE-3 head; default: the shipped head of the default target),
        --tree default|dynamic|static|sampled; static trees: --choices eagle (EAGLE's default, 25 paths) |
        medusa (Medusa's 63 nodes) | small (7 nodes) | fork (5 nodes) | chain1 (1 node) | a JSON file of paths;
        sampled: a static tree whose children are drawn from the head's law at T > 0 (top-ranked at T = 0);
        dynamic trees (EAGLE-2): --total-tokens, --depth, --tree-top-k (defaults per device: `python -m specref
        calibrate` measures them). default: the device's dynamic tree at T = 0 and, on a CPU, the sampled fork at
        T > 0; with PyTorch's default CPU products (--nopack, or an Intel CPU with MKL), a 2-node dynamic tree at
        T = 0 and one sampled child at T > 0 (a dynamic tree when --total-tokens, --depth or --tree-top-k is given).
        --head-dtype float32|bfloat16|...: the head's dtype (default: the target's; lossless in any dtype).
        Pictures: --show-rounds prints each round of the first sample in colour (accepted drafts green, the
        rejected one red, the correction yellow or the bonus blue); --show-tree OUT.svg (EAGLE) draws the first
        round's tree with the target's probabilities on its edges and the accepted path highlighted.
        """
        import torch

        from specref import autoregressive, eagle_decode, sps
        from specref.checks import check_count, check_pair, check_request, check_run
        from specref.cpu import int4_layers, pack_linears, quantize_int4, should_pack
        from specref.formats.default_model import DEFAULT_TARGET, default_draft_dir, default_head_dir, resolve_target
        from specref.formats.eagle import place_head, read_head
        from specref.formats.files import check_output_file
        from specref.formats.hf import build_model, load_draft, load_tokenizer, read_config, read_weights
        from specref.formats.prompts import encode
        from specref.kv_cache import cache_bytes
        from specref.logits import SamplingParams
        from specref.memory import check_fits, round_bytes
        from specref.model import Llama
        from specref.tools.options import tree_for

        # Every argument is checked before any weights are read.
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
        dev = resolve_device(device)
        pack = should_pack(pack)
        tree_spec = tree_for(dev.type, tree, choices, total_tokens, depth, tree_top_k, params, packed=pack)
        default_pair = target is None or target == DEFAULT_TARGET
        # A --target is named (a fast check) before its drafter is asked for; the default's cache is built later.
        target_dir = None if default_pair else resolve_target(target)
        given_method, method = method is not None, choose_method(method, draft, eagle, default_pair)
        if method != "sps" and (gamma is not None or greedy_draft):
            flag = "--gamma" if gamma is not None else "--greedy-draft"
            how = "" if given_method else " (from --eagle)" if eagle is not None else " (the default)"
            raise ValueError(f"{flag} sets SpS's draft, but the method here is {method}{how}: add --method sps "
                             f"(and --draft DIR for a --target checkpoint)")
        tree_flags = {"--tree": tree != "default", "--choices": choices != "eagle",
                      "--total-tokens": total_tokens is not None, "--depth": depth is not None,
                      "--tree-top-k": tree_top_k is not None, "--head-dtype": head_dtype is not None}
        given = [flag for flag, set_ in tree_flags.items() if set_]
        if method != "eagle" and given:
            verb = "apply" if len(given) > 1 else "applies"
            raise ValueError(f"{', '.join(given)} {verb} to EAGLE's tree and head, but the method here is {method}: "
                             "add --method eagle or leave them out")
        if gamma is None:
            gamma = sps.device_gamma(dev.type)
        check_count("gamma", gamma)
        check_count("num_samples", num_samples)
        check_run(max_new_tokens, seed)
        if output not in ("text", "json"):
            raise ValueError(f"--output must be text or json, got {output!r}")
        check_one_of("--dtype", dtype, DTYPES)
        if head_dtype is not None:
            check_one_of("--head-dtype", head_dtype, DTYPES)
        if quantize not in (None, "int4"):
            raise ValueError(f"--quantize must be int4 (or left out for full-precision weights), got {quantize!r}")
        if quantize:
            check_int4_run("--quantize int4", dev, dtype)
        if prompt is not None and prompt_ids is not None:
            raise ValueError("give either a text prompt or --prompt-ids, not both")
        if prompt == "":
            raise ValueError("prompt is empty")
        if (show_rounds or show_tree) and method == "ar":
            raise ValueError("--show-rounds and --show-tree picture speculative rounds: use --method sps or eagle")
        if show_tree is not None and (method != "eagle" or not show_tree.endswith(".svg")):
            raise ValueError("--show-tree draws an EAGLE tree into an .svg file: --method eagle --show-tree OUT.svg")
        if show_tree is not None:
            check_output_file(show_tree, "--show-tree")
        ids = parse_ids(prompt_ids) if prompt_ids is not None else None
        if prompt is None and ids is None:
            prompt = DEFAULT_PROMPT
            print(f"specref: no prompt given; using {prompt!r}", file=sys.stderr)

        target_dir = target_dir or resolve_target(target)
        draft_dir = head_dir = None
        if method == "sps":
            draft_dir = Path(draft) if draft is not None else default_draft_dir()
        if method == "eagle":
            head_dir = Path(eagle) if eagle is not None else default_head_dir()
        tgt_config = read_config(target_dir)
        drf_config = read_config(draft_dir) if draft_dir is not None else None
        if drf_config is not None:
            check_pair(tgt_config, drf_config)
        if quantize:
            for c in (tgt_config, drf_config):
                if c is not None:
                    with torch.device("meta"):  # the layer shapes, without reading a weight
                        int4_layers(Llama(c))
        head_read = None
        if head_dir is not None:
            head_read = read_head(head_dir, tgt_config)  # the whole head, checked against the target's config
            tree_spec.check_vocab(tgt_config.vocab_size, head_read[0].draft_vocab_size)
        if ids is not None:
            check_request([ids], [tgt_config], max_new_tokens, seed)
        tokenizer = load_tokenizer(target_dir)
        if draft_dir is not None:
            check_tokenizers(tokenizer, load_tokenizer(draft_dir))
        if ids is None:
            if tokenizer is None:
                raise ValueError("this model has no tokenizer: give the prompt as --prompt-ids 1,2,3")
            ids = encode(tokenizer, prompt, chat=not raw)
            check_request([ids], [tgt_config], max_new_tokens, seed)
        if method == "eagle":
            eagle_decode.check_prompt_lengths([ids])  # before any weights are read
        # The buffers the run will allocate, checked before the weights are read (the loops check them again).
        rows = len(ids) + max_new_tokens + {"ar": 0, "sps": gamma + 1, "eagle": tree_spec.scratch_rows}[method]
        configs = [c for c in (tgt_config, drf_config) if c is not None]
        caches = sum(cache_bytes((c.num_hidden_layers, num_samples, c.num_key_value_heads, rows, c.head_dim),
                                 getattr(torch, dtype)) for c in configs)
        check_fits(caches, f"KV caches for {num_samples} samples x {rows} positions", dev)
        scored = num_samples * {"ar": 1, "sps": 2 * gamma + 1, "eagle": tree_spec.law_rows(params)}[method]
        check_fits(round_bytes(scored, tgt_config.vocab_size), f"probabilities over {scored} rows a round", dev)

        tgt = build_model(tgt_config, read_weights(target_dir), dtype=getattr(torch, dtype), device=dev)
        drf = load_draft(draft_dir, tgt) if draft_dir is not None else None
        head = None
        if head_read is not None:
            head = place_head(head_read, tgt, getattr(torch, head_dtype) if head_dtype else None)
        if quantize:
            for model in (tgt, drf):
                if model is not None:
                    quantize_int4(model)
        if pack:
            for model in (tgt, drf, head):
                if model is not None:
                    pack_linears(model)
        stream = None
        if output == "text" and num_samples == 1 and not show_rounds:
            stream = TextStream(tokenizer)
        run = {"max_new_tokens": max_new_tokens, "params": params, "seed": seed, "num_samples": num_samples,
               "eos_token_ids": tgt.config.eos_token_id, "stream": stream}
        rounds: list[Any] = []
        if show_rounds or show_tree:
            run["trace"] = rounds.append
        if head is not None:
            result = eagle_decode.generate(tgt, head, ids, tree=tree_spec, **run)
        elif drf is not None:
            result = sps.generate(tgt, drf, ids, gamma=gamma, greedy_draft=greedy_draft, **run)
        else:
            result = autoregressive.generate(tgt, ids, **run)
        texts = [tokenizer.decode(t, skip_special_tokens=True) for t in result.token_ids] if tokenizer else None
        show_pictures(rounds, tokenizer, show_rounds, show_tree, sys.stderr if output == "json" else sys.stdout)
        if output == "json":
            record: dict[str, Any] = {"token_ids": result.token_ids, "stats": result.stats.as_dict()}
            if texts is not None:
                record["text"] = texts
            print(json.dumps(record))
            return
        if stream is None:
            for i, toks in enumerate(result.token_ids):
                print(f"[sample {i}] " + (texts[i] if texts is not None else " ".join(map(str, toks))))
        else:
            print()
        print(f"[{method}] {result.stats.summary()}")

    def bench(self, out: str = "bench_out", *, prompts: int = 4, max_new_tokens: int = 128, repeats: int = 3,
              gammas: Any = (1, 2, 3, 4, 5, 6, 7, 8), temperatures: Any = (0.0, 1.0), device: str = "cpu",
              pack: bool | None = None, seed: int = 0, trees: Any = ("default", "dynamic", "static"),
              groups: Any = ("sps", "assisted", "eagle"), plot: str | None = None,
              head_dtype: str | None = None) -> None:
        """Time HF generate(), specref AR, specref SpS (each --gammas), HF assisted generation and specref EAGLE
        (each --trees: default, dynamic, dynamic:TOTAL:DEPTH:TOP_K, static, static:medusa, sampled; a tree that
        equals another at some temperature runs once there) on the default pair, in one run on the held-out
        prompts, the repeats of every row taking turns; --groups picks among sps,assisted,eagle,int4 (int4:
        specref AR and EAGLE on the 4-bit target, and llama.cpp on the GGUF when llama-cpp-python is installed).
        Prints the table and writes OUT/bench.json; --plot OUT.png draws tokens/s, τ and speed-up against γ
        (measured and predicted from α and c) and the acceptance of each draft position (needs matplotlib).
        --pack/--nopack and --head-dtype as for generate; `default` trees follow --pack."""
        import torch

        from specref.checks import check_count
        from specref.cpu import should_pack
        from specref.logits import SamplingParams
        from specref.tools.bench import GROUPS, bench
        from specref.tools.options import trees_at

        for name, value in (("prompts", prompts), ("max_new_tokens", max_new_tokens), ("repeats", repeats)):
            check_count(name, value)
        check_count("seed", seed, minimum=0)
        gammas = tuple(parse_ids(gammas, "--gammas"))
        for g in gammas:
            check_count("gammas", g)
        temps = tuple(float(t) for t in comma_list(temperatures))
        for t in temps:
            SamplingParams(temperature=t)
        dev = resolve_device(device)
        pack = should_pack(pack)
        tree_list = tuple(comma_list(trees))
        for t in temps:
            trees_at(tree_list, dev.type, SamplingParams(t), packed=pack)
        group_list = tuple(comma_list(groups))
        if not set(group_list) <= set(GROUPS):
            raise ValueError(f"--groups must be among {','.join(GROUPS)}, got {groups!r}")
        if "int4" in group_list:
            check_int4_run("--groups int4", dev, "float32")
        if head_dtype is not None:
            check_one_of("--head-dtype", head_dtype, DTYPES)
            if not {"eagle", "int4"} & set(group_list):
                raise ValueError("--head-dtype sets the EAGLE head's dtype, but --groups runs no EAGLE row "
                                 "(eagle, int4)")
        if plot is not None:
            from specref.tools.plots import check_plot_path

            try:
                check_plot_path(plot)
            except ImportError as e:
                raise ValueError(str(e)) from None
        bench(out, prompts=prompts, max_new_tokens=max_new_tokens, repeats=repeats, gammas=gammas,
              temperatures=temps, device=str(dev), pack=pack, seed=seed, trees=tree_list, groups=group_list,
              plot=plot, head_dtype=getattr(torch, head_dtype) if head_dtype else None)

    def calibrate(self, out: str | None = None, *, prompts: int = 3, max_new_tokens: int = 64, device: str = "cpu",
                  pack: bool | None = None, temperature: float = 0.0, seed: int = 0) -> None:
        """Measure target and head costs by tree size, then EAGLE tokens/s at --temperature for a grid of
        dynamic trees on held-out prompts (at T > 0 also small static trees with sampled children); print the
        fastest (the per-device defaults come from this). OUT: a JSON file. --pack/--nopack as for generate."""
        from specref.checks import check_count, check_run
        from specref.logits import SamplingParams
        from specref.tools.calibrate import calibrate

        check_count("prompts", prompts)
        check_run(max_new_tokens, seed)
        SamplingParams(temperature)  # refuses a negative or non-finite temperature before any model work
        calibrate(out, prompts=prompts, max_new_tokens=max_new_tokens, device=str(resolve_device(device)), pack=pack,
                  temperature=temperature, seed=seed)

    def train_draft(self, out: str, *, target: str | None = None, work_dir: str | None = None, layers: int = 2,
                    vocab: int = 8192, samples: int = 2, max_new_tokens: int = 192, epochs: int = 10,
                    lr: float = 2e-3, batch_tokens: int = 4096, seed: int = 0, train_prompts: int | None = None,
                    eval_prompts: int = 60, bf16: bool = False, val_prompts: int | None = None,
                    device: str = "cpu", prompts: str | None = None, text_batch: int = 40) -> None:
        """Distil a draft for the target (default: SmolLM2) from text it generates; save it to OUT.

        Work files go to --work-dir (default OUT.work); rerunning the same command resumes there. --bf16 trains
        with bfloat16 matrix products (faster on CPUs with bfloat16 units; fp32 on CPUs without a bfloat16 path,
        where it would be ~30x slower; the shipped draft was trained in fp32).
        --val-prompts N holds the answers to the last N training prompts out of training and prints their loss after
        every epoch (default: a twentieth of them; 0: none). --train-prompts N: the first N training prompts
        (default: all; the package's 1,200, as the shipped weights were trained). --prompts FILE: the training
        prompts of a JSON-lines file instead ({"prompt": "..."} per line, as write-prompts writes; none may be a
        held-out prompt). With the same --samples, --train-prompts and --prompts, train-draft and train-eagle can
        share one --work-dir. --device cuda: the target writes and labels the text, and the draft trains and is
        evaluated, on the GPU (default cpu, where the shipped weights were trained; a work dir and its training
        state carry over between devices). --text-batch N: answers the target writes at once (default 40, as for
        the shipped weights; on a GPU a batch of hundreds costs about what one answer does). Another N writes
        other text, so a work dir keeps the N it was made with.
        """
        from specref.checks import check_count
        from specref.train.draft import train_draft

        check_count("layers", layers)
        dev = resolve_device(device)
        check_training(vocab=vocab, samples=samples, epochs=epochs, max_new_tokens=max_new_tokens,
                       batch_tokens=batch_tokens, eval_prompts=eval_prompts, seed=seed, train_prompts=train_prompts,
                       lr=lr, val_prompts=val_prompts, prompts=prompts, text_batch=text_batch)
        result = train_draft(out, target=target, work_dir=work_dir, layers=layers, vocab=vocab, samples=samples,
                             max_new_tokens=max_new_tokens, epochs=epochs, lr=lr, batch_tokens=batch_tokens,
                             seed=seed, train_prompts=train_prompts, eval_prompts=eval_prompts, bf16=bf16,
                             val_prompts=val_prompts, device=str(dev), prompts=prompts, text_batch=text_batch)
        print(json.dumps(result, indent=2))

    def train_eagle(self, out: str, *, target: str | None = None, work_dir: str | None = None, kind: str = "eagle3",
                    vocab: int = 8192, samples: int = 2, max_new_tokens: int = 192, epochs: int = 14,
                    lr: float = 2e-3, batch_tokens: int = 4096, seed: int = 0, train_prompts: int | None = None,
                    eval_prompts: int = 60, unroll: int = 3, tree: str = "dynamic", total_tokens: int | None = None,
                    depth: int | None = None, tree_top_k: int | None = None, bf16: bool = True,
                    val_prompts: int | None = None, weight_decay: float = 0.0, feature_loss: float = 0.0,
                    device: str = "cpu", layers: int = 1, prompts: str | None = None, text_batch: int = 40,
                    feature_noise: float = 0.0, freeze_output: bool = False) -> None:
        """Train an EAGLE head (--kind eagle3|eagle) for the target (default: SmolLM2) on text it generates.

        Shares the draft's data: point --work-dir at a train-draft work directory made with the same --samples and
        --train-prompts to reuse its generated text. Trains with bfloat16 matrix products (--nobf16: fp32;
        fp32 also on CPUs without a bfloat16 path, such as AVX2-only ones, where bf16 is ~30x slower).
        --val-prompts N: as for train-draft, a validation loss after every epoch on the answers to the last N
        training prompts (default: a twentieth of them, 60 of the package's 1,200).
        --weight-decay W: AdamW's decoupled weight decay on the head's matrices (default 0, as the shipped head).
        --feature-loss W (--kind eagle only): adds EAGLE-1's feature regression, weight W, to every unrolled step
        (default 0, as the shipped head): the head's output learns the target feature it stands in for one step
        deeper. An EAGLE-3 head has no fixed feature to learn (its own fc fuses what it reads), so it is refused there.
        --feature-noise A: EAGLE-1's data augmentation, uniform noise of A times each position's RMS on what the head's
        first step reads in place of its own output (the target's feature; for EAGLE-3 the fused one), in training
        only (default 0, as the shipped head). --freeze-output (EAGLE-3): keep the output layer at the target's rows.
        --device cuda: as for train-draft (the head is still evaluated with the CPU's tree, as the shipped one was).
        --layers N: the head's decoder layers (default 1, as in EAGLE and the shipped head).
        --prompts FILE and --text-batch N: as for train-draft (write-prompts writes such a file).
        """
        from specref.checks import check_count
        from specref.tools.options import tree_for
        from specref.train.eagle import train_eagle

        check_count("layers", layers)
        tree_spec = tree_for("cpu", tree, "eagle", total_tokens, depth, tree_top_k)  # the CPU's, on any device
        dev = resolve_device(device)
        for flag, value in (("--weight-decay", weight_decay), ("--feature-loss", feature_loss),
                            ("--feature-noise", feature_noise)):
            if not (isinstance(value, int | float) and 0 <= value < float("inf")):
                raise ValueError(f"{flag} must be >= 0 and finite, got {value!r}")
        check_training(vocab=vocab, samples=samples, epochs=epochs, max_new_tokens=max_new_tokens,
                       batch_tokens=batch_tokens, eval_prompts=eval_prompts, unroll=unroll, seed=seed,
                       train_prompts=train_prompts, lr=lr, val_prompts=val_prompts, prompts=prompts,
                       text_batch=text_batch)
        result = train_eagle(out, target=target, work_dir=work_dir, kind=kind, vocab=vocab, samples=samples,
                             max_new_tokens=max_new_tokens, epochs=epochs, lr=lr, batch_tokens=batch_tokens,
                             unroll=unroll, seed=seed, train_prompts=train_prompts, eval_prompts=eval_prompts,
                             tree=tree_spec, bf16=bf16, val_prompts=val_prompts, weight_decay=weight_decay,
                             feature_loss=feature_loss, device=str(dev), layers=layers, prompts=prompts,
                             text_batch=text_batch, feature_noise=feature_noise, freeze_output=freeze_output)
        print(json.dumps(result, indent=2))

    def write_prompts(self, out: str, *, count: int = 1200, target: str | None = None, temperature: float = 1.0,
                      top_p: float = 0.9, max_new_tokens: int = 96, seed: int = 0, batch: int = 40,
                      device: str = "cpu") -> None:
        """Have the target (default: SmolLM2) write COUNT training prompts of its own to OUT (.jsonl).

        The target continues its chat template from the start of a user turn (Magpie, arXiv 2406.08464) at
        --temperature with nucleus --top-p; a message is kept when the target ends it within --max-new-tokens,
        it is new, and it is not a held-out prompt. Train on them with train-draft/train-eagle --prompts OUT.
        --batch N: messages sampled at once (default 40; a GPU takes hundreds). A seed and a batch size give the
        same file every run; OUT is written once, at the end, and never overwritten.
        """
        from specref.checks import check_count, check_run
        from specref.formats.files import check_output_file
        from specref.logits import SamplingParams
        from specref.train.self_prompts import write_prompts

        path = check_output_file(out, "OUT", (".jsonl",))
        if path.exists():
            raise FileExistsError(f"{out} already exists; name a new file")
        check_count("count", count)
        check_count("batch", batch)
        check_run(max_new_tokens, seed)
        SamplingParams(temperature, top_p=top_p)  # refuses a bad temperature or top-p before any model work
        if temperature == 0:
            raise ValueError("--temperature must be > 0: a greedy target writes one message, again and again")
        result = write_prompts(path, count=count, target=target, device=str(resolve_device(device)),
                               temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                               batch=batch)
        print(json.dumps(result, indent=2))

    def convert(self, *, source: str, output: str, verifier: str | None = None, algorithm: str = "auto",
                dtype: str | None = None, overwrite: bool = False) -> None:
        """Convert an EAGLE-1/2, HASS or EAGLE-3 head (--source: its original layout or speculators') into the
        speculators layout at --output, the one vLLM serves (`vllm serve OUTPUT`). --verifier: the target's
        local directory (checks every shape against its config; its name is recorded for vLLM) or its hub id;
        --algorithm auto|eagle|hass|eagle3 (auto: detected from the keys); --dtype float32|float16|bfloat16
        (default: the source's); --overwrite replaces a non-empty --output. Nothing is left behind on failure."""
        from specref.api.speculator import ALGORITHMS, DTYPES, Speculator

        check_one_of("--algorithm", algorithm, ALGORITHMS)
        if dtype is not None:
            check_one_of("--dtype", dtype, DTYPES)
        out = Path(output)
        if out.is_file():
            raise ValueError(f"--output {output} is a file; name a directory")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise ValueError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
        if out.resolve() == Path(source).resolve() or out.resolve() in Path(source).resolve().parents:
            raise ValueError("--output must not be --source or a directory that contains it")
        spec = Speculator.from_pretrained(source, verifier=verifier, algorithm=algorithm)
        if dtype is not None and spec.config.head.kind == "eagle":
            raise ValueError("--dtype applies to EAGLE-3; the legacy EAGLE-1/2/HASS layout is always float32")
        spec.save_pretrained(out, dtype=DTYPES[dtype] if dtype else None, overwrite=overwrite)
        c = spec.config
        legacy = c.head.kind == "eagle"
        notes = ["the legacy layout of speculators <= 0.6, which no vLLM release serves"] if legacy else []
        if c.head.kind == "eagle" and spec.own_embedding:
            notes.append("its embed_tokens copy is dropped, as that layout does: the verifier's embedding is used")
        if c.verifier.name_or_path is None:
            notes.append("no verifier recorded: vLLM needs one, pass --verifier")
        print(f"wrote {out}: {c.algorithm} speculator, verifier {c.verifier.name_or_path or '(none)'}"
              + "".join(f"; {n}" for n in notes))

    def conformance(self, out: str | None = None, *, suites: Any = ("tiny", "default"), n: int = 20_000,
                    n_default: int = 2_000, length: int = 3, alpha: float = 1e-6, seed: int = 0,
                    greedy: bool = True) -> None:
        """Test specref's modes (ar, sps, eagle) and Hugging Face generation (plain sampling, assisted generation,
        prompt lookup) for losslessness with the conformance kit: a G-test of N samples of the first --length
        tokens against the target's exact law at level --alpha, on tiny random models (--suites tiny, N = --n)
        and on the default SmolLM2 pair at top-k 4 (default, N = --n-default); greedy rows (--nogreedy skips
        them) check token identity with greedy AR. Prints the table; OUT: a JSON file with every report."""
        from specref.checks import check_count
        from specref.tools.conformance import SUITES, conformance

        suite_list = tuple(comma_list(suites))
        if not suite_list or not set(suite_list) <= set(SUITES):
            raise ValueError(f"--suites must be among {','.join(SUITES)}, got {suites!r}")
        for name, value in (("n", n), ("n_default", n_default), ("length", length)):
            check_count(name, value)
        check_count("seed", seed, minimum=0)
        if not (isinstance(alpha, int | float) and 0 < alpha < 1):
            raise ValueError(f"--alpha must be in (0, 1), got {alpha!r}")
        if out is not None:
            from specref.formats.files import check_output_file

            check_output_file(out, "OUT")
        conformance(out, suites=suite_list, n=n, n_default=n_default, length=length, alpha=alpha, seed=seed,
                    greedy=greedy)


COMMANDS = {dashed(name): getattr(CLI, name) for name in ("generate", "bench", "calibrate", "train_draft",
                                                           "train_eagle", "write_prompts", "convert",
                                                           "conformance")}


def main(argv: list[str] | None = None) -> None:
    """Run one command. Bad input exits with status 2 and one line naming the problem, Ctrl-C with 130 and
    one line, and a reader that goes away (`... | head -1`) ends the run quietly (141, as SIGPIPE would)."""
    try:
        checked = check(COMMANDS, sys.argv[1:] if argv is None else list(argv))
        if isinstance(checked, str):
            print(checked)
            return
        import fire

        fire.Fire(CLI(), command=checked[1], name="specref")
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"specref: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("specref: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # Point stdout at /dev/null, or flushing it at exit raises again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
