"""Checkpoints and other files: Hugging Face checkpoints (`hf`), GGUF (`gguf`), EAGLE/HASS/EAGLE-3 heads
(`eagle`), the embedded default pair's verified cache (`default_model`), prompt sets and chat encoding
(`prompts`), and the all-or-nothing write every writer uses (`files`). The converter to the `speculators`
layout and an adapter for `transformers` models belong here too. Imports only the core."""
