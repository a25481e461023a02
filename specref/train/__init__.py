"""Training drafts and heads by distillation from text the target writes: the shared stages (`distill`), the
draft model (`draft`, `python -m specref train-draft`) and EAGLE heads (`eagle`, `train-eagle`). Imports the
core and `specref.formats`."""
