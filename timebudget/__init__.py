"""timebudget: a PyTorch trainer for a fixed wall-clock budget.

``train(config)`` trains until the deadline and returns once the final evaluation, checkpoint and summary are on
disk. The names below are imported lazily, so ``timebudget --help`` and bad-input errors do not pay for torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Config", "TrainResult", "train", "load_config", "TimebudgetError", "BudgetTooSmall"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from . import trainer

        return getattr(trainer, name)
    if name == "Config":
        from .config import Config

        return Config
    if name == "load_config":
        from .config import load

        return load
    if name in ("TimebudgetError", "BudgetTooSmall"):
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'timebudget' has no attribute {name!r}")
