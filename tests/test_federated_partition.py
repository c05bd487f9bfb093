"""Partitions for federated clients: IID and Dirichlet label skew, pure numpy (no flwr needed)."""
from __future__ import annotations

import numpy as np
import pytest

from timebudget.errors import TimebudgetError
from timebudget.federated.partition import Scheme, indices, parse_scheme, split

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 balanced classes


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.5", "dirichlet:100"])
def test_every_sample_lands_in_exactly_one_partition(text: str) -> None:
    parts = split(LABELS, 4, parse_scheme(text), seed=3)
    assert len(parts) == 4
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(LABELS)))
    assert all(len(p) >= 1 for p in parts)


def test_same_seed_same_split_on_every_client_and_another_seed_differs() -> None:
    scheme = parse_scheme("dirichlet:0.5")
    a, b = split(LABELS, 3, scheme, seed=1), split(LABELS, 3, scheme, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, split(LABELS, 3, scheme, seed=2)))


def test_iid_sizes_differ_by_at_most_one_and_classes_are_mixed() -> None:
    parts = split(LABELS, 3, Scheme("iid"), seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(LABELS[p])) == 10 for p in parts)


def test_small_alpha_skews_labels_and_large_alpha_approaches_iid() -> None:
    def skew(alpha: float) -> float:
        """Mean over partitions of the largest class's share: 0.1 for balanced, 1.0 for one class each."""
        parts = split(LABELS, 5, Scheme("dirichlet", alpha), seed=0)
        return float(np.mean([np.bincount(LABELS[p], minlength=10).max() / len(p) for p in parts]))

    assert skew(0.1) > 0.5
    assert skew(1000.0) < 0.2


def test_min_size_is_honoured_or_refused() -> None:
    parts = split(LABELS, 5, Scheme("dirichlet", 0.3), seed=0, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(TimebudgetError, match="no split"):
        split(LABELS, 10, Scheme("dirichlet", 0.01), seed=0, min_size=45)
    with pytest.raises(TimebudgetError, match="cannot give"):
        split(LABELS[:5], 3, Scheme("iid"), min_size=2)


@pytest.mark.parametrize("text", ["dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x", "shards:2", "iid:3", ""])
def test_bad_scheme_is_one_clear_error(text: str) -> None:
    with pytest.raises(TimebudgetError, match="partition|scheme"):
        parse_scheme(text)


@pytest.mark.parametrize("pid", [-1, 3])
def test_partition_id_out_of_range(pid: int) -> None:
    with pytest.raises(TimebudgetError, match="out of range"):
        indices(LABELS, pid, 3, Scheme("iid"))
    assert len(indices(LABELS, 2, 3, Scheme("iid"))) > 0
