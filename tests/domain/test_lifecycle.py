"""The job lifecycle table: every (from, to) pair is either an allowed move or an IllegalTransition."""

from __future__ import annotations

import itertools

import pytest

from openft.domain.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    can_transition,
    transition,
)

ALLOWED = {(source, target) for source, targets in TRANSITIONS.items() for target in targets}


def test_table_covers_every_status():
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize(("source", "target"), sorted(ALLOWED), ids=lambda s: s.value)
def test_transition_allowed_pair_returns_target(source, target):
    assert can_transition(source, target)
    assert transition(source, target) is target


@pytest.mark.parametrize(
    ("source", "target"),
    sorted(set(itertools.product(JobStatus, JobStatus)) - ALLOWED),
    ids=lambda s: s.value,
)
def test_transition_forbidden_pair_raises(source, target):
    assert not can_transition(source, target)
    with pytest.raises(IllegalTransition) as raised:
        transition(source, target)
    assert (raised.value.current, raised.value.target) == (source, target)
    assert f"from {source.value} to {target.value}" in str(raised.value)


@pytest.mark.parametrize("status", sorted(TERMINAL), ids=lambda s: s.value)
def test_terminal_status_has_no_way_out(status):
    assert TRANSITIONS[status] == frozenset()


def test_every_live_status_can_be_cancelled():
    assert all(can_transition(s, JobStatus.CANCELLED) for s in set(JobStatus) - TERMINAL)
