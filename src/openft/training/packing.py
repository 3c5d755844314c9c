"""Padding-free batches: pack sequences into rows with per-sequence positions and a block-diagonal mask.

Each row is one forward pass. Within a row every sequence restarts its ``position_ids`` at 0 and
attends only to its own earlier tokens (a 4D boolean mask, True = may attend). Targets are shifted
per sequence before packing, so no token learns to predict the first token of its neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openft.training.labels import IGNORE_INDEX, TokenizedSequence


@dataclass(frozen=True)
class PackedRow:
    input_ids: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L)
    attention_mask: torch.Tensor  # (1, 1, L, L) bool
    targets: torch.Tensor  # (L,) the next token where trained, else IGNORE_INDEX
    sequence_index: torch.Tensor  # (L,) which sequence of the row each position belongs to
    n_sequences: int

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def n_trainable(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())


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
    sequence_index = torch.tensor(owner, dtype=torch.long)
    length = len(ids)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same_sequence = sequence_index[:, None] == sequence_index[None, :]
    return PackedRow(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        attention_mask=(causal & same_sequence)[None, None],
        targets=torch.tensor(targets, dtype=torch.long),
        sequence_index=sequence_index,
        n_sequences=len(sequences),
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


def micro_batches(units: list[list[TokenizedSequence]], max_tokens: int) -> list[PackedRow]:
    return [pack_row([s for unit in row for s in unit]) for row in pack(units, max_tokens)]


def forward_hidden(model: torch.nn.Module, row: PackedRow) -> torch.Tensor:
    """Final hidden states (L, H) of a causal LM's decoder for a packed row.

    ``use_cache=False`` matters: with a cache, transformers rebuilds the mask from positions and
    sequences in a row can silently see each other.
    """
    decoder = model.get_decoder()
    out = decoder(
        input_ids=row.input_ids,
        position_ids=row.position_ids,
        attention_mask=row.attention_mask,
        use_cache=False,
    )
    return out.last_hidden_state[0]


def trained_logits(model: torch.nn.Module, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at trained positions only (the LM head never runs on the rest), and their targets."""
    hidden = forward_hidden(model, row)
    where = row.targets != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[where]).float()
    return logits, row.targets[where]
