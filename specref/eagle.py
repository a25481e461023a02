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

Checkpoints load in the original EAGLE/HASS/EAGLE-3 layouts (keys `fc.*`, `layers.0.*` or `midlayer.*`,
`norm`, `lm_head`, `d2t`); `save_head` writes the same layout plus a `config.json`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from specref.kv_cache import KVCache
from specref.loading import atomic_directory, read_weights
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
    fuse_hf,
    parse_rope,
    split_hf,
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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "eagle3" and (self.draft_vocab_size is None or len(self.layer_ids) != 3):
            raise ValueError("an EAGLE-3 head needs draft_vocab_size and three layer_ids")

    @property
    def hidden(self) -> int:
        return self.layer.hidden_size


class Eagle3Layer(nn.Module):
    """EAGLE-3's first layer: attention over [embedding; hidden] (2H), residual from the hidden stream."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.hidden_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, in_features=2 * c.hidden_size)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, e: Tensor, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, cache: KVCache | None,
                layer: int) -> Tensor:
        x = torch.cat([self.input_layernorm(e), self.hidden_norm(h)], dim=-1)
        h = h + self.self_attn(x, cos, sin, mask, cache, layer)
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
            self.fc = nn.Linear(3 * target.config.hidden_size, hidden, bias=config.fc_bias)
            self.layers = nn.ModuleList([Eagle3Layer(c), *(DecoderLayer(c) for _ in range(c.num_hidden_layers - 1))])
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
                mask: Tensor | None = None, *, return_logits: bool = True) -> tuple[Tensor, Tensor | None]:
        """Head outputs g (B, q, H) and draft logits over the full vocabulary (B, q, V) for `tokens` (B, q)
        paired with `features` (B, q, F): target features, or the head's own g from the step before."""
        embed = self.embed_tokens or self.target.embed_tokens
        e = embed(tokens).to(self.dtype)
        attn_mask = attention_mask(tokens, cache, mask)
        cos, sin = self.rotary(position_ids, e.dtype)
        if self.config.kind == "eagle":
            x = self.fc(torch.cat([e, features], dim=-1))
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, attn_mask, cache, i)
        else:
            h = self.fc(features) if features.shape[-1] != self.config.hidden else features
            x = self.layers[0](e, h, cos, sin, attn_mask, cache, 0)
            for i, layer in enumerate(self.layers[1:], start=1):
                x = layer(x, cos, sin, attn_mask, cache, i)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return x, self.logits(x) if return_logits else None

    def logits(self, g: Tensor) -> Tensor:
        """Draft logits over the target's full vocabulary from head outputs g."""
        if self.config.kind == "eagle":
            return self.target.logits(g)
        ids = torch.arange(len(self.d2t), device=self.d2t.device) + self.d2t
        return full_vocabulary(self.lm_head(self.norm(g)), ids, self.config.layer.vocab_size)


# -- checkpoints ----------------------------------------------------------------------------------------

def _our_names(key: str, kind: str) -> str:
    """Checkpoint key -> module name: EAGLE-3's `midlayer.` (one layer) or `midlayer.{i}.` become `layers.{i}.`."""
    if kind == "eagle3" and key.startswith("midlayer."):
        rest = key.removeprefix("midlayer.")
        head = rest.partition(".")[0]
        return f"layers.{rest}" if head.isdigit() else f"layers.0.{rest}"
    return key


def _count_layers(keys: set[str], prefix: str) -> int:
    indices = {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}
    numeric = {i for i in indices if i.isdigit()}
    return len(numeric) if numeric else 1


def head_config_from(cfg: dict[str, Any], weights: dict[str, Tensor], target: Llama) -> HeadConfig:
    """Infer the head's kind and shapes from its checkpoint: the keys decide, the config only fills gaps."""
    keys = set(weights)
    if "fc.weight" not in keys:
        raise ValueError("not an EAGLE head: no fc.weight (an MTP module or a plain model is no EAGLE head)")
    kind = "eagle3" if any(k.startswith("midlayer.") for k in keys) else "eagle"
    if kind == "eagle" and not any(k.startswith("layers.0.") for k in keys):
        raise ValueError("not an EAGLE head: neither layers.0.* (EAGLE-1/2, HASS) nor midlayer.* (EAGLE-3)")
    hidden = weights["fc.weight"].shape[0]
    heads = int(cfg.get("num_attention_heads", target.config.num_attention_heads))
    theta, scaling = parse_rope(cfg)  # the head's own RoPE: EAGLE assumes theta 10000 when absent
    layer = replace(
        target.config,
        hidden_size=hidden,
        intermediate_size=int(cfg.get("intermediate_size", target.config.intermediate_size)),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        num_hidden_layers=_count_layers(keys, "midlayer." if kind == "eagle3" else "layers."),
        max_position_embeddings=int(cfg.get("max_position_embeddings", target.config.max_position_embeddings)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", target.config.rms_norm_eps)),
        rope_theta=theta,
        rope_scaling=scaling,
        qkv_bias=any(k.endswith(("q_proj.bias", "qkv_proj.bias")) for k in keys),
        o_bias=any(k.endswith("o_proj.bias") for k in keys),
        tie_word_embeddings=False, head_vocab_size=None, shares_target_embeddings=False,
    )
    width = weights["fc.weight"].shape[1]
    expected = (2 if kind == "eagle" else 3) * target.config.hidden_size
    if width != expected:
        raise ValueError(f"head fc takes {width} inputs but this target needs {expected} "
                         f"({'2' if kind == 'eagle' else '3'} x hidden size {target.config.hidden_size})")
    if kind == "eagle" and hidden != target.config.hidden_size:
        raise ValueError(f"EAGLE-1 head hidden size {hidden} differs from the target's {target.config.hidden_size}")
    vocab = int(cfg.get("vocab_size", target.config.vocab_size))
    if vocab != target.config.vocab_size:
        raise ValueError(f"head vocab size {vocab} differs from the target's {target.config.vocab_size}")
    draft_vocab = weights["lm_head.weight"].shape[0] if kind == "eagle3" else None
    ids = cfg.get("eagle_aux_hidden_state_layer_ids") or default_layer_ids(target.config.num_hidden_layers)
    return HeadConfig(kind=kind, layer=layer, fc_bias="fc.bias" in keys, draft_vocab_size=draft_vocab,
                      layer_ids=tuple(int(i) for i in ids) if kind == "eagle3" else ())


def load_head(path: str | Path, target: Llama) -> EagleHead:
    """Load an EAGLE-1/2, HASS or EAGLE-3 head directory (config.json + weights) for `target`."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: not an EAGLE head directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from None
    weights = {k.removeprefix("model."): v for k, v in read_weights(path).items()
               if not k.endswith(("rotary_emb.inv_freq", "t2d"))}
    config = head_config_from(cfg, weights, target)
    own_embedding = "embed_tokens.weight" in weights
    if own_embedding and tuple(weights["embed_tokens.weight"].shape) != (config.layer.vocab_size, config.hidden):
        raise ValueError(f"head embed_tokens has shape {tuple(weights['embed_tokens.weight'].shape)}")
    if config.kind == "eagle3" and "d2t" not in weights:
        if config.draft_vocab_size != target.config.vocab_size:
            raise ValueError("EAGLE-3 head has a reduced vocabulary but no d2t table")
        weights["d2t"] = torch.zeros(config.draft_vocab_size, dtype=torch.long)
    state = fuse_hf({_our_names(k, config.kind): v for k, v in weights.items()})
    with torch.device("meta"):
        head = EagleHead(config, target, own_embedding)
    expected = {k: v.shape for k, v in head.state_dict().items()}
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise ValueError(f"head checkpoint does not match an {config.kind} head: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"head tensor {name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}")
    if config.kind == "eagle3":
        ids = torch.arange(len(state["d2t"])) + state["d2t"]
        if int(ids.min()) < 0 or int(ids.max()) >= target.config.vocab_size:
            raise ValueError("head d2t maps draft tokens outside the target vocabulary")
    dtype, device = target.dtype, target.device
    head.load_state_dict({k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                          for k, v in state.items()}, assign=True)
    return head.eval()


def save_head(head: EagleHead, path: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Write the head in the original EAGLE layout (config.json + model.safetensors), atomically."""
    c = head.config
    state = split_hf(head.state_dict(), c.layer)
    if c.kind == "eagle3":
        single = c.layer.num_hidden_layers == 1
        state = {(k.replace("layers.0.", "midlayer.", 1) if single else k.replace("layers.", "midlayer.", 1))
                 if k.startswith("layers.") else k: v for k, v in state.items()}
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in state.items()}
    cfg = {**c.layer.to_hf(), "num_hidden_layers": c.layer.num_hidden_layers, "bias": c.fc_bias,
           "architectures": ["LlamaForCausalLMEagle3" if c.kind == "eagle3" else "LlamaForCausalLM"]}
    if c.kind == "eagle3":
        cfg.update(draft_vocab_size=c.draft_vocab_size, eagle_aux_hidden_state_layer_ids=list(c.layer_ids),
                   target_hidden_size=head.fc.weight.shape[1] // 3)
    path, tmp = atomic_directory(path)
    try:
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def new_head_config(target: ModelConfig, kind: str, *, layers: int = 1, fc_bias: bool = False,
                    draft_vocab_size: int | None = None, layer_ids: tuple[int, ...] | None = None) -> HeadConfig:
    """A new head's config, its layers shaped like the target's; EAGLE-3 drafts from `draft_vocab_size` tokens
    (default: all) and fuses `layer_ids` (default: `default_layer_ids`)."""
    layer = replace(target, num_hidden_layers=layers, tie_word_embeddings=False, head_vocab_size=None,
                    shares_target_embeddings=False)
    if kind != "eagle3":
        return HeadConfig(kind=kind, layer=layer, fc_bias=fc_bias)
    return HeadConfig(kind=kind, layer=layer, fc_bias=fc_bias, draft_vocab_size=draft_vocab_size or target.vocab_size,
                      layer_ids=layer_ids or default_layer_ids(target.num_hidden_layers))


def random_head(kind: str, target: Llama, seed: int, *, layers: int = 1, draft_vocab_size: int | None = None,
                layer_ids: tuple[int, ...] | None = None, scale: float = 1.0) -> EagleHead:
    """A head with seeded random weights shaped for `target` (tests: losslessness must hold for any head)."""
    c = target.config
    config = new_head_config(c, kind, layers=layers, fc_bias=kind == "eagle", draft_vocab_size=draft_vocab_size,
                             layer_ids=layer_ids)
    vd = config.draft_vocab_size
    g = torch.Generator().manual_seed(seed)
    head = EagleHead(config, target)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g) / (p.shape[-1] if p.ndim > 1 else 1) ** 0.5)
        if kind == "eagle3":
            ids = torch.randperm(c.vocab_size, generator=g)[:vd].sort().values
            head.d2t.copy_(ids - torch.arange(vd))
    return head.to(target.device, target.dtype).eval()
