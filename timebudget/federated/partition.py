"""Which training samples each federated client holds: IID or Dirichlet(alpha) over labels. Pure numpy, no flwr.

Dirichlet label skew is the usual way to simulate non-IID clients (Hsu, Qi and Brown 2019): for each class, the
shares of its samples that go to the clients are drawn from Dirichlet(alpha); small alpha gives each client few
classes, large alpha approaches IID. Every client computes the same split from the same labels and seed, so no
coordinator has to ship indices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import TimebudgetError

SCHEMES = ("iid", "dirichlet:ALPHA")
MAX_DRAWS = 100  # redraws of a Dirichlet split that leaves a client with fewer than ``min_size`` samples


@dataclass(frozen=True)
class Scheme:
    """``iid`` (``alpha`` is None) or ``dirichlet`` with its concentration ``alpha``."""

    name: str
    alpha: float | None = None

    def __str__(self) -> str:
        return self.name if self.alpha is None else f"{self.name}:{self.alpha:g}"


def positive_number(text: str) -> float | None:
    """``text`` as a float when it is a positive finite number, else ``None`` (the caller words the error)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 and math.isfinite(value) else None


def parse_scheme(text: str) -> Scheme:
    """``iid`` or ``dirichlet:ALPHA`` (ALPHA > 0); anything else is one clear error."""
    name, _, arg = text.strip().partition(":")
    if name == "iid" and not arg:
        return Scheme("iid")
    if name == "dirichlet":
        alpha = positive_number(arg)
        if alpha is None:
            raise TimebudgetError(f"partition {text!r}: dirichlet needs a positive alpha, e.g. dirichlet:0.5")
        return Scheme("dirichlet", alpha)
    raise TimebudgetError(f"unknown partition scheme {text!r}; allowed: {', '.join(SCHEMES)}")


def split(labels: np.ndarray, num_partitions: int, scheme: Scheme, seed: int = 0,
          min_size: int = 1) -> list[np.ndarray]:
    """The sorted sample indices of every partition; together they cover each sample exactly once.

    ``labels`` are class ids (any integers). A Dirichlet split is redrawn until every partition holds at least
    ``min_size`` samples; where that is not possible (too few samples or a tiny alpha) it is an error, not an empty
    client.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_partitions < 1:
        raise TimebudgetError(f"num-partitions must be >= 1, got {num_partitions}")
    if n < num_partitions * min_size:
        raise TimebudgetError(f"{n} training samples cannot give {num_partitions} partitions {min_size} each")
    rng = np.random.default_rng(seed)
    if scheme.alpha is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_partitions)]
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for members in classes:
            members = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_partitions, scheme.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
            for part, chunk in zip(parts, np.split(members, cuts)):
                part.append(chunk)
        result = [np.sort(np.concatenate(part)) for part in parts]
        if min(len(part) for part in result) >= min_size:
            return result
    raise TimebudgetError(
        f"partition {scheme}: no split in {MAX_DRAWS} draws gave each of {num_partitions} clients {min_size} samples "
        f"out of {n}; use a larger alpha or fewer clients"
    )


def indices(labels: np.ndarray, partition_id: int, num_partitions: int, scheme: Scheme, seed: int = 0,
            min_size: int = 1) -> np.ndarray:
    """The indices of partition ``partition_id`` (0-based, below ``num_partitions``)."""
    if not 0 <= partition_id < num_partitions:
        raise TimebudgetError(f"partition-id {partition_id} is out of range for num-partitions {num_partitions} "
                              f"(allowed: 0 to {num_partitions - 1})")
    return split(labels, num_partitions, scheme, seed, min_size)[partition_id]
