"""The LoRA adapters loaded on one base model, and which adapter each row of a batch runs through.

Every adapter lives in one PEFT model over the shared base weights. A batch mixes them: before each forward
the batch loop names the adapter of every row (``"__base__"`` for the base model itself) and PEFT's LoRA layers
apply each adapter to its own rows only (PEFT's mixed-adapter batches, ``adapter_names=``). The names reach the
layers through pre-forward hooks registered once per layer, not once per step.

Only the batch loop's thread calls into this object; adapters in use by a running request are never evicted.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.errors import ServerError

BASE = "__base__"


@dataclass
class _Adapter:
    name: str
    nbytes: int
    users: int = 0


class AdapterSet:
    def __init__(self, model: Any, *, max_adapters: int, max_bytes: int | None) -> None:
        self.model = model
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.peft: Any = None
        self.loaded: OrderedDict[str, _Adapter] = OrderedDict()  # least recently used first
        self._names = itertools.count()
        self._hooked: set[int] = set()
        self._batch_names: list[str] | None = None

    def acquire(self, path: str) -> str | None:
        """Load ``path`` if needed and count one more user; its PEFT name, or None when no room can be made."""
        adapter = self.loaded.get(path)
        if adapter is None:
            if len(self.loaded) >= self.max_adapters and all(a.users for a in self.loaded.values()):
                return None  # every loaded adapter serves a running request: wait for one to finish
            adapter = self._load(path)
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
    def rows(self, names: list[str]):
        """Run the forward inside with row ``i`` through adapter ``names[i]``."""
        if self.peft is None:
            yield
            return
        self._batch_names = names
        try:
            yield
        finally:
            self._batch_names = None

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
        self._hook_new_layers()
        adapter = _Adapter(name, _adapter_bytes(path))
        self.loaded[path] = adapter
        return adapter

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
                del self.loaded[path]
                self.peft.delete_adapter(adapter.name)
                return True
        return False

    def _hook_new_layers(self) -> None:
        from peft.tuners.lora import LoraLayer

        # An adapter that targets modules no earlier one did brings new LoRA layers: hook those too.
        for module in self.peft.modules():
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._name_rows, with_kwargs=True)
                self._hooked.add(id(module))

    def _name_rows(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._batch_names is not None:
            kwargs["adapter_names"] = self._batch_names
        return args, kwargs


def _adapter_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("adapter_model.*"))
