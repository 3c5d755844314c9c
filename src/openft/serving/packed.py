"""Weights kept in oneDNN's blocked layout for the decode step's matmuls, on CPUs with native bfloat16.

``F.linear`` over a bfloat16 weight on a CPU reorders the weight into oneDNN's blocked layout at every call:
for a decode step, which reads every weight once to produce a few rows, that reorder is most of the cost.
Reordered once (``torch.ops.mkldnn._reorder_linear_weight``, what torch's own compiler does for CPU
inference) the same matmuls read each weight once a call: on a 2-core AMD EPYC with AVX512-BF16 a stream of
SmolLM2-sized matmuls went from 10.7 to 18.2 GB/s at one row and 11.1 to 17.8 at eight, the LM head
4.8 -> 2.2 ms, and a stacked LoRA matmul 1.3-2x faster; the outputs are the same bits as ``F.linear``'s.

The blocked copy is memory beside the model's own weights (which PEFT and transformers' forward still
read), so ``Packer`` packs only while the copies fit in a quarter of the memory available when the
model loaded, and never where oneDNN lacks the kernels (it checks one matmul against ``F.linear`` first).
Float32 weights are left alone: oneDNN's float32 results differ in the last bits from MKL's, which
transformers' forward uses, and the decode step's float32 logits are bitwise transformers'.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from openft.training.hardware import available_memory_bytes

logger = logging.getLogger(__name__)

# The rows oneDNN is told to expect: decode steps run 1 to a few dozen rows, and a layout for 8 measured
# as fast as one for 1 at one row and faster at 8 and 32.
_ROWS_HINT = 8


class Packer:
    """Packs weights for ``linear`` while a byte budget lasts; ``None`` for a weight it does not pack."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.packed_bytes = 0

    @classmethod
    def for_weights(cls, weight: torch.Tensor) -> Packer | None:
        """A packer for a model whose weights are like ``weight``, or None where packing does not apply."""
        if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or not _onednn_packs_bfloat16():
            return None
        return cls(available_memory_bytes() // 4)

    def pack(self, weight: torch.Tensor) -> torch.Tensor | None:
        nbytes = weight.numel() * weight.element_size()
        if self.packed_bytes + nbytes > self.budget:
            return None
        self.packed_bytes += nbytes
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), _ROWS_HINT)


def linear(
    x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through ``packed`` (``weight`` in oneDNN's layout) when there is one."""
    if packed is None:
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


_CHECKED: bool | None = None


def _onednn_packs_bfloat16() -> bool:
    """Whether this torch and CPU run a packed bfloat16 matmul, and get ``F.linear``'s bits from it."""
    global _CHECKED
    if _CHECKED is None:
        _CHECKED = False
        try:
            if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
                generator = torch.Generator().manual_seed(0)
                weight = torch.randn(40, 24, generator=generator).to(torch.bfloat16)
                x = torch.randn(3, 24, generator=generator).to(torch.bfloat16)
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT)
                _CHECKED = torch.equal(linear(x, weight, packed), F.linear(x, weight))
        # a torch without these operators, or a CPU without bf16
        except (AttributeError, RuntimeError) as exc:
            logger.info("oneDNN weight packing unavailable: %s", exc)
    return _CHECKED
