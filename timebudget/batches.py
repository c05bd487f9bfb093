"""The two data paths: device-resident tensors, or a DataLoader with workers and pinned memory.

Resident: the whole set sits on the training device as two tensors and each batch is one index operation (no worker
processes, no per-sample Python). Loader: for data that does not fit (a large ImageFolder) or user datasets. Both take
the same order of dataset positions and yield the same ``(x, y, index)`` batches, so a seed gives the same training
whichever path runs.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from . import data
from .errors import TimebudgetError

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, dataset indices (on the device when resident)

# Resident data may take at most this share of the device's free memory (the rest is for activations).
_DEVICE_SHARE = 0.5


def choose_path(requested: str, dataset: Dataset, device: torch.device) -> str:
    """``auto``: resident when the data is already in memory as tensors and fits the device; else the loader."""
    if requested != "auto":
        return requested
    if not isinstance(dataset, data.ArrayDataset):
        return "loader"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        size = dataset.x.element_size() * dataset.x.nelement() + dataset.y.element_size() * dataset.y.nelement()
        return "resident" if size < _DEVICE_SHARE * free else "loader"
    return "resident"


class Batches:
    def __init__(
        self,
        dataset: Dataset,
        device: torch.device,
        input_shape: tuple[int, ...],
        path: str = "auto",
        workers: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.dataset, self.device, self.input_shape, self.workers = dataset, device, input_shape, workers
        self.memory_format = memory_format
        self.path = choose_path(path, dataset, device)
        if self.path == "resident":
            x, y = _materialise(dataset, input_shape)
            self.x = _format(x.to(device), memory_format)
            self.y = y.to(device)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def iterate(self, chunks: list[torch.Tensor]) -> Iterator[Batch]:
        if self.path == "resident":
            # One host-to-device copy of the epoch's indices: a copy from pageable memory synchronises the stream,
            # so one per step would stall an asynchronous device at every step.
            flat = torch.cat(chunks).to(self.device) if chunks else torch.empty(0, dtype=torch.long)
            for idx in flat.split([len(c) for c in chunks]):
                yield self.x[idx], self.y[idx], idx
            return
        loader = DataLoader(
            _Indexed(self.dataset),
            batch_sampler=[c.tolist() for c in chunks],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        for x, y, idx in loader:
            x = torch.as_tensor(x).to(self.device, non_blocking=True).view(len(idx), *self.input_shape)
            yield _format(x, self.memory_format), torch.as_tensor(y).to(self.device, non_blocking=True), idx


def _format(x: torch.Tensor, memory_format: torch.memory_format) -> torch.Tensor:
    return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x


def _materialise(dataset: Dataset, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The dataset as two tensors: free for an ArrayDataset, one pass over the items otherwise."""
    if isinstance(dataset, data.ArrayDataset):
        return dataset.x, dataset.y
    n = len(dataset)  # type: ignore[arg-type]
    try:
        items = [dataset[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(item[0]).reshape(input_shape) for item in items])
        y = torch.stack([torch.as_tensor(item[1]) for item in items])
    except (RuntimeError, MemoryError) as exc:
        raise TimebudgetError(f"data_path resident: the data set could not be held in memory ({exc})") from None
    return x, y


class _Indexed(Dataset):
    """Pairs each item with its dataset position, which the score table is keyed by."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[i]
        return x, y, i
