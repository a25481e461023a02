"""specref: a reference implementation of lossless speculative decoding.

    from specref import load_model, SamplingParams, generate_ar, generate_sps
    target, draft = load_model("path/to/target"), load_model("path/to/draft")
    out = generate_sps(target, draft, [1, 2, 3], gamma=4, max_new_tokens=64,
                       params=SamplingParams(temperature=0.7, top_p=0.9), seed=0)
    out.token_ids, out.stats.alpha, out.stats.tau
"""

from importlib import import_module
from pkgutil import extend_path
from typing import Any

# Run from a source checkout after a non-editable `pip install .`, Python imports this directory, which has
# no compiled `_sampler`; extending the package path lets it come from the installed copy.
__path__ = extend_path(__path__, __name__)

# The public names and where they live, imported on first use (PEP 562), so that `python -m specref --help`
# answers without importing torch.
_PUBLIC = {
    "Generation": ("specref.stats", "Generation"),
    "Llama": ("specref.model", "Llama"),
    "ModelConfig": ("specref.model", "ModelConfig"),
    "SamplingParams": ("specref.logits", "SamplingParams"),
    "Stats": ("specref.stats", "Stats"),
    "generate_ar": ("specref.autoregressive", "generate"),
    "generate_sps": ("specref.sps", "generate"),
    "load_model": ("specref.formats.hf", "load_model"),
    "load_tokenizer": ("specref.formats.hf", "load_tokenizer"),
    "process_logits": ("specref.logits", "process_logits"),
    "random_model": ("specref.model", "random_model"),
    "save_model": ("specref.formats.hf", "save_model"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'specref' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = globals()[name] = getattr(import_module(module), attr)
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
