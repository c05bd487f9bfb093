"""Batched image augmentation on the device that holds the batch: random crop with padding and horizontal flip.

Done on whole batches with one generator, so it costs a few tensor ops per step and is deterministic under a seed.
The random draws are made on the batch's device by a generator on that device: drawing on the host and copying would
synchronise an asynchronous device at every step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Each image shifted by up to ``pad`` pixels (reflect padding) and mirrored with probability 1/2; ``generator``
    lives on ``x``'s device."""
    n, _, h, w = x.shape
    dev = x.device
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev)
        rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :]
        batch = torch.arange(n, device=dev)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mirror = torch.rand(n, generator=generator, device=dev) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    return x
