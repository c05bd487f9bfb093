"""TracIn self-influence from a run's checkpoints (Captum's ``TracInCPFast``): a gradient-based second view of which
training samples mattered, ranked against the loss-based score table.

TracInCPFast looks only at the last fully-connected layer, where a sample's weight gradient factorises into the
loss gradient at the output and the layer's input, so each checkpoint contributes ``lr * |dL/dout|^2 * |input|^2``
per sample with one forward pass. The checkpoints are those saved during training (``--set save_checkpoints=K``)
plus the final ``checkpoint.pt``, each weighted by the learning rate its optimizer held then.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import default_collate

from .config import Config
from .errors import TimebudgetError
from .run_folder import Run, check_state, json_number, model_name, read_checkpoint


def checkpoint_files(run_dir: Path) -> tuple[list[Path], str | None]:
    """The intermediate checkpoints and the final one; a note when the final one is all there is."""
    saved = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    note = None if saved else ("the run saved no checkpoints/ (train with --set save_checkpoints=K): TracIn "
                               "self-influence from checkpoint.pt alone, with learning-rate weight 1")
    return saved + [run_dir / "checkpoint.pt"], note


def last_linear(model: nn.Module, example: torch.Tensor) -> nn.Linear:
    """The model's last ``nn.Linear``, checked to produce the model's output (TracInCPFast differentiates the loss
    with respect to the model output and treats it as that layer's output)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TimebudgetError("--tracin needs a model with an nn.Linear output layer; this model has no nn.Linear")
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        out = model(example)
    handle.remove()
    if not captured or not torch.equal(captured[-1], out):
        raise TimebudgetError("--tracin needs the model's output to come straight from its last nn.Linear; "
                              "this model transforms it further")
    return linears[-1]


def loss_module(config: Config, task: str) -> nn.Module:
    """The run's training loss, summed over the batch (TracInCPFast needs a reducing loss with a known reduction)."""
    if task == "classification":
        return nn.CrossEntropyLoss(reduction="sum", label_smoothing=config.label_smoothing)
    return nn.L1Loss(reduction="sum") if config.loss == "l1" else nn.MSELoss(reduction="sum")


def self_influence(
    run: Run, device: torch.device, batch_size: int | None = None
) -> tuple[torch.Tensor, dict[str, float], str | None]:
    """Self-influence of every training sample (dataset order), the weight used per checkpoint, and a note."""
    from captum.influence import TracInCPFast

    paths, note = checkpoint_files(run.path)
    model = copy.deepcopy(run.model).eval()  # Captum loads each checkpoint into the model it is given
    weights: dict[str, float] = {}

    def load(target: nn.Module, path: str) -> float:
        ckpt = read_checkpoint(Path(path))
        check_state(target, ckpt["model"], Path(path), model_name(run.config, run.bundle))
        target.load_state_dict(ckpt["model"])
        lr = float(ckpt["optimizer"]["param_groups"][0]["lr"]) if len(paths) > 1 else 1.0
        weights[Path(path).name] = lr
        return lr

    def to_device(batch: list[Any]) -> tuple[torch.Tensor, ...]:
        x, y = default_collate(batch)
        return x.float().view(len(x), *run.bundle.input_shape).to(device), y.to(device)

    loader = DataLoader(run.bundle.train, batch_size=batch_size or 256, shuffle=False, collate_fn=to_device)
    layer = last_linear(model, next(iter(loader))[0][:2])
    tracin = TracInCPFast(model, layer, loader, [str(p) for p in paths], checkpoints_load_func=load,
                          loss_fn=loss_module(run.config, run.bundle.task), batch_size=None)
    values = tracin.self_influence(loader, outer_loop_by_checkpoints=True).detach().cpu()
    return values, weights, note


def rank_agreement(values: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Spearman rank correlation of self-influence with the average and the last loss, over measured samples."""
    from scipy.stats import spearmanr

    seen = scores["count"] > 0
    result: dict[str, Any] = {"n": int(seen.sum())}
    for key in ("average", "last"):
        rho, p = spearmanr(values[seen].double().numpy(), scores[key][seen].double().numpy())
        result[key] = {"spearman_rho": json_number(float(rho)), "p_value": json_number(float(p))}
    return result


def report(run: Run, device: torch.device, batch_size: int | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """What explain.json records about TracIn, and the full self-influence vector."""
    values, weights, note = self_influence(run, device, batch_size)
    notes = [note] if note else []
    if run.scores is None:
        notes.append(f"no rank correlation with the scores: {run.scores_note}")
    result: dict[str, Any] = {
        "method": "TracInCPFast self-influence",
        "checkpoints": weights,
        "self_influence": {"mean": float(values.mean()), "std": json_number(float(values.std())),
                           "max": float(values.max()), "file": "self_influence.pt"},
        "rank_correlation": rank_agreement(values, run.scores) if run.scores is not None else None,
        "notes": notes,
    }
    return result, values
