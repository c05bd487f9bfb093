"""``--tensorboard``: the records of ``metrics.jsonl`` as TensorBoard scalars in ``RUN_DIR/tensorboard/``.

A sink of :class:`timebudget.artifacts.MetricsLog`: it receives the records in the batches the log appends to its
file (at epoch ends, or every 64 records), so it costs nothing per step, and its cost, like every write of the run,
counts against the budget. Each number in a record becomes a scalar ``<section>/<key>`` (``train/lr``,
``train/loss``, ``test/accuracy``, ``epoch/kept_fraction``, ``load/step_slowdown``, ``final/accuracy``, ...) at the
record's training step, stamped with the wall-clock time at which the run made the record. The writer is closed in
the tail, before ``summary.json``. The package is optional (``pip install -e ".[tensorboard]"``); without it the
flag is refused before the run starts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .errors import TimebudgetError

SECTIONS = {"step": "train", "eval": "test"}  # metrics.jsonl's event -> the scalars' section; others keep their name
NOT_SCALARS = ("event", "time", "step")


def check_available() -> None:
    """Raise one clear error when TensorBoard is not installed (called at start-up, before anything is written)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise TimebudgetError(
            f"--tensorboard needs the tensorboard package ({exc}); install it with pip install -e \".[tensorboard]\" "
            "or pip install tensorboard, or run without --tensorboard"
        ) from None


class TensorBoardSink:
    """Writes records to a ``SummaryWriter``; ``elapsed_now`` is the run's elapsed time now, which dates records
    (whose ``time`` is seconds since the run started) on the wall clock."""

    def __init__(self, log_dir: str | Path, elapsed_now: float) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.wall_start = time.time() - elapsed_now
        self.step = 0

    def write(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.step = record.get("step", self.step)  # epoch records carry none: the last step's
            section = SECTIONS.get(record.get("event", ""), record.get("event", "record"))
            walltime = self.wall_start + record.get("time", 0.0)
            for key, value in record.items():
                if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                self.writer.add_scalar(f"{section}/{key}", value, self.step, walltime=walltime)

    def close(self) -> None:
        self.writer.close()
