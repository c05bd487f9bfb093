"""A finished run folder read back: its resolved config, data, final model and score table, every inconsistency a
one-line :class:`~timebudget.errors.TimebudgetError`.

Shared by ``explain`` (Captum attributions) and ``influence`` (TracIn), which both open a run the same way; it sits
below both so that neither imports the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import config as config_module, data, models
from .config import Config
from .errors import TimebudgetError, first_line
from .scores import ScoreTable


@dataclass
class Run:
    """A finished run folder, loaded: its resolved config, data, model at the final checkpoint and score table."""

    path: Path
    config: Config
    bundle: data.DataBundle
    model: nn.Module
    device: torch.device
    scores: dict[str, torch.Tensor] | None
    scores_note: str | None  # why there is no usable score table


# --- loading a run -----------------------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict[str, Any]:
    """A timebudget checkpoint, read with ``weights_only=True`` (no code in a run folder is ever executed)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TimebudgetError(f"{path} is not a readable checkpoint: {first_line(exc) or type(exc).__name__}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise TimebudgetError(f"{path} holds no model state (a timebudget checkpoint has a 'model' entry)")
    return ckpt


def check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, spec: str) -> None:
    """Refuse a checkpoint whose keys or shapes differ from the model that config.yaml builds, naming the first few."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{what} {_few(items)}" for what, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shapes (checkpoint vs model)", reshaped))
                if items]
    if problems:
        raise TimebudgetError(f"{path} does not match model {spec!r} of config.yaml: {'; '.join(problems)}")


def load_run(run_dir: str | Path, device: torch.device) -> Run:
    """Load and cross-check a run folder; every inconsistency is a one-line :class:`TimebudgetError`."""
    path = Path(run_dir)
    if not path.is_dir():
        raise TimebudgetError(f"{str(run_dir)!r} is not a folder; expected a run folder made by timebudget train")
    missing = [f for f in ("config.yaml", "checkpoint.pt") if not (path / f).is_file()]
    if missing:
        raise TimebudgetError(f"{str(run_dir)!r} is not a timebudget run folder: it has no {' and no '.join(missing)}")
    config = config_module.load(path / "config.yaml")
    ckpt = read_checkpoint(path / "checkpoint.pt")
    try:
        bundle = data.load(config.data, config.data_dir, config.image_size)
    except TimebudgetError as exc:
        raise TimebudgetError(f"cannot load the data of run {str(path)!r}: {exc}") from None
    saved = ckpt.get("data") or {}
    now = {"task": bundle.task, "num_outputs": bundle.num_outputs, "input_shape": list(bundle.input_shape)}
    changed = [f"{k} {saved[k]!r} vs {v!r}" for k, v in now.items() if k in saved and _as_list(saved[k]) != _as_list(v)]
    if changed:
        raise TimebudgetError(f"{path / 'checkpoint.pt'} was trained on other data than {config.data!r} gives now "
                              f"(checkpoint vs data): {'; '.join(changed)}")
    model = models.build(config.model, bundle.input_shape, bundle.num_outputs, bundle.kind)
    check_state(model, ckpt["model"], path / "checkpoint.pt", model_name(config, bundle))
    model.load_state_dict(ckpt["model"])
    model.to(device).eval()
    scores, note = _read_scores(path / "scores.pt", len(bundle.train))
    return Run(path, config, bundle, model, device, scores, note)


def model_name(config: Config, bundle: data.DataBundle) -> str:
    """The model spec as config.yaml gives it, or the default that ``models.build`` chose for the data kind."""
    return config.model or ("cnn" if bundle.kind == "image" else "mlp")


def _as_list(value: Any) -> Any:
    """Shapes compare equal whether stored as tuples or lists."""
    return list(value) if isinstance(value, (list, tuple)) else value


def _read_scores(path: Path, n: int) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    if not path.is_file():
        return None, "the run folder has no scores.pt"
    try:
        scores = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = first_line(exc) or type(exc).__name__
        raise TimebudgetError(f"{path} is not a readable score table: {reason}") from None
    keys = ScoreTable.KEYS
    if not isinstance(scores, dict) or any(k not in scores for k in keys):
        raise TimebudgetError(f"{path} is not a score table: it needs the tensors {', '.join(keys)}")
    if any(len(scores[k]) != n for k in keys):
        raise TimebudgetError(f"{path} scores {len(scores['count'])} samples but the training set has {n}")
    if not bool((scores["count"] > 0).any()):
        return None, "scores.pt measured no sample (all counts are 0)"
    return scores, None


def json_number(value: float) -> float | None:
    """JSON has no NaN or infinity: such a value is reported as null."""
    return value if math.isfinite(value) else None


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
