"""SpS-SpecDec's entry points (jayeshthk/SpS-SpecDec), run by specref's lossless core.

`SpeculativeDecoder(approx_model_name, target_model_name, gamma=4, max_tokens=20, device='cuda')` with
`speculative_sample(input_text)` returning the prompt and its continuation as text, and the command line
`python -m specref.api.specdec --input TEXT [--benchmark] ...` with SpS-SpecDec's flags. Differences, each for
losslessness or clarity: drafts are verified with modified rejection sampling against the laws both models
sample from (temperature 1 by default), `max_tokens` counts new tokens (SpS-SpecDec counts rounds of 1 to
gamma tokens), and `seed` (a keyword, `--seed` on the command line) makes every run reproducible.
"""

from __future__ import annotations

import argparse
import time

from specref import sps
from specref.api.models import load_named, pick_device, tokenizer_for
from specref.logits import SamplingParams


class SpeculativeDecoder:
    def __init__(self, approx_model_name: str, target_model_name: str, gamma: int = 4, max_tokens: int = 20,
                 device: str = "cuda", *, seed: int = 0, temperature: float = 1.0) -> None:
        self.device = pick_device(device)
        self.target_model = load_named(target_model_name, self.device)
        self.approx_model = load_named(approx_model_name, self.device, target=self.target_model)
        self.tokenizer = tokenizer_for(target_model_name)
        self.gamma, self.max_tokens, self.seed = gamma, max_tokens, seed
        self.params = SamplingParams(temperature)

    def speculative_sample(self, input_text: str | list[str]) -> str | list[str]:
        """The prompt and `max_tokens` new tokens as text, sampled exactly as the target alone would. (A list of
        texts is continued as one batch, each independently.)"""
        texts = [input_text] if isinstance(input_text, str) else list(input_text)
        prompts = [self.tokenizer.encode(t) for t in texts]
        out = sps.generate_batch(self.target_model, self.approx_model, prompts, gamma=self.gamma,
                                 max_new_tokens=self.max_tokens, params=self.params, seed=self.seed)
        done = [self.tokenizer.decode(p + new, skip_special_tokens=True) for p, new in zip(prompts, out.token_ids,
                                                                                             strict=True)]
        return done[0] if isinstance(input_text, str) else done


def main(argv: list[str] | None = None) -> str:
    """SpS-SpecDec's command line; prints "Generated Text: ..." (after the time, with --benchmark)."""
    p = argparse.ArgumentParser(prog="python -m specref.api.specdec", description=__doc__.splitlines()[0])
    p.add_argument("--input", default="Any recommendations for my holidays in Abu Dhabi?")
    p.add_argument("--approx_model_name", default="smollm2-draft")
    p.add_argument("--target_model_name", default="smollm2")
    p.add_argument("--gamma", "-g", type=int, default=4)
    p.add_argument("--max_tokens", "-M", type=int, default=20)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", "-v", action="store_true")
    p.add_argument("--benchmark", "-b", action="store_true")
    args = p.parse_args(argv)
    if args.verbose:
        print(f"[LOG] Initializing models: {args.approx_model_name} (approx) → {args.target_model_name} (target)")
    decoder = SpeculativeDecoder(args.approx_model_name, args.target_model_name, gamma=args.gamma,
                                 max_tokens=args.max_tokens, device=args.device, seed=args.seed)
    start = time.perf_counter()
    output = decoder.speculative_sample(args.input)
    if args.benchmark:
        print(f"Execution time: {time.perf_counter() - start:.4f} seconds")
    print("Generated Text:", output)
    return output


if __name__ == "__main__":
    main()
