"""Faster linear layers for CPU decoding: oneDNN matrix products on weights packed once, and 4-bit weights.

Decoding one sequence is a chain of matrix-vector products, so its speed is how fast weights stream from
memory. On the 2-core AMD EPYC machine of the README's table, PyTorch's default fp32 CPU path reads weights at ~11
GB/s, while oneDNN on prepacked ("reordered") weights reaches ~20 GB/s, and its cost stays nearly flat from 1 to 8
rows: the rows a speculative verification adds are almost free (on an AVX2-only Zen 3, 6 rows cost 1.35 one-row
steps). On the 2-thread Intel Xeon VM it is the other way round for few rows: PyTorch's default product (Intel
MKL's) ran a one-token step in 44.7 ms against 58.5 ms packed, and 3 rows in 51.3 ms, though 4 rows jump to 71.2 ms
(packed: 62.2). `packing_pays` encodes that as a fixed rule. The product is the same, only the summation order
differs (relative differences ~1e-6).

A 4-bit target (`quantize_int4`) reads an eighth of the bytes, but it is a different model: see `Int4Linear`.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import Tensor, nn

from specref.model import Llama


class PackedLinear(nn.Module):
    """An inference-only `nn.Linear` whose weight is stored in oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...): /proc/cpuinfo on Linux, else what the platform
    module reports (on Windows it names the vendor; elsewhere it may not, which `packing_pays` reads as not Intel)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "GenuineIntel" if "GenuineIntel" in platform.processor() else platform.processor()


def packing_pays(vendor: str, mkl: bool) -> bool:
    """Whether `pack_linears` is the faster fp32 product on a CPU: everywhere but where PyTorch's default
    product is Intel MKL on an Intel CPU (module docstring: MKL, Intel's library, beat oneDNN's packed weights
    at 1-3 rows on the Intel Xeon and ran at half their speed on the AMD EPYC). A fixed rule rather than a
    timing at start-up: the two products round differently, and a seed must give the same bits on one machine
    every run."""
    return not (mkl and vendor == "GenuineIntel")


def should_pack(choice: bool | None = None) -> bool:
    """Whether to pack: `choice` (--pack/--nopack) when given, else `packing_pays` for this machine, as
    `generate`, `bench` and `calibrate` decide."""
    return packing_pays(cpu_vendor(), torch.backends.mkl.is_available()) if choice is None else choice


def is_packed(model: nn.Module) -> bool:
    """Whether `pack_linears` swapped `model`'s layers: the default trees depend on it (`tree.device_tree`)."""
    return any(isinstance(m, PackedLinear) for m in model.modules())


def onednn_bf16() -> bool:
    """Whether oneDNN can multiply bf16 weights on this CPU (a function, so that tests can say no)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_linears(model: nn.Module) -> int:
    """Swap every `nn.Linear` of a CPU fp32/bf16 model for a `PackedLinear`; return how many were swapped.

    A no-op (returning 0) on other devices and dtypes, where PyTorch was built without oneDNN, and for bf16 where
    oneDNN has no bf16 path on this CPU (it needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT; an AVX2-only AMD EPYC
    refused to reorder the weights): PyTorch's default product runs those.
    """
    weight = next(model.parameters())
    if (weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16)
            or not torch.backends.mkldnn.is_available()
            or (weight.dtype == torch.bfloat16 and not onednn_bf16())):
        return 0
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child))
                swapped += 1
    return swapped


INT4_GROUP = 32  # weights per scale and zero; llama.cpp's Q4_0/Q4_1 blocks have 32 as well


class Int4Linear(nn.Module):
    """An inference-only `nn.Linear` with 4-bit weights, in groups of 32 along the input dimension.

    Each group g of a row is stored as codes c in 0..15 with a scale s_g and a minimum m_g: w = s_g * c + m_g,
    s_g = (max - min) / 15 (llama.cpp's Q4_1 rule, so a weight that already lies on such a grid, as the
    default target's GGUF weights do, gets its own codes back; its fp16 scales and minima are then rounded to
    bfloat16, so the weights are the GGUF's up to that rounding, and a group far from zero relative to its
    spread loses more). PyTorch's CPU kernel is fast only with bfloat16 activations (fp32 ones take a ~20x
    slower scalar path), so the layer computes round_bf16(round_bf16(x) @ W^T) (+ bias in fp32) with fp32
    accumulation, W built from the bfloat16 scales and zeros. A quantized model's logits therefore differ from
    its fp32 original's, and speculative decoding is lossless with respect to the quantized model: each row's
    result does not depend on how many rows a forward carries, which verification needs.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        n, k = linear.weight.shape
        groups = linear.weight.detach().float().reshape(n, k // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp_min(torch.finfo(torch.float32).tiny)  # a constant group: any scale
        codes = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
        # buffers (not in the state dict: a checkpoint holds fp32 weights), counted by `tools/timing.py`
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.reshape(n, k), 2),
                             persistent=False)
        # The kernel computes (c - 8) * scale + zero, so zero = m + 8 s; laid out (groups, out_features, 2).
        zeros = torch.stack([scale, low + 8 * scale], -1).transpose(0, 1).contiguous().bfloat16()
        self.register_buffer("scales_zeros", zeros, persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, self.in_features).bfloat16()
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, INT4_GROUP, self.scales_zeros)
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def check_int4_kernel() -> None:
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        raise ValueError(f"int4 weights need PyTorch's CPU int4 kernel, which torch {torch.__version__} lacks")


def swapped_layer(model: nn.Module) -> str | None:
    """The name of the first layer `pack_linears` or `quantize_int4` put in `model`, or None."""
    return next((name for name, m in model.named_modules() if isinstance(m, (PackedLinear, Int4Linear))), None)


def int4_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, name, layer) of each `nn.Linear` that `quantize_int4` swaps: all but the output head, checked
    against the kernel's shapes. A model built on the meta device is checked before any weights are read."""
    check_int4_kernel()
    if swapped_layer(model) is not None:
        raise ValueError("this model's layers are packed or quantized already: quantize before pack_linears")
    layers = [(module, name, child) for module in model.modules() for name, child in module.named_children()
              if isinstance(child, nn.Linear) and name != "lm_head"]
    if not layers:
        raise ValueError("this model has no linear layer to quantize")
    for _, name, child in layers:
        if child.in_features % INT4_GROUP or child.out_features % 16:
            raise ValueError(f"int4 weights need in_features divisible by {INT4_GROUP} and out_features by 16 "
                             f"(PyTorch's kernel); {name} maps {child.in_features} -> {child.out_features}")
    return layers


def quantize_int4(model: Llama) -> int:
    """Swap every `nn.Linear` of a CPU fp32 model but its output head for an `Int4Linear`; return how many.

    The output head (tied to the embedding in small Llamas, 8-bit in the default target's GGUF) keeps its
    weights; attention and the MLP's activation switch to `model.attend_exactly` and `model.silu_exact`, so that
    a token's last hidden state is the same bits in a one-token step, a chain or a tree. Every layer is checked
    before any is swapped, so a refusal leaves the model as it was.
    """
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(f"int4 weights need a CPU float32 model, not {weight.device.type} {weight.dtype}")
    layers = int4_layers(model)
    for module, name, child in layers:
        setattr(module, name, Int4Linear(child))
    model.row_exact = True  # every layer is now row-independent but attention: make attention so too
    return len(layers)
