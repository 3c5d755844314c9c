"""Packed rows: each sequence sees only itself, so its logits equal those computed alone."""

from __future__ import annotations

import pytest
import torch

from openft.training.labels import IGNORE_INDEX, TokenizedSequence
from openft.training.packing import forward_hidden, micro_batches, pack, pack_row


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def seq(ids: list[int], trained_from: int = 1) -> TokenizedSequence:
    return TokenizedSequence(ids, [IGNORE_INDEX] * trained_from + ids[trained_from:])


def logits_of(model, row) -> torch.Tensor:
    with torch.no_grad():
        return model.get_output_embeddings()(forward_hidden(model, row))


def test_packed_logits_equal_logits_computed_alone(model):
    sequences = [seq([5, 9, 13, 17, 21, 25, 29]), seq([40, 41, 42]), seq([7, 70, 77, 7, 70])]
    packed = logits_of(model, pack_row(sequences))
    offset = 0
    for s in sequences:
        alone = logits_of(model, pack_row([s]))
        torch.testing.assert_close(packed[offset : offset + len(s)], alone, atol=1e-5, rtol=0)
        # and the plain transformers forward of the sequence alone agrees too
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([s.input_ids])).logits[0]
        torch.testing.assert_close(alone, reference, atol=1e-5, rtol=0)
        offset += len(s)


def test_packed_sequence_ignores_its_neighbours(model):
    first = seq([5, 9, 13, 17])
    before = logits_of(model, pack_row([first, seq([30, 31, 32])]))[4:]
    after = logits_of(model, pack_row([seq([90, 91, 92, 93]), seq([30, 31, 32])]))[4:]
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)


def test_pack_row_shifts_targets_per_sequence_and_restarts_positions():
    row = pack_row([seq([1, 2, 3]), seq([4, 5], trained_from=0)])
    assert row.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    # no sequence predicts the first token of the next one
    assert row.targets.tolist() == [2, 3, IGNORE_INDEX, 5, IGNORE_INDEX]
    mask = row.attention_mask[0, 0]
    assert mask[4, 3] and not mask[3, 2] and not mask[1, 2]


def test_pack_keeps_rows_within_budget_and_units_whole():
    units = [[seq([1] * 6)], [seq([2] * 2), seq([3] * 2)], [seq([4] * 5)], [seq([5] * 12)]]
    rows = pack(units, max_tokens=10)
    assert sorted(sum(len(s) for u in r for s in u) for r in rows) == [5, 10, 12]
    assert [units[0], units[1]] in rows  # the pair stays together, first fit in order
    assert sum(r.n_tokens for r in micro_batches(units, 10)) == 27
