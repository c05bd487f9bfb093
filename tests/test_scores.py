"""The score table: per-sample last loss, running average, count and step, written by index in one vectorised op."""
from __future__ import annotations

import pytest
import torch

from timebudget.scores import ScoreTable


def test_first_measurement_is_taken_as_is_and_later_ones_are_averaged() -> None:
    scores = ScoreTable(4, momentum=0.5)
    scores.record(torch.tensor([2, 0]), torch.tensor([4.0, 1.0]), step=3)
    assert scores.average.tolist() == [1.0, 0.0, 4.0, 0.0]  # no pull towards the zero it started from
    scores.record(torch.tensor([2]), torch.tensor([2.0]), step=7)
    assert scores.average[2] == pytest.approx(0.5 * 4.0 + 0.5 * 2.0)
    assert scores.last.tolist() == [1.0, 0.0, 2.0, 0.0]
    assert scores.count.tolist() == [1, 0, 2, 0]
    assert scores.step.tolist() == [3, -1, 7, -1]
    assert scores.seen.tolist() == [True, False, True, False]


def test_losses_with_a_graph_or_low_precision_are_stored_detached_in_float32() -> None:
    scores = ScoreTable(3)
    loss = (torch.tensor([1.0, 2.0], requires_grad=True) * 2).to(torch.bfloat16)
    scores.record(torch.tensor([0, 1]), loss, step=0)
    assert scores.last.dtype == torch.float32 and not scores.last.requires_grad
    assert scores.last.tolist() == [2.0, 4.0, 0.0]


def test_state_round_trips_through_the_cpu() -> None:
    scores = ScoreTable(5)
    scores.record(torch.arange(5), torch.linspace(0, 1, 5), step=9)
    state = scores.state_dict()
    assert all(t.device.type == "cpu" for t in state.values())
    again = ScoreTable(5)
    again.load_state_dict(state)
    for key, value in state.items():
        assert torch.equal(getattr(again, key).cpu(), value), key
