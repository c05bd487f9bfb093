"""Checks before training: data that would train at a NaN loss or report a meaningless metric, and run-folder paths.

Each problem that makes the run meaningless is one :class:`~timebudget.errors.TimebudgetError` line (which value, why,
what to do) raised before anything is written; a problem training can honestly go on with is returned as a warning,
which the trainer prints and notes in ``summary.json``. Checks are cheap: one pass over in-memory arrays, the labels
where a dataset keeps them apart, and the calibration batch for datasets that load lazily (a user's ``Dataset``).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import TimebudgetError

if TYPE_CHECKING:
    from .data import DataBundle


def dataset(bundle: DataBundle, batch: int | None) -> list[str]:
    """The checks of a loaded data set that need no pass over lazily loaded inputs; returns the warnings. ``batch``
    is the batch size asked for (``None``: the default, which fits)."""
    warnings = batch_size(batch, len(bundle.train)) if batch else []  # type: ignore[arg-type]
    if bundle.task != "classification":
        return warnings
    train, test = labels_in_memory(bundle.train), labels_in_memory(bundle.test)
    if train is None or test is None:  # labels only reachable by loading every sample: not cheap
        return warnings
    return warnings + classes(bundle.name, train, test)


def labels_in_memory(ds: Any) -> torch.Tensor | None:
    """A dataset's labels where it holds them apart from its inputs (``y``, ``targets``); ``None`` where only loading
    every sample would reach them."""
    for name in ("y", "targets"):
        labels = getattr(ds, name, None)
        if labels is not None:
            return torch.as_tensor(labels)
    return None


def finite_array(name: str, key: str, array: np.ndarray) -> None:
    """An array of the data must hold no NaN or inf: one would turn every loss, and the normalisation, into NaN."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))
        raise TimebudgetError(
            f"{name}: {key} holds {int(bad.sum())} NaN or inf value(s) in {len(rows)} sample(s) (the first: sample "
            f"{int(rows[0])}); remove or repair those samples"
        )


def finite_batch(what: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """The calibration batch of a lazily loaded dataset: the cheap check of data we cannot scan whole."""
    for key, t in (("inputs", x), ("targets", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TimebudgetError(f"{what}: the first training batch has NaN or inf {key}; repair the dataset")


def classes(name: str, train_labels: torch.Tensor, test_labels: torch.Tensor) -> list[str]:
    """Training needs two classes or more, and the test labels must be ones the model can learn. Test labels of which
    only some never occur in training leave a meaningful, if capped, accuracy: a warning."""
    train_set = set(torch.unique(train_labels).tolist())
    if len(train_set) < 2:
        raise TimebudgetError(
            f"{name}: the training labels hold a single class ({next(iter(train_set))}); a classifier needs two or more"
        )
    test_classes = torch.unique(test_labels)
    unseen = [c for c in test_classes.tolist() if c not in train_set]
    if len(unseen) == len(test_classes):
        raise TimebudgetError(
            f"{name}: no test label occurs in training (test {_span(test_classes.tolist())}, train "
            f"{_span(sorted(train_set))}); the accuracy would be 0 whatever the model learns"
        )
    if unseen:
        share = float(torch.isin(test_labels, torch.tensor(unseen)).float().mean())
        return [f"{name}: test labels {_span(unseen)} never occur in training; {share:.1%} of the test samples "
                "cannot be classified correctly, and the accuracy counts them as errors"]
    return []


def _span(values: list[int]) -> str:
    return str(values) if len(values) <= 8 else f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)})"


def batch_size(batch: int, n_train: int) -> list[str]:
    """A batch larger than the training set is clamped to it: each step trains the whole set, honest but not what
    was asked."""
    if batch > n_train:
        return [f"batch_size {batch} is larger than the training set ({n_train} samples): every step trains all "
                f"{n_train}; set --batch-size {n_train} or less to choose the batch yourself"]
    return []


def output_folder(path: str | Path, flag: str = "--out") -> None:
    """Refuse, before any work, a run folder that cannot be created or written: a file in the way, a missing or
    read-only parent."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TimebudgetError(f"{flag} {str(path)!r} is a file, not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TimebudgetError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise TimebudgetError(f"{flag} {str(path)!r} cannot be written: no write permission in {str(existing)!r}")


@contextlib.contextmanager
def writing(path: str | Path, flag: str = "--out") -> Iterator[None]:
    """File-system errors of the run folder as one line that names the flag and the path."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise TimebudgetError(f"{flag} {str(path)!r}: cannot write {str(where)!r}: {exc.strerror or exc}") from None
