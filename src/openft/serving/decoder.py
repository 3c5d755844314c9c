"""The decode step (and the prefill) of a Llama-family model, written out for the batch.

A decode step reads every weight of the model once to produce one token per row, so on a CPU its floor is
the memory bandwidth (SmolLM2-135M in float32: 541 MB a step, about 19 ms on a 2-core AVX2 machine).
transformers' forward adds to that its per-module calls, the mask and position machinery and the cache
protocol: there a token of one stream took 35 ms in openft's batch, and takes 28 ms with this step
(``bench/serve.py``'s ``openft-hf`` and ``openft`` rows).

What it does differently, and nothing else: the q/k/v projections are one matmul and gate/up another
(the model's own weights, re-seated as views of one tensor each, so transformers' forward reads the same
numbers). On a CPU in float32 every projection's weight is also stored transposed, ``[in, out]`` in memory
(still an ``[out, in]`` view to the model): MKL's matmul of a few rows by such a matrix measured 1.2-1.4x
faster at 4-32 rows (and 1.13x at a 320-token prefill), equal at one row. The LM head's weight too (3.2 ms
less a step at 8 rows for SmolLM2's 49,152 x 576 head, 0.6 ms at one), and the embeddings with it when the
model ties them: a lookup then gathers a strided row, which costs nothing that shows. In bfloat16 on a CPU
(oneDNN's kernels) the projections and the LM head also keep a copy in oneDNN's blocked layout
(``serving/packed.py``: F.linear reordered the weight at every call; a SmolLM2 step of one row 32-34 ms ->
23 ms, of 8 rows 42-48 -> 28 ms, the same bits), and an adapter's ``A`` rides in its group's matmul
(``AdapterSet.project``). Rotary embeddings for the rows' positions are computed once per step, not per
layer; each row's new keys and values go straight into the batch's ``SlotCache``; attention is one
``scaled_dot_product_attention`` over the cache's rows, the query heads that share a key/value head taking
the place of its query positions (no keys expanded per head). Each LoRA adapter's contribution is added per
projection group. The arithmetic is transformers' own, op for op: in float32 its logits are bitwise those of
transformers' forward over the same (re-seated) weights.

A prefill runs the same layers over the prompts' tokens, a token per row, each prompt attending causally to
itself alone (one SDPA per prompt: prompts arriving together are packed end to end, with no tokens x tokens
mask), and gives each prompt's last logits and every layer's keys and values for the cache.

Models of other architectures, or with features this step does not reproduce, prefill and decode through
transformers' forward (``FastDecoder.build`` returns None for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from openft.serving.kv_cache import SlotCache
from openft.serving.packed import Packer, linear
from openft.training.attention import per_sequence_sdpa

# Architectures whose decoder layer is exactly: RMSNorm, q/k/v (bias allowed), rotary, attention, o, residual,
# RMSNorm, SiLU-gated MLP, residual; and a final RMSNorm and LM head.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


@dataclass
class _Layer:
    module: (
        Any  # the transformers decoder layer: its projections are looked up at each step (PEFT wraps them)
    )
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [q; k; v] weights, one tensor
    qkv_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [gate; up] weights, one tensor
    # The same weights (and o's and down's) in oneDNN's layout, or None (``serving/packed.py``).
    packed: tuple[torch.Tensor | None, ...] = (None, None, None, None)  # qkv, o, gate_up, down


class FastDecoder:
    def __init__(self, model: Any) -> None:
        config = model.config
        weight = next(model.parameters())
        transpose = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.model = model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.eps = config.rms_norm_eps
        inner = model.model
        self.embed = inner.embed_tokens
        self.rotary = inner.rotary_emb
        self.final_norm = inner.norm.weight
        self.scaling = inner.layers[0].self_attn.scaling
        self.layers = [_fuse(layer, transpose) for layer in inner.layers]
        if transpose:
            _seat_head(model)
        self.head_packed = None
        packer = Packer.for_weights(weight)
        if packer is not None:
            for layer in self.layers:
                attention, mlp = layer.module.self_attn, layer.module.mlp
                weights = (layer.qkv, attention.o_proj.weight, layer.gate_up, mlp.down_proj.weight)
                layer.packed = tuple(packer.pack(w) for w in weights)
            self.head_packed = packer.pack(model.lm_head.weight)

    @classmethod
    def build(cls, model: Any) -> FastDecoder | None:
        """A decoder for ``model``, or None when its architecture is one this step does not reproduce."""
        config = model.config
        inner = getattr(model, "model", None)
        if (
            getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES
            or getattr(config, "hidden_act", None) != "silu"
            or getattr(config, "mlp_bias", False)
            or inner is None
            or not hasattr(inner, "rotary_emb")
            or not hasattr(model, "lm_head")
        ):
            return None
        attention = inner.layers[0].self_attn
        if getattr(attention, "sliding_window", None) is not None or attention.o_proj.bias is not None:
            return None
        return cls(model)

    def step(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: SlotCache,
        attend: torch.Tensor,
        adapters: Any = None,
    ) -> torch.Tensor:
        """Logits ``[rows, vocab]`` for token ``input_ids[i]`` at ``positions[i]`` of row ``i``.

        ``cache`` is prepared for the step (``SlotCache.prepare``); ``attend`` ``[rows, span]`` says which
        cached positions each row sees. ``adapters``: an ``AdapterSet`` inside its ``rows`` block, or None.
        """
        rows = input_ids.shape[0]
        kv_heads, head_dim = self.kv_heads, self.head_dim
        mask = attend[:, None, None, :]

        def attention(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = cache.update(k, v, index)
            # The query heads that share a key/value head take the place of query positions: one SDPA of
            # [rows, kv_heads, heads per kv head, dim] against the cache as it is, no keys expanded per head.
            o = F.scaled_dot_product_attention(
                q.reshape(rows, kv_heads, self.heads // kv_heads, head_dim),
                keys,
                values,
                attn_mask=mask,
                scale=self.scaling,
            )
            return o.reshape(rows, self.heads * head_dim)

        return self._logits(self._layers(input_ids, positions, attention, adapters))

    def prefill(
        self, input_ids: torch.Tensor, positions: torch.Tensor, lengths: list[int], adapters: Any = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Prompts packed end to end (``input_ids`` ``[tokens]``, ``positions`` restarting at each prompt's
        start, ``lengths`` the prompts'): the logits of each prompt's last token ``[prompts, vocab]``, and each
        layer's keys and values ``[1, kv_heads, tokens, head_dim]`` (as transformers' cache holds them).

        The same layers as a decode step, a token per row; each prompt attends causally to itself alone (one
        SDPA per prompt, no tokens x tokens mask). ``adapters``: inside ``rows(names, tokens=...)``.
        """
        tokens = input_ids.shape[0]
        ends = torch.tensor(lengths, device=input_ids.device).cumsum(0)
        bounds = torch.cat([ends.new_zeros(1), ends])
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []

        def attention(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            # q, k, v are [tokens, heads, 1, dim]: the cache wants [1, heads, tokens, dim] views.
            layers.append((k.transpose(0, 2), v.transpose(0, 2)))
            o = per_sequence_sdpa(q[:, :, 0], k[:, :, 0], v[:, :, 0], bounds, max(lengths), self.scaling)
            return o.reshape(tokens, self.heads * self.head_dim)

        hidden = self._layers(input_ids, positions, attention, adapters)
        return self._logits(hidden[ends - 1]), layers

    def _layers(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: Any, adapters: Any
    ) -> torch.Tensor:
        """The decoder layers over one token per row; ``attention(layer, q, k, v)`` gives the heads' outputs."""
        rows = input_ids.shape[0]
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = heads * head_dim, kv_heads * head_dim
        x = self.embed(input_ids)
        cos, sin = self.rotary(x, positions[:, None])  # [rows, 1, head_dim]
        cos, sin = cos[:, :, None], sin[:, :, None]  # broadcast over heads: [rows, 1, 1, head_dim]
        for index, layer in enumerate(self.layers):
            attention_module, mlp = layer.module.self_attn, layer.module.mlp
            qkv_packed, o_packed, gate_up_packed, down_packed = layer.packed
            h = self._norm(x, layer.input_norm)
            qkv = _project(
                adapters,
                (attention_module.q_proj, attention_module.k_proj, attention_module.v_proj),
                h,
                layer.qkv,
                qkv_packed,
                layer.qkv_bias,
            )
            # [rows, 1, heads, dim] then [rows, heads, 1, dim], as transformers lays them out; rotary
            # embeddings on the query and key heads together (the same operations, half the calls).
            qk = qkv[:, : q_size + kv_size].view(rows, 1, heads + kv_heads, head_dim).transpose(1, 2)
            qk = qk * cos + _rotate_half(qk) * sin
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[:, q_size + kv_size :].view(rows, 1, kv_heads, head_dim).transpose(1, 2)
            o = attention(index, q, k, v)
            out = _project(adapters, (attention_module.o_proj,), o, _base(attention_module.o_proj), o_packed)
            x = x + out
            h = self._norm(x, layer.post_norm)
            gate_up = _project(adapters, (mlp.gate_proj, mlp.up_proj), h, layer.gate_up, gate_up_packed)
            a = F.silu(gate_up[:, : self.intermediate]) * gate_up[:, self.intermediate :]
            out = _project(adapters, (mlp.down_proj,), a, _base(mlp.down_proj), down_packed)
            x = x + out
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.lm_head
        if self.head_packed is None or hasattr(head, "base_layer"):  # a LoRA on the head: its module adds it
            return head(self._norm(x, self.final_norm))
        return linear(self._norm(x, self.final_norm), head.weight, self.head_packed)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # transformers' RMSNorm, op for op: in float32, then back to the model's dtype before the weight.
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)


def _fuse(layer: Any, transpose: bool) -> _Layer:
    """Re-seat a layer's q/k/v weights (and biases) as views of one tensor, and gate/up as views of another;
    with ``transpose``, every projection's weight is stored ``[in, out]``."""
    attention, mlp = layer.self_attn, layer.mlp
    qkv_linears = [attention.q_proj, attention.k_proj, attention.v_proj]
    qkv = _seat(qkv_linears, transpose)
    bias = None
    if attention.q_proj.bias is not None:
        bias = torch.cat([linear.bias.detach() for linear in qkv_linears])
        _reseat(qkv_linears, "bias", bias)
    gate_up = _seat([mlp.gate_proj, mlp.up_proj], transpose)
    if transpose:
        _seat([attention.o_proj], transpose)
        _seat([mlp.down_proj], transpose)
    return _Layer(
        layer, layer.input_layernorm.weight, qkv, bias, layer.post_attention_layernorm.weight, gate_up
    )


def _seat(linears: list[Any], transpose: bool) -> torch.Tensor:
    """The weights of ``linears`` joined, ``[sum of outs, in]`` (with ``transpose``, a view of ``[in, sum of
    outs]`` storage), each linear's weight re-seated as its slice of it."""
    weights = [linear.weight.detach() for linear in linears]
    joined = torch.cat([w.t() for w in weights], dim=1).contiguous().t() if transpose else torch.cat(weights)
    _reseat(linears, "weight", joined)
    return joined


def _seat_head(model: Any) -> None:
    """The LM head's weight stored ``[hidden, vocab]``; tied embeddings stay the same tensor."""
    head, embed = model.lm_head, model.model.embed_tokens
    tied = head.weight is embed.weight
    head.weight = torch.nn.Parameter(head.weight.detach().t().contiguous().t(), requires_grad=False)
    if tied:
        embed.weight = head.weight


def _reseat(linears: list[Any], name: str, joined: torch.Tensor) -> None:
    start = 0
    for module in linears:
        size = getattr(module, name).shape[0]
        setattr(module, name, torch.nn.Parameter(joined[start : start + size], requires_grad=False))
        start += size


def _base(linear: Any) -> torch.Tensor:
    """The frozen weight of a projection, whether PEFT has wrapped it in a LoRA layer or not."""
    return linear.base_layer.weight if hasattr(linear, "base_layer") else linear.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _project(
    adapters: Any,
    modules: tuple[Any, ...],
    x: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor | None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """A projection group's output: the frozen weight's, plus each row's adapter when there are adapters."""
    if adapters is None:
        return linear(x, weight, packed, bias)
    return adapters.project(modules, x, weight, packed, bias)
