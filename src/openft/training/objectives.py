"""What a step minimises: next-token cross-entropy (supervised) or the sigmoid DPO loss.

An objective turns one packed row into its share of the step's loss. Shares are normalised by a
step-wide count (trained tokens for SFT, pairs for DPO), so gradients accumulated over several
micro-batches equal those of one big batch: the token-weighted mean that TRL and transformers
compute with ``num_items_in_batch``.

The LM head runs on trained positions only, and never on more than ``LOGITS_CHUNK_ELEMENTS``
(tokens x vocabulary) at once: past that the head and the loss run chunk by chunk, each chunk
recomputed in backward (``torch.utils.checkpoint``), so a 128k vocabulary over a long answer needs
one chunk of logits, not the whole answer's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from openft.training.labels import IGNORE_INDEX
from openft.training.memory import LOGITS_CHUNK_ELEMENTS
from openft.training.packing import PackedRow, trained_hidden


def chunk_tokens(head: torch.nn.Module, chunk_elements: int = LOGITS_CHUNK_ELEMENTS) -> int:
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    return max(1, chunk_elements // vocab)


def _chunked(fn, head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int):
    """``fn(hidden_chunk, target_chunk)`` over chunks of ``chunk`` tokens; one call when it fits."""
    if hidden.shape[0] <= chunk:
        return [fn(hidden, targets)]
    return [
        checkpoint(fn, hidden[start : start + chunk], targets[start : start + chunk], use_reentrant=False)
        for start in range(0, hidden.shape[0], chunk)
    ]


def cross_entropy_sum(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of ``hidden`` under ``head``, and how many argmaxes hit."""

    def piece(h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = head(h).float()
        return F.cross_entropy(logits, t, reduction="sum"), (logits.argmax(-1) == t).sum()

    parts = _chunked(piece, head, hidden, targets, chunk)
    if len(parts) == 1:
        return parts[0]
    return torch.stack([p[0] for p in parts]).sum(), torch.stack([p[1] for p in parts]).sum()


def token_logps(
    head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """log p(target) of each position, shape (n,)."""

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.gather(head(h).float().log_softmax(-1), 1, t[:, None])[:, 0]

    parts = _chunked(piece, head, hidden, targets, chunk)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class Tally:
    """Sums over a step (or an evaluation) that become its loss and accuracy."""

    loss_sum: float = 0.0
    correct: int = 0
    count: int = 0

    def add(self, other: Tally) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.count += other.count

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.count, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.count, 1)


class Objective(Protocol):
    def normaliser(self, rows: list[PackedRow]) -> int:
        """The count the step's summed loss is divided by."""
        ...

    def row_loss(self, model: torch.nn.Module, row: PackedRow, normaliser: int) -> tuple[torch.Tensor, Tally]:
        """This row's loss divided by ``normaliser`` (to backpropagate) and its tally."""
        ...


class SupervisedObjective:
    """Mean next-token cross-entropy over trained tokens; accuracy is argmax accuracy on them."""

    def normaliser(self, rows: list[PackedRow]) -> int:
        return sum(row.n_trainable for row in rows)

    def __init__(self, chunk_elements: int = LOGITS_CHUNK_ELEMENTS) -> None:
        self.chunk_elements = chunk_elements

    def row_loss(self, model: torch.nn.Module, row: PackedRow, normaliser: int) -> tuple[torch.Tensor, Tally]:
        hidden, targets = trained_hidden(model, row)
        head = model.get_output_embeddings()
        loss_sum, correct = cross_entropy_sum(head, hidden, targets, chunk_tokens(head, self.chunk_elements))
        return loss_sum / max(normaliser, 1), Tally(
            float(loss_sum.detach()), int(correct), int(targets.numel())
        )


def sequence_logps(
    model: torch.nn.Module, row: PackedRow, chunk_elements: int = LOGITS_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Summed log-probability of the trained tokens of each sequence of a row, shape (n_sequences,)."""
    hidden, targets = trained_hidden(model, row)
    head = model.get_output_embeddings()
    logps = token_logps(head, hidden, targets, chunk_tokens(head, chunk_elements))
    owners = row.sequence_index[row.targets != IGNORE_INDEX]
    return torch.zeros(row.n_sequences, dtype=logps.dtype, device=logps.device).index_add(0, owners, logps)


class DPOObjective:
    """Sigmoid DPO: ``-log σ(β((π_c - ref_c) - (π_r - ref_r)))`` averaged over pairs.

    Rows hold whole pairs, chosen then rejected. The reported "accuracy" is the reward accuracy:
    the fraction of pairs whose implicit reward ranks the chosen answer above the rejected one.
    """

    def __init__(
        self, beta: float, reference: Callable[[], contextlib.AbstractContextManager[torch.nn.Module]]
    ):
        self.beta = beta
        self.reference = reference
        self.last_margin = 0.0  # mean chosen-minus-rejected reward of the last row, for tests and logs

    def normaliser(self, rows: list[PackedRow]) -> int:
        return sum(row.n_sequences // 2 for row in rows)

    def row_loss(self, model: torch.nn.Module, row: PackedRow, normaliser: int) -> tuple[torch.Tensor, Tally]:
        policy = sequence_logps(model, row)
        with torch.no_grad(), self.reference() as reference_model:
            reference = sequence_logps(reference_model, row)
        ratios = policy - reference
        margins = self.beta * (ratios[0::2] - ratios[1::2])
        losses = -F.logsigmoid(margins)
        self.last_margin = float(margins.detach().mean()) / self.beta if len(margins) else 0.0
        tally = Tally(float(losses.detach().sum()), int((margins > 0).sum()), int(margins.numel()))
        return losses.sum() / max(normaliser, 1), tally
