"""A Llama-family decoder in plain PyTorch (Llama 1/2/3, Mistral without sliding window, Qwen2, SmolLM).

Each layer computes, with RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019):

    h = x + Wo · softmax(RoPE(Wq n) RoPE(Wk n)^T / sqrt(d) + mask) Wv n,      n = RMSNorm(x)
    y = h + Wdown (silu(Wgate m) * Wup m),                                   m = RMSNorm(h)

with rotary position embeddings (Su et al. 2021, arXiv 2104.09864; optional "llama3" frequency scaling),
grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245: several query heads share one K/V head) and
the SwiGLU MLP (Shazeer 2020, arXiv 2002.05202). logits = W_lm · RMSNorm(y_last_layer).

Parameter names follow Hugging Face's `LlamaForCausalLM` minus the `model.` prefix, except that q/k/v and
gate/up are fused into one matrix each (`fuse_hf` / `split_hf` map between the two; see `loading.py`).
The forward writes K/V into a preallocated `KVCache` and takes a boolean mask over the new tokens (causal
for chains, ancestor mask for trees); it can also return the final normed hidden state and the inputs of
chosen layers, which EAGLE heads consume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specref.kv_cache import KVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    tie_word_embeddings: bool = False
    eos_token_id: tuple[int, ...] = field(default_factory=tuple)
    bos_token_id: int | None = None
    # A draft may predict only part of the vocabulary: lm_head then has this many rows, for the token ids in
    # the `vocab_ids` buffer, and every other token gets logit -inf (probability 0).
    head_vocab_size: int | None = None
    # A draft may borrow the target's input embedding: its checkpoint then omits it.
    shares_target_embeddings: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"config: head_dim must be even for RoPE, got {self.head_dim}")
        if self.head_vocab_size is not None and not 1 <= self.head_vocab_size <= self.vocab_size:
            raise ValueError(f"config: head_vocab_size must lie in [1, {self.vocab_size}], got {self.head_vocab_size}")
        if self.head_vocab_size is not None and self.tie_word_embeddings:
            raise ValueError("config: a reduced output vocabulary cannot be tied to the input embedding")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"config: rope scaling type {kind!r} is not supported (default, linear, llama3)")

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face `config.json` dict (transformers 4.x `rope_scaling` or 5.x `rope_parameters`)."""
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"config: model_type {model_type!r} is not supported; expected one of "
                             f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"config: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
        if model_type == "mistral" and cfg.get("sliding_window") is not None:
            raise ValueError("config: Mistral sliding-window attention is not supported")
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            theta, rope = parse_rope(cfg)
            eos = cfg.get("eos_token_id")
            eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
            bias = bool(cfg.get("attention_bias", False))
            return cls(
                vocab_size=int(cfg["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=rope,
                qkv_bias=model_type == "qwen2" or bias,
                o_bias=bias,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                eos_token_id=eos_ids,
                bos_token_id=cfg.get("bos_token_id"),
                head_vocab_size=cfg.get("specref_head_vocab_size"),
                shares_target_embeddings=bool(cfg.get("specref_shares_target_embeddings", False)),
            )
        except KeyError as e:
            raise ValueError(f"config: required field {e.args[0]!r} is missing") from None

    def to_hf(self) -> dict[str, Any]:
        """A `config.json` dict that both specref and transformers' LlamaForCausalLM read back identically."""
        d = asdict(self)
        rope = {"rope_theta": d.pop("rope_theta"), **(d.pop("rope_scaling") or {"rope_type": "default"})}
        qkv_bias, o_bias = d.pop("qkv_bias"), d.pop("o_bias")
        if o_bias and not qkv_bias:
            raise ValueError("an o_proj bias without q/k/v biases has no Hugging Face config")
        qwen2 = qkv_bias and not o_bias  # Qwen2: biases on q/k/v only
        eos = list(d.pop("eos_token_id"))
        d["specref_head_vocab_size"], d["specref_shares_target_embeddings"] = (
            d.pop("head_vocab_size"), d.pop("shares_target_embeddings"))
        return {**d, "model_type": "qwen2" if qwen2 else "llama",
                "architectures": ["Qwen2ForCausalLM" if qwen2 else "LlamaForCausalLM"], "hidden_act": "silu",
                "attention_bias": o_bias, "mlp_bias": False, "rope_parameters": rope,
                "eos_token_id": eos[0] if len(eos) == 1 else (eos or None)}


# HF checkpoints keep q/k/v and gate/up apart; specref fuses each group into one matrix (rows concatenated).
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fuse_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF-named tensors (no `model.` prefix) -> specref's names, concatenating each fused group.

    Works in place on `state` (and returns it), so each group's parts are freed as soon as they are joined.
    """
    for key in list(state):
        for fused, parts in FUSED.items():
            head, sep, kind = key.partition(f".{parts[0]}.")
            if sep and all(f"{head}.{part}.{kind}" in state for part in parts):
                state[f"{head}.{fused}.{kind}"] = torch.cat([state.pop(f"{head}.{part}.{kind}") for part in parts])
    return state


def split_hf(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """specref-named tensors -> HF names (the inverse of `fuse_hf`)."""
    d = config.head_dim
    sizes = {"self_attn.qkv_proj": [config.num_attention_heads * d] + [config.num_key_value_heads * d] * 2,
             "mlp.gate_up_proj": [config.intermediate_size] * 2}
    out = {}
    for key, value in state.items():
        for fused, parts in FUSED.items():
            head, sep, kind = key.partition(f".{fused}.")
            if sep:
                out.update({f"{head}.{p}.{kind}": v for p, v in zip(parts, value.split(sizes[fused]), strict=True)})
                break
        else:
            out[key] = value
    return out


def parse_rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling) from transformers 5's `rope_parameters` or 4.x's `rope_theta`/`rope_scaling`;
    theta is 10000 when absent (as EAGLE heads assume)."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    theta = float(rope.pop("rope_theta", cfg.get("rope_theta") or 10000.0))
    if rope.get("rope_type", "default") == "default":
        rope = {}
    return theta, rope or None


class Output(NamedTuple):
    logits: Tensor | None  # (B, q, V), or None when not asked for
    hidden: Tensor  # (B, q, H): final hidden state after the last RMSNorm (EAGLE-1's feature)
    layer_inputs: tuple[Tensor, ...]  # inputs (residual stream) of the requested layers (EAGLE-3's features)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def rope_frequencies(config: ModelConfig) -> Tensor:
    """Inverse frequencies theta^(-2i/d), with linear or llama3 (Llama 3.1) scaling applied.

    Computed in fp32 exactly as transformers does: SmolLM2's residual stream reaches 1e4, where an angle that
    differs in its last bit changes the logits by 1e-4.
    """
    d = config.head_dim
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    s = config.rope_scaling or {}
    if s.get("rope_type") == "linear":
        inv_freq = inv_freq / float(s["factor"])
    elif s.get("rope_type") == "llama3":
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_ctx = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are stretched by `factor`, short ones kept, the band between interpolated.
        smooth = ((old_ctx / wavelen - low) / (high - low)).clamp(0, 1)
        inv_freq = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return inv_freq


class Rotary:
    """cos/sin tables for RoPE at given positions. Not a module: `.to(bfloat16)` would round the frequencies,
    so they stay fp32 (as transformers computes them) and are cast per (device, dtype) on first use."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.inv_freq: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __call__(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        # Angles in at least fp32 (bf16 positions above 256 would collide); fp64 models keep fp64.
        angle_dtype = torch.promote_types(dtype, torch.float32)
        key = (position_ids.device, angle_dtype)
        if key not in self.inv_freq:
            self.inv_freq[key] = rope_frequencies(self.config).to(position_ids.device, angle_dtype)
        angles = position_ids.to(angle_dtype)[..., None] * self.inv_freq[key]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, q, head_dim): broadcast over heads
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply RoPE in the half-split layout: pairs (x_i, x_{i+d/2}) rotate by angle pos * inv_freq_i."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, in_features: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        # q, k and v in one product: fewer, larger matrix products are what CPU decoding is fast at
        self.qkv_proj = nn.Linear(in_features or c.hidden_size, (self.n_heads + 2 * self.n_kv) * c.head_dim,
                                  bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.o_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None, layer: int) -> Tensor:
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (b, heads, t, d)
        qk = rotate(qkv[:, : self.n_heads + self.n_kv], cos, sin)
        q, k, v = qk[:, : self.n_heads], qk[:, self.n_heads :], qkv[:, self.n_heads + self.n_kv :]
        if cache is not None:
            k, v = cache.write(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_heads != self.n_kv)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None, layer: int) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.head_vocab_size or config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        ids = None if config.head_vocab_size is None else torch.arange(config.head_vocab_size)
        self.register_buffer("vocab_ids", ids)  # token id of each lm_head row (None: all, in order)
        self.rotary = Rotary(config)

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim,
                       dtype=self.dtype, device=self.device)

    def forward(self, input_ids: Tensor, position_ids: Tensor, cache: KVCache | None = None,
                mask: Tensor | None = None, *, return_logits: bool = True,
                layer_inputs: Sequence[int] = ()) -> Output:
        """Run `input_ids` (B, q) at `position_ids` (B, q).

        With a cache, the new tokens attend to every cached token of their row and, among themselves, as
        `mask` (B or 1, q, q) allows (default: causal); their K/V are appended to the cache. Without a cache
        they attend only among themselves under the same mask (a full recompute).
        """
        t = input_ids.shape[1]
        if any(not 0 <= i < len(self.layers) for i in layer_inputs):
            raise ValueError(f"layer_inputs {list(layer_inputs)} must lie in [0, {len(self.layers)})")
        attn_mask = attention_mask(input_ids, cache, mask)
        cos, sin = self.rotary(position_ids, self.dtype)

        x, captured = self.embed_tokens(input_ids), {}
        for i, layer in enumerate(self.layers):
            captured[i] = x
            x = layer(x, cos, sin, attn_mask, cache, i)
        if cache is not None:
            cache.advance(t)
        hidden = self.norm(x)
        return Output(self.logits(hidden) if return_logits else None, hidden,
                      tuple(captured[i] for i in layer_inputs))

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits over the full vocabulary; tokens outside a reduced output vocabulary get -inf."""
        head = self.lm_head(hidden)
        return head if self.vocab_ids is None else full_vocabulary(head, self.vocab_ids, self.config.vocab_size)


def attention_mask(input_ids: Tensor, cache: KVCache | None, mask: Tensor | None) -> Tensor | None:
    """The attention mask of a forward over `input_ids` (B, q): with a cache, every cached row of a sequence
    plus what `mask` (B or 1, q, k; default causal over the q new tokens) allows among its last k rows (see
    `KVCache.attention_mask`); without one, `mask` (q, q) alone. With a cache this also tells the cache where
    the new rows go."""
    b, t = input_ids.shape
    if mask is None:
        mask = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
    return cache.attention_mask(mask) if cache is not None else mask.expand(b, t, t)[:, None]


def full_vocabulary(logits: Tensor, ids: Tensor, vocab_size: int) -> Tensor:
    """Logits over a reduced vocabulary (..., Vd) placed at token ids `ids` (Vd,) of a full one; -inf elsewhere."""
    full = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
    return full.index_copy_(-1, ids, logits)


def random_model(config: ModelConfig, seed: int, *, dtype: torch.dtype = torch.float32, scale: float = 1.0,
                 device: torch.device | str = "cpu") -> Llama:
    """A model with seeded random weights: N(0, scale^2 / fan_in) matrices, norm weights near 1.

    Tests use small-vocabulary random models (a larger scale gives peakier, more varied distributions).
    """
    generator = torch.Generator().manual_seed(seed)
    model = Llama(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[-1] if param.ndim > 1 else config.hidden_size
                param.copy_(scale * torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))
    return model.to(device, dtype).eval()
