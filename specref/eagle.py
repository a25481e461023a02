"""EAGLE draft heads: drafting from the target's own hidden states (feature-level autoregression).

EAGLE-1/2 (Li et al., ICML 2024, arXiv 2401.15077; EAGLE-2, arXiv 2406.16858, keeps the weights; HASS,
arXiv 2408.15766, too). At position j the head reads f_j, the target's final normed hidden state, and the
embedding of the token after it:

    x_j = fc([embed(x_{j+1}); f_j])          fc: 2H -> H (bias decided by the weights, not the config)
    g_j = Layer(x_j)                         one Llama layer without its input norm
    q(x_{j+2}) = softmax(W_lm g_j)           the target's own output head

Deeper in a draft tree the head's own g replaces f.

EAGLE-3 (arXiv 2503.01840). f_j concatenates the target's inputs to layers (2, L//2, L-3) (3H wide), fused by
fc: 3H -> H; the first layer attends over [input_norm(embed(x_{j+1})); hidden_norm(h)] (2H wide) with the
residual taken from h; q = softmax(lm_head(norm(g))) over a reduced vocabulary whose draft id d is target id
d + d2t[d]. The head feeds back its own pre-norm output g (H wide: no fc).

"Eagle 3.1" options, as the `speculators` library trains them (each a few lines below):
    norm_before_fc         h = fc(RMSNorm_3H(f))                      one norm over the whole feature
    fc_norm                h = fc([RMSNorm_i(f_i) for each H chunk])  one norm per fused layer
    norm_before_residual   the first layer's residual is hidden_norm(h), not h
    norm_output            the head feeds back norm(g), and q = softmax(lm_head(norm(g))) as before

Checkpoints in the original EAGLE/HASS/EAGLE-3 layouts are read and written by `formats/eagle.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from specref.kv_cache import KVCache
from specref.model import (
    MLP,
    Attention,
    DecoderLayer,
    Llama,
    ModelConfig,
    RMSNorm,
    Rotary,
    attention_mask,
    full_vocabulary,
    randomize,
)

KINDS = ("eagle", "eagle3")


def default_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """The target layers whose inputs EAGLE-3 fuses: low, middle and high (clamped for very shallow targets)."""
    low, mid, high = (min(max(i, 0), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3))
    return (low, mid, high)


@dataclass(frozen=True)
class HeadConfig:
    kind: str  # "eagle" (EAGLE-1/2, HASS) or "eagle3"
    layer: ModelConfig  # the shapes of the head's decoder layers; vocab_size is the target's
    fc_bias: bool = False
    draft_vocab_size: int | None = None  # EAGLE-3's reduced output vocabulary
    layer_ids: tuple[int, ...] = ()  # EAGLE-3: target layers whose inputs are fused
    norm_before_fc: bool = False  # EAGLE-3.1 options (module docstring)
    fc_norm: bool = False
    norm_before_residual: bool = False
    norm_output: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "eagle3" and (self.draft_vocab_size is None or len(self.layer_ids) != 3):
            raise ValueError("an EAGLE-3 head needs draft_vocab_size and three layer_ids")
        if self.norm_before_fc and self.fc_norm:
            raise ValueError("norm_before_fc and fc_norm are mutually exclusive")
        if self.kind == "eagle" and (self.norm_before_fc or self.fc_norm or self.norm_before_residual
                                     or self.norm_output):
            raise ValueError("norm_before_fc, fc_norm, norm_before_residual and norm_output are EAGLE-3 options")

    @property
    def hidden(self) -> int:
        return self.layer.hidden_size


class Eagle3Layer(nn.Module):
    """EAGLE-3's first layer: attention over [embedding; hidden] (2H), residual from the hidden stream."""

    def __init__(self, c: ModelConfig, norm_before_residual: bool = False) -> None:
        super().__init__()
        self.norm_before_residual = norm_before_residual
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, in_features=2 * c.hidden_size)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, e: Tensor, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None,
                layer: int) -> Tensor:
        normed = self.hidden_norm(h)
        x = torch.cat([self.input_layernorm(e), normed], dim=-1)
        h = (normed if self.norm_before_residual else h) + self.self_attn(x, cos, sin, mask, cache, layer)
        return h + self.mlp(self.post_attention_layernorm(h))


class EagleHead(nn.Module):
    def __init__(self, config: HeadConfig, target: Llama, own_embedding: bool = False) -> None:
        super().__init__()
        c, hidden = config.layer, config.hidden
        self.config = config
        # The target is used, never owned: registering it would copy its weights into the head's state.
        self.__dict__["target"] = target
        self.embed_tokens = nn.Embedding(c.vocab_size, hidden) if own_embedding else None
        self.rotary = Rotary(c)
        if config.kind == "eagle":
            self.fc = nn.Linear(2 * hidden, hidden, bias=config.fc_bias)
            self.layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_hidden_layers))
            self.layers[0].input_layernorm = nn.Identity()  # EAGLE-1's layer 0 reads fc's output unnormed
        else:
            width = target.config.hidden_size
            if config.norm_before_fc:
                self.input_norm = RMSNorm(3 * width, c.rms_norm_eps)
            if config.fc_norm:
                self.fc_norm = nn.ModuleList(RMSNorm(width, c.rms_norm_eps) for _ in range(3))
            self.fc = nn.Linear(3 * width, hidden, bias=config.fc_bias)
            self.layers = nn.ModuleList([Eagle3Layer(c, config.norm_before_residual),
                                         *(DecoderLayer(c) for _ in range(c.num_hidden_layers - 1))])
            self.norm = RMSNorm(hidden, c.rms_norm_eps)
            self.lm_head = nn.Linear(hidden, config.draft_vocab_size, bias=False)
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].post_attention_layernorm.weight.dtype  # a norm: `pack_linears` leaves it as is

    @property
    def target_layers(self) -> tuple[int, ...]:
        """Target layers whose inputs the head reads (EAGLE-3); EAGLE-1 reads the final hidden state."""
        return self.config.layer_ids

    def features(self, hidden: Tensor, layer_inputs: tuple[Tensor, ...]) -> Tensor:
        """The head's feature input from a target forward's outputs."""
        return hidden if self.config.kind == "eagle" else torch.cat(layer_inputs, dim=-1)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        c, w = self.config.layer, self.layers[0].post_attention_layernorm.weight
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, max_len, c.head_dim, dtype=w.dtype,
                       device=w.device)

    def forward(self, tokens: Tensor, features: Tensor, position_ids: Tensor, cache: KVCache | None = None,
                mask: Tensor | None = None, *, return_logits: bool = True,
                draft_vocab: bool = False) -> tuple[Tensor, Tensor | None]:
        """Head outputs g (B, q, H) and draft logits over the full vocabulary (B, q, V), or with `draft_vocab`
        over an EAGLE-3 head's own output vocabulary (B, q, Vd; see `logits`), for `tokens` (B, q) paired with
        `features` (B, q, F): target features, or the head's own g from the step before."""
        embed = self.embed_tokens or self.target.embed_tokens
        e = embed(tokens).to(self.dtype)
        attn_mask = attention_mask(tokens, cache, mask)
        cos, sin = self.rotary(position_ids, e.dtype)
        if self.config.kind == "eagle":
            x = self.fc(torch.cat([e, features.to(e.dtype)], dim=-1))  # target features into the head's dtype
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, attn_mask, cache, i)
        else:
            h = self.fuse(features.to(e.dtype)) if features.shape[-1] != self.config.hidden else features
            x = self.layers[0](e, h, cos, sin, attn_mask, cache, 0)
            for i, layer in enumerate(self.layers[1:], start=1):
                x = layer(x, cos, sin, attn_mask, cache, i)
            if self.config.norm_output:
                x = self.norm(x)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return x, self.logits(x, draft_vocab) if return_logits else None

    def fuse(self, features: Tensor) -> Tensor:
        """EAGLE-3's fc over the concatenated target features, after the optional Eagle 3.1 norms."""
        if self.config.norm_before_fc:
            features = self.input_norm(features)
        elif self.config.fc_norm:
            features = torch.cat([norm(f) for norm, f in zip(self.fc_norm, features.chunk(3, dim=-1), strict=True)],
                                 dim=-1)
        return self.fc(features)

    def logits(self, g: Tensor, draft_vocab: bool = False) -> Tensor:
        """Draft logits from head outputs g (already normed with norm_output): over the target's full
        vocabulary, or with `draft_vocab` over the head's own output vocabulary, column j being token
        `vocab_ids[j]` (an EAGLE-1/2 head, which drafts with the target's output layer, always gives the full
        vocabulary). Growing a top-ranked tree needs only the head's own columns: the shipped EAGLE-3 head's 8,192
        instead of 49,152, most of them -inf. A bfloat16 head's logits come back in float32, so that ranking and
        sampling read them as they would a float32 head's."""
        if self.config.kind == "eagle":
            return self.target.logits(g.to(self.target.dtype))
        logits = self.lm_head(g if self.config.norm_output else self.norm(g))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return logits if draft_vocab else full_vocabulary(logits, self.vocab_ids, self.config.layer.vocab_size)

    @property
    def vocab_ids(self) -> Tensor | None:
        """Token id of each column of `logits(g, draft_vocab=True)`; None for EAGLE-1/2 heads, whose columns
        are the target's vocabulary in order."""
        if self.config.kind == "eagle":
            return None
        return torch.arange(len(self.d2t), device=self.d2t.device) + self.d2t


def new_head_config(target: ModelConfig, kind: str, *, layers: int = 1, fc_bias: bool = False,
                    draft_vocab_size: int | None = None, layer_ids: tuple[int, ...] | None = None,
                    **options: bool) -> HeadConfig:
    """A new head's config, its layers shaped like the target's; EAGLE-3 drafts from `draft_vocab_size` tokens
    (default: all), fuses `layer_ids` (default: `default_layer_ids`) and takes the Eagle 3.1 `options`."""
    layer = replace(target, num_hidden_layers=layers, tie_word_embeddings=False, head_vocab_size=None,
                    shares_target_embeddings=False)
    if kind != "eagle3":
        return HeadConfig(kind=kind, layer=layer, fc_bias=fc_bias, **options)
    return HeadConfig(kind=kind, layer=layer, fc_bias=fc_bias, draft_vocab_size=draft_vocab_size or target.vocab_size,
                      layer_ids=layer_ids or default_layer_ids(target.num_hidden_layers), **options)


def random_head(kind: str, target: Llama, seed: int, *, layers: int = 1, draft_vocab_size: int | None = None,
                layer_ids: tuple[int, ...] | None = None, scale: float = 1.0, **options: bool) -> EagleHead:
    """A head with seeded random weights shaped for `target` (tests: losslessness must hold for any head)."""
    c = target.config
    config = new_head_config(c, kind, layers=layers, fc_bias=kind == "eagle", draft_vocab_size=draft_vocab_size,
                             layer_ids=layer_ids, **options)
    vd = config.draft_vocab_size
    g = torch.Generator().manual_seed(seed)
    head = EagleHead(config, target)
    randomize(head, g, scale, bias_fan_in=1)
    if kind == "eagle3":
        ids = torch.randperm(c.vocab_size, generator=g)[:vd].sort().values
        head.d2t.copy_(ids - torch.arange(vd))
    return head.to(target.device, target.dtype).eval()
