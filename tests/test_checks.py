"""Data and path checks before training: each bad input is one line and a non-zero exit with nothing written; what
training can honestly go on with is a warning line and a note in the summary."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from timebudget import checks
from timebudget.errors import TimebudgetError

from conftest import CliResult


pytestmark = pytest.mark.usefixtures("warm_one_thread")


def _npz(path: Path, n: int = 300, classes: int = 3, test_labels: np.ndarray | None = None, **changes: object) -> Path:
    g = np.random.default_rng(0)
    y_train = np.arange(n) % classes
    y_test = np.arange(n // 3) % classes if test_labels is None else test_labels
    arrays = {"x_train": (g.normal(size=(n, 8)) + y_train[:, None]).astype(np.float32), "y_train": y_train,
              "x_test": (g.normal(size=(len(y_test), 8)) + y_test[:, None]).astype(np.float32), "y_test": y_test}
    arrays.update(changes)
    np.savez(path, **arrays)
    return path


def _with_nan(key: str) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(300 if "train" in key else 100, 8)).astype(np.float32)
    x[17, 3] = np.nan if key.startswith("x") else x[17, 3]
    return x


@pytest.mark.parametrize("case, needles", [
    ({"x_train": "nan"}, ["x_train", "NaN or inf", "sample 17"]),
    ({"x_test": "inf"}, ["x_test", "NaN or inf"]),
    ({"y_train": "nan"}, ["y_train", "NaN or inf"]),
    ({"test_labels": np.arange(100) % 3 + 5}, ["no test label occurs in training", "[5, 6, 7]", "[0, 1, 2]"]),
    ({"classes": 1}, ["single class"]),
])
def test_bad_data_is_one_line_and_writes_nothing(
    tmp_path: Path, cli_main: Callable[..., CliResult], case: dict[str, object], needles: list[str]
) -> None:
    arrays: dict[str, object] = {}
    for key in ("x_train", "x_test", "y_train"):
        if case.get(key) == "nan":
            arrays[key] = _with_nan(key) if key.startswith("x") else np.where(np.arange(300) == 17, np.nan, 1.0)
        elif case.get(key) == "inf":
            x = _with_nan(key)
            x[5, 0] = np.inf
            arrays[key] = x
    if "y_train" in arrays:  # float targets: a regression set
        arrays["y_test"] = np.ones(100)
    path = _npz(tmp_path / "data.npz", classes=int(case.get("classes", 3)),  # type: ignore[call-overload]
                test_labels=case.get("test_labels"), **arrays)  # type: ignore[arg-type]
    out = tmp_path / "run"
    result = cli_main("train", "--seconds", "30", "--data", str(path), "--out", str(out), "--quiet")
    result.one_line_error(*needles)
    assert result.code == 2 and not out.exists()


def test_what_training_can_go_on_with_is_a_warning_and_a_note(
    tmp_path: Path, cli_main: Callable[..., CliResult]
) -> None:
    """Test labels partly unseen in training (class 3), and a batch larger than the training set."""
    path = _npz(tmp_path / "data.npz", test_labels=np.arange(100) % 4)
    out = tmp_path / "run"
    # overlapping classes: the auto noise filter would rightly leave out samples their features contradict, and then
    # epochs would no longer be the whole set in one batch
    result = cli_main("train", "--seconds", "12", "--data", str(path), "--out", str(out), "--quiet", "--batch-size",
                      "512", "--set", "filter_noisy=false")
    assert result.code == 0
    assert all(line.startswith("timebudget: warning: ") for line in result.lines)
    batch, labels = result.lines
    assert "batch_size 512" in batch and "300 samples" in batch
    assert "[3]" in labels and "25.0%" in labels
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warnings"] == [line.removeprefix("timebudget: warning: ") for line in result.lines]
    assert summary["steps"] == summary["samples_trained"] / 300 and summary["test_metrics"]["accuracy"] > 0.5


def test_nan_in_a_user_datasets_first_batch_is_one_line(
    tmp_path: Path, cli_main: Callable[..., CliResult], user_module: Callable[[str, str], ModuleType]
) -> None:
    user_module("nandata", """
        import torch
        from torch.utils.data import TensorDataset

        def make():
            x = torch.randn(200, 6)
            x[:, 2] = float("nan")
            y = torch.arange(200) % 2
            return TensorDataset(x, y), TensorDataset(x[:50], y[:50])
    """)
    out = tmp_path / "run"
    result = cli_main("train", "--seconds", "30", "--data", "nandata:make", "--out", str(out), "--quiet")
    result.one_line_error("--data 'nandata:make'", "NaN or inf inputs")
    assert not out.exists()


def test_an_out_folder_that_cannot_be_created_names_the_flag_and_the_path(
    tmp_path: Path, cli_main: Callable[..., CliResult]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker, blocker / "run"):
        result = cli_main("train", "--seconds", "30", "--out", str(out), "--quiet")
        result.one_line_error("--out", str(out))
    assert blocker.read_text() == ""


def test_write_errors_name_the_flag_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(TimebudgetError, match=r"--out '.*run': cannot write '.*x\.pt': No space"):
        with checks.writing(tmp_path / "run"):
            raise OSError(28, "No space left on device", str(tmp_path / "run" / "x.pt"))


def test_single_class_and_unseen_labels_from_tensors() -> None:
    assert checks.classes("d", torch.tensor([0, 1, 1]), torch.tensor([0, 1])) == []
    with pytest.raises(TimebudgetError, match="single class"):
        checks.classes("d", torch.tensor([2, 2]), torch.tensor([2]))
    (warning,) = checks.classes("d", torch.tensor([0, 1]), torch.tensor([0, 1, 2, 2]))
    assert "[2]" in warning and "50.0%" in warning
