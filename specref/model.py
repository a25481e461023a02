"""A Llama-family decoder in plain PyTorch (Llama 1/2/3, Mistral without sliding window, Qwen2, SmolLM).

Each layer computes, with RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019):

    h = x + Wo · softmax(RoPE(Wq n) RoPE(Wk n)^T / sqrt(d) + mask) Wv n,      n = RMSNorm(x)
    y = h + Wdown (silu(Wgate m) * Wup m),                                   m = RMSNorm(h)

with rotary position embeddings (Su et al. 2021, arXiv 2104.09864; optional "llama3" frequency scaling),
grouped-query attention (Ainslie et al. 2023, arXiv 2305.13245: several query heads share one K/V head) and
the SwiGLU MLP (Shazeer 2020, arXiv 2002.05202). logits = W_lm · RMSNorm(y_last_layer).

Parameter names follow Hugging Face's `LlamaForCausalLM` minus the `model.` prefix, except that q/k/v and
gate/up are fused into one matrix each (`formats/hf.py` maps between the two layouts).
The forward writes K/V into a preallocated `KVCache` and takes a boolean mask over the new tokens (causal
for chains, ancestor mask for trees); it can also return the final normed hidden state and the inputs of
chosen layers, which EAGLE heads consume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specref.kv_cache import KVCache


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


class KeyGroups(NamedTuple):
    """A forward's attention mask as groups of queries that see the same number of key rows: per group the batch
    rows and query indices (G,), that number n, and the key rows (G, n) in cache order, or None where each query
    sees the first n rows of its sequence (None for n: all of them). Built once per forward (`key_groups`)."""

    groups: list[tuple[Tensor, Tensor, int | None, Tensor | None]]


def key_groups(mask: Tensor | None, batch: int, queries: int, device: torch.device) -> KeyGroups:
    """Group the `queries` new tokens of each of `batch` sequences by how many rows `mask` (from
    `attention_mask`) lets them see; one host synchronisation per forward, shared by every layer."""
    if mask is None:  # one sequence, one new token: it sees every row
        return KeyGroups([(torch.zeros(1, dtype=torch.long, device=device),) * 2 + (None, None)])
    seen = mask.expand(batch, 1, queries, -1)[:, 0]  # (B, q, rows)
    counts, groups = seen.sum(-1), []
    for n in counts.unique().tolist():
        rows, query = (counts == n).nonzero(as_tuple=True)
        keys = seen[rows, query].nonzero()[:, 1].view(-1, n)  # ascending: cache order
        groups.append((rows, query, n, None if bool((keys[:, -1] == n - 1).all()) else keys))
    return KeyGroups(groups)


def attend_exactly(q: Tensor, k: Tensor, v: Tensor, plan: KeyGroups, enable_gqa: bool) -> Tensor:
    """Attention in which each query (B, heads, q, d) sees only its visible key rows, taken in cache order.

    A masked product over all rows sums each query's visible terms in an order that depends on which other rows
    the forward carries, so a token's attention differs in its last bits between a one-token step, a chain and
    a tree; a model that rounds activations to bfloat16 (`cpu.Int4Linear`) turns such bits into logit changes
    of ~0.3. Here the queries of a group share one product over exactly their keys (a slice, or a gather that
    gives the same bits), so a query's result is the same whatever else the forward holds, and with
    row-independent layers the model's logits are a function of the context alone, as exact speculative
    decoding needs.
    """
    out = q.new_empty(q.shape[0], q.shape[2], q.shape[1], v.shape[-1])  # (B, q, heads, d)
    for rows, queries, n, keys in plan.groups:
        if keys is None and len(rows) == 1:  # a view of one sequence's first n rows: no copy
            r = int(rows[0])
            kk, vv = k[r : r + 1, :, :n], v[r : r + 1, :, :n]
        elif keys is None:
            kk, vv = k[rows, :, :n], v[rows, :, :n]
        else:
            kk, vv = k[rows[:, None], :, keys].transpose(1, 2), v[rows[:, None], :, keys].transpose(1, 2)
        y = F.scaled_dot_product_attention(q[rows, :, queries][:, :, None], kk, vv, enable_gqa=enable_gqa)
        out[rows, queries] = y[:, :, 0]
    return out.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, in_features: int | None = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        # q, k and v in one product: fewer, larger matrix products are what CPU decoding is fast at
        self.qkv_proj = nn.Linear(in_features or c.hidden_size, (self.n_heads + 2 * self.n_kv) * c.head_dim,
                                  bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.o_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | KeyGroups | None,
                cache: KVCache | None, layer: int) -> Tensor:
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (b, heads, t, d)
        qk = rotate(qkv[:, : self.n_heads + self.n_kv], cos, sin)
        q, k, v = qk[:, : self.n_heads], qk[:, self.n_heads :], qkv[:, self.n_heads + self.n_kv :]
        if cache is not None:
            k, v = cache.write(layer, k, v)
        gqa = self.n_heads != self.n_kv
        if isinstance(mask, KeyGroups):
            y = attend_exactly(q, k, v, mask, gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(c.hidden_size, 2 * c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor, exact: bool = False) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj((silu_exact(gate) if exact else F.silu(gate)) * up)


def silu_exact(x: Tensor) -> Tensor:
    """x * sigmoid(x) with the same bits for an element whatever else the tensor holds. F.silu's vector and
    scalar code paths differ in the last bit, and where a large forward's threads split a row decides which
    path an element takes; x / (1 + exp(-x)) agrees on both."""
    return x / (1 + torch.exp(-x))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | KeyGroups | None,
                cache: KVCache | None, layer: int) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h), exact=isinstance(mask, KeyGroups))


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
        # True once every layer is row-independent (`cpu.quantize_int4`): attention then follows (`attend_exactly`)
        self.row_exact = False

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
        they attend only among themselves under the same mask (a full recompute). With `row_exact` set
        (`cpu.quantize_int4`) every token's result is the same bits whatever else the forward carries.
        """
        t = input_ids.shape[1]
        if any(not 0 <= i < len(self.layers) for i in layer_inputs):
            raise ValueError(f"layer_inputs {list(layer_inputs)} must lie in [0, {len(self.layers)})")
        attn_mask = attention_mask(input_ids, cache, mask)
        if self.row_exact:
            attn_mask = key_groups(attn_mask, *input_ids.shape, input_ids.device)
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


def randomize(module: nn.Module, generator: torch.Generator, scale: float, bias_fan_in: int) -> None:
    """Seeded random weights in place: norm weights near 1, every other tensor N(0, scale^2 / fan_in), fan_in
    being a matrix's input width (`bias_fan_in` for vectors)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[-1] if param.ndim > 1 else bias_fan_in
                param.copy_(scale * torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))


def random_model(config: ModelConfig, seed: int, *, dtype: torch.dtype = torch.float32, scale: float = 1.0,
                 device: torch.device | str = "cpu") -> Llama:
    """A model with seeded random weights (`randomize`). Tests use small-vocabulary random models (a larger
    scale gives peakier, more varied distributions)."""
    model = Llama(config)
    randomize(model, torch.Generator().manual_seed(seed), scale, config.hidden_size)
    return model.to(device, dtype).eval()
