"""llama.cpp's GGUF files as Hugging Face config dicts and tensors (the default target ships as one).

Tensors are dequantized to fp32, and llama.cpp's interleaved q/k rows are permuted back to the half-split
RoPE layout that specref's decoder (and transformers) use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

GGUF_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A Llama-architecture GGUF file as an HF `config.json` dict and dequantized fp32 tensors (HF names)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    try:
        reader = GGUFReader(path)
        meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
        arch = meta["general.architecture"]
        if arch != "llama":
            raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
        if f"{arch}.rope.scaling.type" in meta:
            raise ValueError(f"{path}: GGUF RoPE scaling is not supported")
        heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
        names = {t.name for t in reader.tensors}
        config = {
            "model_type": "llama",
            "vocab_size": len(reader.fields["tokenizer.ggml.tokens"].data),
            "hidden_size": meta["llama.embedding_length"],
            "intermediate_size": meta["llama.feed_forward_length"],
            "num_hidden_layers": meta["llama.block_count"],
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": meta.get("llama.rope.dimension_count", meta["llama.embedding_length"] // heads),
            "max_position_embeddings": meta["llama.context_length"],
            "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
            "rope_theta": meta.get("llama.rope.freq_base", 10000.0),
            "tie_word_embeddings": "output.weight" not in names,
            "bos_token_id": reader.fields["tokenizer.ggml.bos_token_id"].contents(),
            "eos_token_id": reader.fields["tokenizer.ggml.eos_token_id"].contents(),
        }
        weights = {}
        for t in reader.tensors:
            block, _, rest = t.name.partition(".")
            if block == "blk":
                layer, part, kind = rest.split(".")
                name = f"model.layers.{layer}.{GGUF_NAMES[part]}.{kind}"
            else:
                name = ("" if block == "output" else "model.") + f"{GGUF_NAMES[block]}.{rest}"
            w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy())
            if block == "blk" and part in ("attn_q", "attn_k"):
                # llama.cpp's converter reorders each head's rows from (half, pair) to (pair, half) so that
                # interleaved RoPE applies; swap them back for the half-split layout.
                n = heads if part == "attn_q" else kv_heads
                w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
            weights[name] = w
    except (KeyError, ValueError, IndexError, OSError) as e:
        if isinstance(e, ValueError) and str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable Llama GGUF file: {e!r}") from None
    return config, weights
