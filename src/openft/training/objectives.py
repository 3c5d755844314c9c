"""What a step minimises: next-token cross-entropy (supervised) or the sigmoid DPO loss.

An objective turns one packed row into its share of the step's loss. Shares are normalised by a
step-wide count (trained tokens for SFT, pairs for DPO), so gradients accumulated over several
micro-batches equal those of one big batch: the token-weighted mean that TRL and transformers
compute with ``num_items_in_batch``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from openft.training.labels import IGNORE_INDEX
from openft.training.packing import PackedRow, trained_logits


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

    def row_loss(self, model: torch.nn.Module, row: PackedRow, normaliser: int) -> tuple[torch.Tensor, Tally]:
        logits, targets = trained_logits(model, row)
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        correct = int((logits.argmax(-1) == targets).sum())
        return loss_sum / max(normaliser, 1), Tally(float(loss_sum.detach()), correct, int(targets.numel()))


def sequence_logps(model: torch.nn.Module, row: PackedRow) -> torch.Tensor:
    """Summed log-probability of the trained tokens of each sequence of a row, shape (n_sequences,)."""
    logits, targets = trained_logits(model, row)
    token_logps = torch.gather(logits.log_softmax(-1), 1, targets[:, None])[:, 0]
    owners = row.sequence_index[row.targets != IGNORE_INDEX]
    return torch.zeros(row.n_sequences, dtype=token_logps.dtype).index_add(0, owners, token_logps)


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
