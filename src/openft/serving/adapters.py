"""The LoRA adapters loaded on one base model, and which adapter each row of a batch runs through.

PEFT loads every adapter into one model over the shared base weights. A batch mixes them, each row through its
own adapter or none (the base model). PEFT's own mixed-adapter forward (``adapter_names=``) regroups the rows in
Python inside every LoRA layer, which on a 30-layer model costs more than the decode step itself; here each
LoRA layer instead holds its adapters side by side, ``A = [A_1; ...; A_k]`` and ``B = [s_1 B_1, ..., s_k B_k]``,
and a forward hook adds ``((x A^T) * mask) B^T``, where the mask keeps, for each row, the columns of that row's
adapter. That is two small matmuls per layer whatever the mix, and exactly ``B_i A_i x`` for each row: the
other adapters' columns contribute exact zeros, and base rows get nothing added. ``FastDecoder``, which runs
q/k/v (and gate/up) as one matmul, asks ``project`` for the same over a group of projections (with weights
packed for oneDNN, ``A`` then rides in the frozen weight's matmul).

Only the engine's compute thread calls into this object; adapters in use by a running request are never evicted.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.errors import ServerError
from openft.serving.packed import Packer, linear

BASE = "__base__"


@dataclass
class _Adapter:
    name: str
    slot: int  # this adapter's number in the rows' mask
    nbytes: int
    users: int = 0


@dataclass
class _Stack:
    a: Any  # [sum of ranks, in]
    b: Any  # [out, sum of ranks], each block scaled
    owners: tuple[int, ...]  # the slot of each of the sum-of-ranks columns
    packed: tuple[Any, Any] = (None, None)  # a and b in oneDNN's layout, or None (serving/packed.py)


class AdapterSet:
    def __init__(self, model: Any, *, max_adapters: int, max_bytes: int | None) -> None:
        self.model = model
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.peft: Any = None
        self.loaded: OrderedDict[str, _Adapter] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # the loop changes `loaded`; other threads may list it
        self._names = itertools.count()
        self._layers: list[Any] = []
        # By the ids of the projections that run as one matmul (one LoRA layer, or FastDecoder's q/k/v and
        # gate/up groups); rebuilt after a load or eviction.
        self._stacks: dict[tuple[int, ...], _Stack | None] = {}
        # By the same keys: FastDecoder's packed [W; A] and its bias, or None where it does not fit.
        self._folded: dict[tuple[int, ...], Any] = {}
        # What packs them (and the stacks), one budget for all: None until needed, False where nothing packs.
        self._packer: Packer | bool | None = None
        self._row_slots: Any = None  # per row of the running forward: its adapter's slot, -1 for the base
        self._masks: dict[tuple[tuple[int, ...], int], Any] = {}  # by a stack's owners and the input's rank

    def paths(self) -> list[str]:
        """Adapter paths loaded, least recently used first (safe from any thread)."""
        with self._lock:
            return list(self.loaded)

    def acquire(self, path: str) -> str | None:
        """Load ``path`` if needed and count one more user; its PEFT name, or None when no room can be made."""
        adapter = self.loaded.get(path)
        if adapter is None:
            if len(self.loaded) >= self.max_adapters and all(a.users for a in self.loaded.values()):
                return None  # every loaded adapter serves a running request: wait for one to finish
            adapter = self._load(path)
        with self._lock:
            self.loaded.move_to_end(path)
        adapter.users += 1
        self._evict_over_limits()
        return adapter.name

    def release(self, path: str) -> None:
        adapter = self.loaded.get(path)
        if adapter is not None:
            adapter.users -= 1
            self._evict_over_limits()

    @contextmanager
    def rows(self, names: list[str], *, tokens: Any = None):
        """Run the forward inside with row ``i`` through adapter ``names[i]`` (``BASE``: none).

        ``tokens`` (prompts packed into one row): token ``t`` belongs to prompt ``tokens[t]``, which runs
        through ``names[tokens[t]]``.
        """
        if self.peft is None or all(name == BASE for name in names):
            yield
            return
        import torch

        slots = {a.name: a.slot for a in self.loaded.values()}
        device = next(self.model.parameters()).device
        row_slots = torch.tensor([slots.get(name, -1) for name in names], device=device)
        # [rows, 1] for a batch (one token per row), [1, tokens] for packed prompts.
        self._row_slots = row_slots[:, None] if tokens is None else row_slots[tokens][None, :]
        try:
            yield
        finally:
            self._row_slots = None
            self._masks.clear()

    def lora_delta(self, modules: tuple[Any, ...], x: Any) -> Any:
        """What the rows' adapters add to the projections ``modules`` run as one matmul (their outputs side
        by side), for ``x`` ``[rows, in]`` (FastDecoder) or ``[rows, tokens, in]`` (a hooked LoRA layer);
        None when no row runs through an adapter.

        Several projections' stacks are joined as ``A = [A_q; A_k; A_v]`` and a block-diagonal ``B``, so it
        stays two matmuls: each projection's output gets exactly its own ``B A x``, and zeros from the other
        blocks.
        """
        stack = self._stack_for(modules) if self._row_slots is not None else None
        if stack is None:
            return None
        packed_a, packed_b = stack.packed
        mask = self._mask(stack, x)
        return linear(linear(x.to(stack.a.dtype), stack.a, packed_a) * mask, stack.b, packed_b).to(x.dtype)

    def project(self, modules: tuple[Any, ...], x: Any, weight: Any, packed: Any, bias: Any = None) -> Any:
        """FastDecoder's projection group ``modules`` over ``x`` ``[rows, in]``: the frozen ``weight``'s output
        (``packed``: the same in oneDNN's layout, or None) plus each row's adapter.

        With a packed weight the adapters' ``A`` rides in the same matmul: ``[W; A]`` is packed once per set of
        loaded adapters, ``x A^T`` are the output's last columns, and a step makes one call fewer per group
        (oneDNN's small calls cost 20-60 microseconds each, whatever their size).
        """
        stack = self._stack_for(modules) if self._row_slots is not None else None
        if stack is None:
            return linear(x, weight, packed, bias)
        folded = self._folded_for(modules, stack, weight, bias) if packed is not None else None
        if folded is None:
            return linear(x, weight, packed, bias) + self.lora_delta(modules, x)
        joined, joined_bias = folded
        y = linear(x, weight, joined, joined_bias)
        size = weight.shape[0]
        return y[:, :size] + linear(y[:, size:] * self._mask(stack, x), stack.b, stack.packed[1])

    def _stack_for(self, modules: tuple[Any, ...]) -> _Stack | None:
        key = tuple(id(module) for module in modules)
        if key not in self._stacks:
            stack = _join(
                [self._stack(module) if hasattr(module, "lora_A") else None for module in modules], modules
            )
            packer = self._packer_for(stack.a) if stack is not None else None
            if packer is not None:
                stack.packed = (packer.pack(stack.a), packer.pack(stack.b))
            self._stacks[key] = stack
        return self._stacks[key]

    def _folded_for(self, modules: tuple[Any, ...], stack: _Stack, weight: Any, bias: Any) -> Any:
        """``[W; A]`` packed (and the bias with zeros for A's columns), or None where it does not fit."""
        key = tuple(id(module) for module in modules)
        if key not in self._folded:
            import torch

            folded = None
            packer = self._packer_for(weight)
            joined = packer.pack(torch.cat([weight, stack.a])) if packer is not None else None
            if joined is not None:
                joined_bias = None if bias is None else torch.cat([bias, bias.new_zeros(stack.a.shape[0])])
                folded = (joined, joined_bias)
            self._folded[key] = folded
        return self._folded[key]

    def _packer_for(self, weight: Any) -> Packer | None:
        if self._packer is None:
            self._packer = Packer.for_weights(weight) or False
        return self._packer or None

    def _forget_stacks(self) -> None:
        # After a load or an eviction: the stacks and their packed copies are rebuilt, within a fresh budget.
        self._stacks.clear()
        self._folded.clear()
        self._packer = None

    def _mask(self, stack: _Stack, x: Any) -> Any:
        """``[rows, 1, R]`` for a batch, ``[1, tokens, R]`` for packed prompts, ``[rows, R]`` for FastDecoder:
        1 where column ``r`` of the stack belongs to the row's (or token's) adapter."""
        mask = self._masks.get((stack.owners, x.dim()))
        if mask is None:
            import torch

            owners = torch.tensor(stack.owners, device=self._row_slots.device)
            slots = self._row_slots[..., None] if x.dim() == 3 else self._row_slots.reshape(-1, 1)
            mask = (slots == owners).to(stack.a.dtype)
            self._masks[stack.owners, x.dim()] = mask
        return mask

    # -- the forward hook ------------------------------------------------------------------------------

    def _add_lora(self, module: Any, args: tuple, output: Any) -> Any:
        delta = self.lora_delta((module,), args[0])
        return output if delta is None else output + delta

    def _stack(self, module: Any) -> _Stack | None:
        import torch

        dtype = module.get_base_layer().weight.dtype
        blocks = [
            (adapter.slot, module.lora_A[adapter.name].weight, module.lora_B[adapter.name].weight, name)
            for adapter in self.loaded.values()
            if (name := adapter.name) in module.lora_A
        ]
        if not blocks:
            return None
        a = torch.cat([block[1] for block in blocks]).to(dtype)
        b = torch.cat([block[2] * module.scaling[block[3]] for block in blocks], dim=1).to(dtype)
        owners = tuple(slot for slot, weight, _, _ in blocks for _ in range(weight.shape[0]))
        return _Stack(a, b, owners)

    # -- loading and eviction --------------------------------------------------------------------------

    def _load(self, path: str) -> _Adapter:
        from peft import PeftModel

        name = f"adapter_{next(self._names)}"
        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            else:
                self.peft.load_adapter(path, adapter_name=name)
        except (OSError, ValueError) as exc:
            raise ServerError(f"Could not load the LoRA adapter at {path!r}: {exc}") from exc
        self._adopt_layers(name, path)
        slot = min(set(range(len(self.loaded) + 1)) - {a.slot for a in self.loaded.values()})
        adapter = _Adapter(name, slot, _adapter_bytes(path))
        with self._lock:
            self.loaded[path] = adapter
        self._forget_stacks()
        return adapter

    def _adopt_layers(self, name: str, path: str) -> None:
        """Hook every LoRA layer once and switch PEFT's own adapter forward off; refuse adapters we can't mix."""
        from peft.tuners.lora import Linear, LoraLayer

        for module in self.peft.modules():
            if not isinstance(module, LoraLayer):
                continue
            unsupported = (
                not isinstance(module, Linear)
                or name in module.lora_variant
                or (name in module.lora_B and module.lora_B[name].bias is not None)
            )
            if unsupported and (name in module.lora_A or name in getattr(module, "lora_embedding_A", {})):
                self.peft.delete_adapter(name)
                raise ServerError(
                    f"The adapter at {path!r} is not a plain LoRA on linear layers (DoRA, a LoRA bias or an "
                    "embedding LoRA), which openft's engine does not batch; serve a merged export instead."
                )
            if all(module is not layer for layer in self._layers):
                module.register_forward_hook(self._add_lora)
                self._layers.append(module)
            module.enable_adapters(False)  # the base layer alone; the hook adds each row's adapter

    def _evict_over_limits(self) -> None:
        # The newest adapter is loaded before any is evicted, so the PeftModel never runs out of adapters.
        while len(self.loaded) > 1 and (
            len(self.loaded) > self.max_adapters
            or (self.max_bytes is not None and sum(a.nbytes for a in self.loaded.values()) > self.max_bytes)
        ):
            if not self._evict_one():
                return

    def _evict_one(self) -> bool:
        for path, adapter in self.loaded.items():
            if adapter.users == 0:
                with self._lock:
                    del self.loaded[path]
                self.peft.delete_adapter(adapter.name)
                self._forget_stacks()
                return True
        return False


def _join(stacks: list[_Stack | None], modules: tuple[Any, ...]) -> _Stack | None:
    """One stack for projections run as one matmul: ``A`` stacked, ``B`` block-diagonal (zeros where a
    projection has no adapter)."""
    if len(stacks) == 1:
        return stacks[0]
    if all(stack is None for stack in stacks):
        return None
    import torch

    a = torch.cat([stack.a for stack in stacks if stack is not None])
    like = next(stack for stack in stacks if stack is not None)
    b = like.b.new_zeros((sum(module.out_features for module in modules), a.shape[0]))
    row = column = 0
    for stack, module in zip(stacks, modules, strict=True):
        if stack is not None:
            b[row : row + module.out_features, column : column + stack.b.shape[1]] = stack.b
            column += stack.b.shape[1]
        row += module.out_features
    owners = tuple(slot for stack in stacks if stack is not None for slot in stack.owners)
    return _Stack(a, b, owners)


def _adapter_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("adapter_model.*"))
