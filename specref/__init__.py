"""specref: a reference implementation of lossless speculative decoding.

    from specref import load_model, SamplingParams, generate_ar, generate_sps
    target, draft = load_model("path/to/target"), load_model("path/to/draft")
    out = generate_sps(target, draft, [1, 2, 3], gamma=4, max_new_tokens=64,
                       params=SamplingParams(temperature=0.7, top_p=0.9), seed=0)
    out.token_ids, out.stats.alpha, out.stats.tau
"""

from pkgutil import extend_path

# Run from a source checkout after a non-editable `pip install .`, Python imports this directory, which has
# no compiled `_sampler`; extending the package path lets it come from the installed copy.
__path__ = extend_path(__path__, __name__)

from specref.autoregressive import generate as generate_ar
from specref.formats.hf import load_model, load_tokenizer, save_model
from specref.logits import SamplingParams, process_logits
from specref.model import Llama, ModelConfig, random_model
from specref.sps import generate as generate_sps
from specref.stats import Generation, Stats

__all__ = [
    "Generation",
    "Llama",
    "ModelConfig",
    "SamplingParams",
    "Stats",
    "generate_ar",
    "generate_sps",
    "load_model",
    "load_tokenizer",
    "process_logits",
    "random_model",
    "save_model",
]
