"""Epoch order: a fresh shuffle of all indices, then the strategy's subset mask applied to it.

Masking the shuffled order (as cifar10-airbench does) keeps the order random within the subset and makes the shuffle
independent of the subset: the same seed gives the same permutation whatever the strategy keeps.
"""
from __future__ import annotations

import torch


def epoch_order(n: int, generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A random permutation of ``range(n)``, restricted to ``mask`` (a bool tensor of length n) when given."""
    order = torch.randperm(n, generator=generator)
    if mask is None:
        return order
    if mask.shape != (n,) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape ({n},), got {mask.dtype} {tuple(mask.shape)}")
    return order[mask[order]]


def batches(order: torch.Tensor, batch_size: int, drop_partial: bool = False) -> list[torch.Tensor]:
    """Split an order into batches; a trailing partial batch is kept only if it is at least half a batch (tiny
    batches waste a step on little data and break BatchNorm at size 1) and ``drop_partial`` is off (a compiled model
    or cuDNN's autotuner pays again for every new batch shape). A full batch is never dropped, not even at
    ``batch_size`` 1, and an order shorter than one batch is kept whole."""
    chunks = list(order.split(batch_size))
    smallest = batch_size if drop_partial else min(batch_size, max(2, batch_size // 2))
    if len(chunks) > 1 and len(chunks[-1]) < smallest:
        chunks.pop()
    return chunks
