"""Attention for packed rows without a dense mask: each sequence attends only to its own earlier tokens.

A packed row holds several sequences back to back. A dense L x L block-diagonal mask would cost L^2
memory and compute every cross-sequence block only to mask it (on a CPU with native bf16 that was 38% of
a SmolLM2 LoRA step for rows of four 200-token examples). So the training model is loaded with
``attn_implementation=PACKED_ATTENTION``: the row's cumulative sequence lengths travel as keyword
arguments down to ``packed_attention``, which runs

- **varlen flash attention** (``torch.nn.attention.varlen``, PyTorch >= 2.9) where a probe on the
  device shows it works and matches the reference (``probe_varlen``), else
- **per-sequence SDPA**: one causal ``scaled_dot_product_attention`` per sequence, exact everywhere
  (the CPU's kernel, and the fallback on older PyTorch).

Both are linear in L in memory and skip the cross-sequence blocks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

PACKED_ATTENTION = "openft_packed"
# The keyword arguments forward_hidden passes down to the attention layers.
CU_SEQLENS = "openft_cu_seqlens"
MAX_SEQLEN = "openft_max_seqlen"
VARLEN_KEY = "openft_varlen"

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]
# (q, k, v as (L, heads, dim); cu_seqlens int32 (n+1,); max_seqlen; scale) -> (L, q_heads, dim)


def register() -> None:
    """Make ``PACKED_ATTENTION`` known to transformers (idempotent)."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    # The kernel masks by sequence boundaries itself: transformers must build no mask at all.
    AttentionMaskInterface.register(PACKED_ATTENTION, _no_mask)


def _no_mask(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def generation_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within it, a model loaded with ``PACKED_ATTENTION`` generates with SDPA: ``generate``'s
    left-padded batches and KV cache need transformers' own masks, which the packed kernel (one row,
    sequence boundaries) does not take. Other models are left as they are."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != PACKED_ATTENTION:
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(PACKED_ATTENTION)


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (1, heads, L, dim) in, (1, L, heads, dim) out."""
    cu_seqlens = kwargs.get(CU_SEQLENS)
    if cu_seqlens is None or query.shape[0] != 1:
        raise ValueError(
            f"{PACKED_ATTENTION} attention needs one packed row and its {CU_SEQLENS}; "
            "call it through openft.training.packing.forward_hidden."
        )
    if dropout:
        raise ValueError(f"{PACKED_ATTENTION} attention does not implement attention dropout.")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (L, heads, dim)
    kernel: Kernel = kwargs.get(VARLEN_KEY) or per_sequence_sdpa
    out = kernel(q, k, v, cu_seqlens, int(kwargs[MAX_SEQLEN]), scale)
    return out.unsqueeze(0), None


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def per_sequence_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """One causal SDPA per sequence of the row: exact on any device, no cross-sequence work."""
    k, v = _expand_kv(q, k, v)
    bounds = cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        # (1, heads, length, dim) views of this sequence
        qs, ks, vs = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        outputs.append(out[0].transpose(0, 1))
    return torch.cat(outputs, dim=0)


def _varlen_call() -> Kernel | None:
    """A causal call of PyTorch's varlen flash attention, whichever signature this PyTorch has."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    if "window_size" in parameters:  # newer PyTorch: causal is the window (-1, 0)
        causal: dict[str, Any] = {"window_size": (-1, 0)}
    elif "is_causal" in parameters:
        causal = {"is_causal": True}
    else:
        return None
    takes_scale = "scale" in parameters

    def kernel(q, k, v, cu_seqlens, max_seqlen, scale):
        # the layers hand transposed views; flash kernels want packed (tokens, heads, dim) rows
        k, v = _expand_kv(q, k, v)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        extra = {"scale": scale} if takes_scale else {}
        if not takes_scale and abs(scale - q.shape[-1] ** -0.5) > 1e-12:
            raise ValueError("this PyTorch's varlen_attn has no scale argument")
        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **causal, **extra)

    return kernel


def probe_varlen(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> tuple[Kernel | None, str]:
    """The varlen kernel if it runs forward and backward on ``device`` and matches per-sequence SDPA.

    Returns (kernel or None, a few words for the "Training on ..." line).
    """
    if device.type != "cuda":
        return None, "per-sequence SDPA"
    kernel = _varlen_call()
    if kernel is None:
        return None, "per-sequence SDPA (this PyTorch has no varlen attention)"
    generator = torch.Generator(device=device).manual_seed(0)
    lengths = [5, 17, 3]
    cu = torch.tensor([0, 5, 22, 25], dtype=torch.int32, device=device)
    # (heads, tokens, dim) leaves seen through transposes: the layout the attention layers hand over
    shapes = {"q": 4, "k": 2, "v": 2}
    leaves = {
        name: torch.randn(
            heads, sum(lengths), 64, device=device, dtype=dtype, generator=generator
        ).requires_grad_()
        for name, heads in shapes.items()
    }
    q, k, v = (leaves[name].transpose(0, 1) for name in shapes)
    try:
        out = kernel(q, k, v, cu, max(lengths), 0.125)
        out.float().square().sum().backward()
        grads = [leaf.grad.clone() for leaf in leaves.values()]
        for leaf in leaves.values():
            leaf.grad = None
        reference = per_sequence_sdpa(q, k, v, cu, max(lengths), 0.125)
        reference.float().square().sum().backward()
        torch.testing.assert_close(out, reference, atol=2e-2, rtol=2e-2)
        for got, leaf in zip(grads, leaves.values(), strict=True):
            torch.testing.assert_close(got, leaf.grad, atol=5e-2, rtol=5e-2)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not use it
        return None, f"per-sequence SDPA (varlen attention failed its probe: {type(exc).__name__})"
    return kernel, "varlen flash attention"
