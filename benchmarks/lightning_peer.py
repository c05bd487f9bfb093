"""The peer of ``benchmarks/deadline.py``: timebudget's CNN on its digits data, stopped by Lightning's ``max_time``.

Written the way a Lightning user would write it, so the overshoot measured is the one such a user gets: a
LightningModule, validation every epoch, checkpointing on, ``max_epochs=-1`` so time and not epochs stops training,
then a final test and ``trainer.save_checkpoint``. Hyperparameters are timebudget's resolved defaults for digits
(SGD, batch 64, lr 0.05, Nesterov momentum 0.9, weight decay 5e-4) at a constant learning rate, because no
Lightning scheduler can follow elapsed time. It writes ``summary.json`` with ``elapsed_s`` counted from process start
exactly as timebudget counts it, so both tools' own views of their run can be compared.

Run: ``python benchmarks/lightning_peer.py --seconds 30 --device cpu --out /tmp/peer``.
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Timer
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from timebudget import data, models
from timebudget.clock import process_start_time

BATCH_SIZE = 64
LR = 0.05
WEIGHT_DECAY = 5e-4


class DigitsClassifier(L.LightningModule):
    """A plain classification module around a timebudget model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def _accuracy(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (self.net(x).argmax(1) == y).float().mean()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_acc", self._accuracy(batch))

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("test_acc", self._accuracy(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, required=True, help="the budget, given to Trainer(max_time=...)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, logs, summary.json)")
    args = parser.parse_args()

    L.seed_everything(0, verbose=False)
    bundle = data.load("digits")
    net = models.build("cnn", bundle.input_shape, bundle.num_outputs, bundle.kind)
    module = DigitsClassifier(net)
    train_loader = DataLoader(bundle.train, batch_size=BATCH_SIZE, shuffle=True)
    test_loader = DataLoader(bundle.test, batch_size=4 * BATCH_SIZE)
    trainer = L.Trainer(
        max_time=timedelta(seconds=args.seconds),
        max_epochs=-1,
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        enable_checkpointing=True,
        enable_progress_bar=False,
        default_root_dir=str(args.out),
    )
    trainer.fit(module, train_loader, test_loader)
    tested = trainer.test(module, test_loader, verbose=False)
    trainer.save_checkpoint(args.out / "final.ckpt")
    summary = {
        "budget_s": args.seconds,
        "elapsed_s": time.monotonic() - process_start_time(),
        "train_s": next(c for c in trainer.callbacks if isinstance(c, Timer)).time_elapsed("train"),
        "test_metrics": {"accuracy": tested[0]["test_acc"]},
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "device": args.device,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
