"""``full``: uniform training, every sample every epoch.

What it does: a fresh shuffle of all data each epoch. When it helps: always a strong baseline under a budget (Arazo
et al. 2021), especially with the time-driven linear schedule. Knobs: none.
"""
from __future__ import annotations

from .base import EpochContext, EpochPlan, Strategy


class Full(Strategy):
    name = "full"

    def plan(self, ctx: EpochContext) -> EpochPlan:
        return EpochPlan()
