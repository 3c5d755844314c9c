"""Padding-free batches: pack sequences into rows with per-sequence positions and per-sequence attention.

Each row is one forward pass. Within a row every sequence restarts its ``position_ids`` at 0 and
attends only to its own earlier tokens: through the row's cumulative sequence lengths for models loaded
with ``training/attention.py``'s ``PACKED_ATTENTION`` (every training model), or through a 4D boolean
block-diagonal mask (True = may attend) for a model with a standard attention implementation.
Targets are shifted per sequence before packing, so no token learns to predict the first token of
its neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch

from openft.training.attention import CU_SEQLENS, MAX_SEQLEN, PACKED_ATTENTION, VARLEN_KEY
from openft.training.labels import IGNORE_INDEX, TokenizedSequence


@dataclass(frozen=True)
class PackedRow:
    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    targets: torch.Tensor  # (L,) the next token where trained, else IGNORE_INDEX
    sequence_index: torch.Tensor  # (L,) which sequence of the row each position belongs to
    n_sequences: int
    lengths: tuple[int, ...] = ()  # tokens of each sequence, in row order

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_trainable(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @cached_property
    def attention_mask(self) -> torch.Tensor:
        """(1, 1, L, L) bool: causal within each sequence, nothing across. Built only when asked."""
        length = self.n_tokens
        causal = torch.ones(length, length, dtype=torch.bool, device=self.input_ids.device).tril()
        same_sequence = self.sequence_index[:, None] == self.sequence_index[None, :]
        return (causal & same_sequence)[None, None]

    @cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """(n_sequences + 1,) int32 offsets of each sequence in the row, as varlen kernels take them."""
        offsets = [0]
        for length in self.lengths:
            offsets.append(offsets[-1] + length)
        return torch.tensor(offsets, dtype=torch.int32, device=self.input_ids.device)

    def to(self, device: torch.device | str | None) -> PackedRow:
        if device is None or torch.device(device) == self.input_ids.device:
            return self
        move = {"non_blocking": True}
        return replace(
            self,
            input_ids=self.input_ids.to(device, **move),
            position_ids=self.position_ids.to(device, **move),
            targets=self.targets.to(device, **move),
            sequence_index=self.sequence_index.to(device, **move),
        )


def pack_row(sequences: list[TokenizedSequence]) -> PackedRow:
    ids: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    for index, seq in enumerate(sequences):
        ids += seq.input_ids
        positions += range(len(seq))
        targets += seq.labels[1:] + [IGNORE_INDEX]
        owner += [index] * len(seq)
    return PackedRow(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        sequence_index=torch.tensor(owner, dtype=torch.long),
        n_sequences=len(sequences),
        lengths=tuple(len(seq) for seq in sequences),
    )


def pack(units: list[list[TokenizedSequence]], max_tokens: int) -> list[list[list[TokenizedSequence]]]:
    """Group units (an example's sequences, kept together) into rows of at most ``max_tokens`` tokens.

    First fit in the given order, so the layout is deterministic; a unit longer than ``max_tokens``
    gets a row of its own.
    """
    rows: list[list[list[TokenizedSequence]]] = []
    sizes: list[int] = []
    for unit in units:
        size = sum(len(s) for s in unit)
        for index, used in enumerate(sizes):
            if used + size <= max_tokens:
                rows[index].append(unit)
                sizes[index] += size
                break
        else:
            rows.append([unit])
            sizes.append(size)
    return rows


def micro_batches(
    units: list[list[TokenizedSequence]], max_tokens: int, device: torch.device | str | None = None
) -> list[PackedRow]:
    """Packed rows of at most ``max_tokens`` tokens (see ``pack``), on ``device`` (default: the CPU)."""
    return [pack_row([s for unit in row for s in unit]).to(device) for row in pack(units, max_tokens)]


def padding_row(device: torch.device | str | None = None) -> PackedRow:
    """A row that trains nothing: one token, no target, no sequence. With several ranks, one with
    fewer micro-batches in a step runs these so that every rank makes the same collective calls
    (``training/distributed.py``); its loss is 0 and its gradients are zeros."""
    zero = torch.zeros((1, 1), dtype=torch.long)
    return PackedRow(
        input_ids=zero,
        position_ids=zero,
        targets=torch.tensor([IGNORE_INDEX], dtype=torch.long),
        sequence_index=torch.zeros(1, dtype=torch.long),
        n_sequences=0,
        lengths=(1,),
    ).to(device)


def forward_hidden(model: torch.nn.Module, row: PackedRow) -> torch.Tensor:
    """Final hidden states (L, H) of a causal LM's decoder for a packed row.

    ``use_cache=False`` matters: with a cache, transformers rebuilds the mask from positions and
    sequences in a row can silently see each other.
    """
    decoder = model.get_decoder()
    if getattr(model.config, "_attn_implementation", None) == PACKED_ATTENTION:
        boundaries = {
            CU_SEQLENS: row.cu_seqlens,
            MAX_SEQLEN: max(row.lengths),
            VARLEN_KEY: getattr(model, VARLEN_KEY, None),
        }
        out = decoder(input_ids=row.input_ids, position_ids=row.position_ids, use_cache=False, **boundaries)
    else:
        out = decoder(
            input_ids=row.input_ids,
            position_ids=row.position_ids,
            attention_mask=row.attention_mask,
            use_cache=False,
        )
    return out.last_hidden_state[0]


def trained_hidden(model: torch.nn.Module, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at trained positions only (the LM head never runs on the rest), and targets."""
    hidden = forward_hidden(model, row)
    where = row.targets != IGNORE_INDEX
    return hidden[where], row.targets[where]
