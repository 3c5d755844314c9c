"""The batch's key/value cache: one preallocated tensor pair per layer, one row per running sequence.

Row ``r`` holds its sequence's keys and values at positions ``[0, length)``. Rows stay packed at the front:
a sequence that leaves is replaced by the last row, so a decode step attends over a leading slice of the
tensors and never gathers. The tensors grow (doubling) in rows and positions as the batch needs, up to the
batch size and the context window, and are dropped when the batch is empty.

It is handed to a transformers model as its ``cache``: the model calls ``update`` once per layer with the
new token's keys and values, and attends over what it returns.
"""

from __future__ import annotations

from typing import Any

import torch

_MIN_POSITIONS = 256
_MIN_ROWS = 4


class SlotCache:
    def __init__(self, *, max_rows: int, max_positions: int) -> None:
        self.max_rows = max_rows
        self.max_positions = max_positions
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._batch = 0
        self._span = 0
        self._rows: torch.Tensor | None = None
        self._write_at: torch.Tensor | None = None

    @property
    def rows_capacity(self) -> int:
        return self.keys[0].shape[0] if self.keys else 0

    @property
    def positions_capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def release(self) -> None:
        """Give the memory back (the batch is empty)."""
        self.keys, self.values = [], []

    # -- filling rows -----------------------------------------------------------------------------------

    def store(self, rows: range, prefill: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy one prompt's keys and values (each ``[1, heads, length, dim]``) into every row of ``rows``."""
        length = prefill[0][0].shape[2]
        self._reserve(rows.stop, length, like=prefill)
        for layer, (keys, values) in enumerate(prefill):
            self.keys[layer][rows.start : rows.stop, :, :length] = keys[0]
            self.values[layer][rows.start : rows.stop, :, :length] = values[0]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy row ``source``'s first ``length`` positions into row ``target`` (which is leaving)."""
        for tensors in (self.keys, self.values):
            for layer in tensors:
                layer[target, :, :length] = layer[source, :, :length]

    # -- a decode step ---------------------------------------------------------------------------------

    def prepare(self, positions: torch.Tensor, span: int) -> None:
        """The next forward writes row ``i``'s new token at ``positions[i]`` and attends over ``[0, span)``."""
        self._reserve(positions.shape[0], span)
        self._batch = positions.shape[0]
        self._span = span
        self._rows = torch.arange(self._batch, device=positions.device)
        self._write_at = positions

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows, :, self._write_at] = key_states[:, :, 0]
        values[self._rows, :, self._write_at] = value_states[:, :, 0]
        return keys[: self._batch, :, : self._span], values[: self._batch, :, : self._span]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Models ask only when given no position_ids; every decode step passes them.
        return max(self._span - 1, 0)

    # -- growth ----------------------------------------------------------------------------------------

    def _reserve(
        self, rows: int, positions: int, like: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> None:
        if rows > self.max_rows or positions > self.max_positions:
            raise ValueError(
                f"The cache holds at most {self.max_rows} rows of {self.max_positions} positions; "
                f"{rows} rows of {positions} were asked for."
            )
        if not self.keys:
            if like is None:
                raise ValueError("The first use of an empty cache must bring a prompt's keys and values.")
            first_rows = _grown(_MIN_ROWS, rows, self.max_rows)
            first_positions = _grown(_MIN_POSITIONS, positions, self.max_positions)
            self.keys = [_empty(k, first_rows, first_positions) for k, _ in like]
            self.values = [_empty(v, first_rows, first_positions) for _, v in like]
            return
        if rows <= self.rows_capacity and positions <= self.positions_capacity:
            return
        new_rows = _grown(self.rows_capacity, rows, self.max_rows)
        new_positions = _grown(self.positions_capacity, positions, self.max_positions)
        old_rows, old_positions = self.rows_capacity, self.positions_capacity
        for tensors in (self.keys, self.values):
            for layer, old in enumerate(tensors):
                grown = old.new_zeros((new_rows, old.shape[1], new_positions, old.shape[3]))
                grown[:old_rows, :, :old_positions] = old
                tensors[layer] = grown


def _empty(like: torch.Tensor, rows: int, positions: int) -> torch.Tensor:
    return like.new_zeros((rows, like.shape[1], positions, like.shape[3]))


def _grown(current: int, needed: int, limit: int) -> int:
    """Double ``current`` until it holds ``needed``, never beyond ``limit``."""
    size = max(current, 1)
    while size < needed:
        size *= 2
    return min(size, limit)
