"""The per-sample score table, indexed by dataset position.

Scores come for free from the per-sample losses of the training forward passes: :meth:`ScoreTable.record` stores
each batch's losses with vectorised tensor writes on the model's device (no host sync, no per-sample Python). For
each sample it keeps the last loss, an exponential running average, how often and when (global step) it was last
measured.
"""
from __future__ import annotations

import torch


class ScoreTable:
    KEYS = ("last", "average", "count", "step")  # the tensors a saved table (scores.pt) holds

    def __init__(self, n: int, device: torch.device | str = "cpu", momentum: float = 0.7) -> None:
        self.n = n
        self.momentum = momentum
        self.last = torch.zeros(n, device=device)
        self.average = torch.zeros(n, device=device)
        self.count = torch.zeros(n, dtype=torch.int32, device=device)
        self.step = torch.full((n,), -1, dtype=torch.int64, device=device)

    @property
    def seen(self) -> torch.Tensor:
        """Bool mask of samples with at least one measured loss."""
        return self.count > 0

    def record(self, index: torch.Tensor, loss: torch.Tensor, step: int) -> None:
        """Store the detached per-sample losses of one batch, measured at global ``step``."""
        loss = loss.detach().float()
        index = index.to(self.last.device, non_blocking=True)
        fresh = self.count[index] == 0
        previous = torch.where(fresh, loss, self.average[index])
        self.average[index] = self.momentum * previous + (1 - self.momentum) * loss
        self.last[index] = loss
        self.count[index] += 1
        self.step[index] = step

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key).cpu() for key in self.KEYS}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in self.KEYS:
            getattr(self, key).copy_(state[key])
