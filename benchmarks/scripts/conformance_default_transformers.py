# The default suite's transformers assisted-generation and prompt-lookup rows at N = 500 (batch-1 generation is
# too slow on a 2-core CPU for the command's N = 2,000), with the kit's public API:
import time

import transformers

from specref.conformance import check_greedy, check_sampler, exact_law
from specref.conformance.engines import hf_sampler
from specref.logits import SamplingParams
from specref.tools.conformance import default_models

transformers.logging.set_verbosity_error()
m = default_models()
prompt, params, hf = m["prompt"], m["params"], m["hf_target"]
law = exact_law(hf, prompt, 3, params)
for mode in ("assisted", "prompt_lookup"):
    start = time.perf_counter()
    r = check_sampler(hf_sampler(hf, 3, params, mode=mode, assistant=m["hf_draft"]), hf, prompt, 3, params, n=500,
                      law=law, name=f"transformers {mode}")
    g = check_greedy(hf_sampler(hf, 3, SamplingParams(0.0), mode=mode, assistant=m["hf_draft"]), hf, prompt, 3,
                     n=4, name=f"transformers {mode}")
    print(f"{r.summary()} [{time.perf_counter() - start:.0f} s]")
    print(g.summary())
