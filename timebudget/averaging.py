"""Weight averaging late in training: an exponential moving average (EMA) of the weights and BatchNorm statistics.

What it does: keeps a copy of the model whose tensors follow the trained ones, ``avg += (1 - decay) * (new - avg)``
after every step once switched on (``average_from``, a fraction of the budget). When it helps: in the last part of a
decaying schedule, where the average of the recent iterates generalises better than the last one (the speed-run codes
average the end of training). Knobs: ``average_from`` and ``ema_decay``.

The update is one fused foreach call per step over tensor lists built once, with no host-device synchronisation:
torch's ``AveragedModel`` reads its step counter on the host and loops over every tensor at each update.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn


class EMA:
    """The averaged copy of ``model`` (``.module``), started equal to it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.weight = 1.0 - decay
        pairs = list(zip(_tensors(self.module), _tensors(model), strict=True))
        self.averaged = [mine for mine, theirs in pairs if mine.is_floating_point()]
        self.followed = [theirs for mine, theirs in pairs if mine.is_floating_point()]
        self.copied = [mine for mine, theirs in pairs if not mine.is_floating_point()]  # counters, e.g. BatchNorm's
        self.sources = [theirs for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.averaged, self.followed, self.weight)
        if self.copied:
            torch._foreach_copy_(self.copied, self.sources)


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in itertools.chain(model.parameters(), model.buffers())]
