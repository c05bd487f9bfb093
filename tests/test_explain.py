"""``timebudget explain``: Integrated Gradients figures and explain.json, TracIn self-influence, bad input.

Three tiny runs are trained once per module (digits images with intermediate checkpoints, an .npz tabular
classification set, an .npz regression set); tests that change a run folder work on a copy.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from timebudget import cli, data, explain, influence, run_folder
from timebudget.config import Config
from timebudget.errors import BudgetTooSmall, TimebudgetError
from timebudget.trainer import train

QUICK = {"samples": 2, "n_steps": 16, "quiet": True}


def _npz(path: Path, regression: bool) -> Path:
    g = np.random.default_rng(0)
    x = g.normal(size=(360, 5)).astype(np.float32)
    w = g.normal(size=(5, 3))
    y = (x @ w[:, 0] * 3.0 + 10.0).astype(np.float32) if regression else (x @ w).argmax(1).astype(np.int64)
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain_runs")
    made = {}
    for name, spec, seconds, extra in (
        ("digits", "digits", 6.0, {"save_checkpoints": 2}),
        ("tabular", str(_npz(root / "tabular.npz", regression=False)), 3.0, {}),
        ("regression", str(_npz(root / "regression.npz", regression=True)), 3.0, {}),
    ):
        config = Config(seconds=seconds, data=spec, out=str(root / name), device="cpu", quiet=True, **extra)
        data.load(spec)  # import scikit-learn before the budget starts: the run should spend it on training
        try:
            made[name] = train(config).out_dir
        except BudgetTooSmall:  # a load spike ate the start-up (first-time imports are paid before: above, conftest)
            made[name] = train(config).out_dir
    return made


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / run.name
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("explain"))
    return target


def _check_png(path: Path) -> None:
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def _check_written(report: dict[str, Any], out: Path, figures: list[str]) -> None:
    assert report["figures"] == figures
    for name in figures:
        _check_png(out / name)
    assert json.loads((out / "explain.json").read_text()) == report


def _check_completeness(records: list[dict[str, Any]]) -> None:
    """Each record's attributions sum to F(x) - F(baseline) (measured separately) up to the reported delta."""
    for r in records:
        assert r["attr_sum"] == pytest.approx(r["output_diff"] + r["delta"], abs=1e-3 * (1 + abs(r["output_diff"])))


# --- Integrated Gradients on a tiny model --------------------------------------------------------------------------
def test_integrated_gradients_completeness() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    x, baseline = torch.randn(6, 5), torch.randn(6, 5)
    target = torch.tensor([0, 1, 2, 2, 0, 1])
    attr, delta = explain.attribute(model, x, target, baseline, n_steps=64)
    with torch.no_grad():
        rows = torch.arange(6)
        expected = model(x)[rows, target] - model(baseline)[rows, target]
    total = attr.sum(1)
    assert torch.allclose(total - expected, delta, atol=1e-5)  # the delta Captum reports is exactly the gap
    assert delta.abs().max() < 1e-3 * expected.abs().max()  # and the gap is small: completeness holds
    chunked, chunked_delta = explain.attribute(model, x, target, baseline, n_steps=64, internal_batch_size=4)
    assert torch.allclose(chunked, attr, atol=1e-6) and torch.allclose(chunked_delta, delta, atol=1e-6)


def test_attribution_stats_measure_concentration() -> None:
    spread = explain.attribution_stats(torch.ones(10, 10))
    one = torch.zeros(10, 10)
    one[3, 4] = -2.0
    peaked = explain.attribution_stats(one)
    assert spread["entropy"] == pytest.approx(1.0) and spread["top10_share"] == pytest.approx(0.1)
    assert peaked["entropy"] == pytest.approx(0.0) and peaked["top10_share"] == pytest.approx(1.0)
    assert peaked["attr_sum"] == -2.0 and peaked["abs_max"] == 2.0
    assert explain.attribution_stats(torch.zeros(4))["entropy"] is None


def test_full_precision_switches_tf32_off_and_restores_it() -> None:
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: the legacy allow_tf32 must not be touched (mixing raises)
        switches, on, off = [(matmul, "fp32_precision"), (cudnn.conv, "fp32_precision"),
                             (cudnn.rnn, "fp32_precision")], "tf32", "ieee"
    else:
        switches, on, off = [(matmul, "allow_tf32"), (cudnn, "allow_tf32")], True, False
    saved = [getattr(obj, name) for obj, name in switches]
    try:
        for obj, name in switches:
            setattr(obj, name, on)
        with explain.full_precision():
            assert [getattr(obj, name) for obj, name in switches] == [off] * len(switches)
        assert [getattr(obj, name) for obj, name in switches] == [on] * len(switches)
    finally:
        for (obj, name), value in zip(switches, saved):
            setattr(obj, name, value)


def test_full_precision_on_torch_before_fp32_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.9 has only ``allow_tf32``: stand-ins for its two switch holders are switched off and restored."""
    matmul, cudnn = SimpleNamespace(allow_tf32=True), SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", matmul)
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    with explain.full_precision():
        assert (matmul.allow_tf32, cudnn.allow_tf32) == (False, False)
    assert (matmul.allow_tf32, cudnn.allow_tf32) == (True, True)


# --- run folders ---------------------------------------------------------------------------------------------------
def test_image_run(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    run = runs["digits"]
    report = explain.run(run, explain.Options(classes=[0, 3], samples=2, n_steps=16))
    out = run / "explain"
    _check_written(report, out, ["test_class_0.png", "test_class_3.png", "train_kept_vs_dropped.png"])
    test = [r for r in report["samples"] if r["split"] == "test"]
    assert [(r["group"], r["label"]) for r in test] == [("class 0", 0)] * 2 + [("class 3", 3)] * 2
    assert all(r["target"] == r["label"] for r in test)
    kept = [r for r in report["samples"] if r["group"] == "kept"]
    dropped = [r for r in report["samples"] if r["group"] == "dropped"]
    assert len(kept) == len(dropped) == 2 and {r["label"] for r in kept + dropped} <= {0, 3}
    scores = torch.load(run / "scores.pt", weights_only=True)
    y = data.load("digits").train.y
    pool = (scores["count"] > 0) & ((y == 0) | (y == 3))
    assert kept[0]["score"] == pytest.approx(float(scores["average"][pool].max()))
    assert dropped[0]["score"] == pytest.approx(float(scores["average"][pool].min()))
    assert min(r["score"] for r in kept) >= max(r["score"] for r in dropped)
    comparison = report["comparison"]
    assert comparison["kept"]["mean_score"] == pytest.approx(np.mean([r["score"] for r in kept]))
    assert comparison["kept_minus_dropped"]["mean_score"] > 0
    assert set(comparison["kept"]) >= {"mean_abs_attribution", "mean_entropy", "mean_top10_share", "accuracy",
                                       "mean_abs_delta", "label_counts"}
    _check_completeness(report["samples"])
    assert report["notes"] == []
    assert "samples attributed" in capsys.readouterr().out and report["elapsed_s"] > 0


def test_image_run_blur_baseline_predicted_target_and_out(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    options = explain.Options(classes=[5], baseline="blur", target="pred", internal_batch_size=3, out=str(out),
                              **QUICK)
    report = explain.run(runs["digits"], options)
    _check_written(report, out, ["test_class_5.png", "train_kept_vs_dropped.png"])
    assert report["baseline"] == "blur" and report["target"] == "pred"
    assert all(r["target"] == r["prediction"] for r in report["samples"])
    _check_completeness(report["samples"])


def test_tabular_run(runs: dict[str, Path]) -> None:
    report = explain.run(runs["tabular"], explain.Options(baseline="mean", **QUICK))
    _check_written(report, runs["tabular"] / "explain", ["test_features.png", "train_kept_vs_dropped_features.png"])
    assert {r["group"] for r in report["samples"]} == {"class 0", "class 1", "class 2", "kept", "dropped"}
    assert report["comparison"]["kept"]["n"] == 2
    _check_completeness(report["samples"])


def test_regression_run(runs: dict[str, Path]) -> None:
    report = explain.run(runs["regression"], explain.Options(**QUICK))
    _check_written(report, runs["regression"] / "explain",
                   ["test_features.png", "train_kept_vs_dropped_features.png"])
    assert report["task"] == "regression" and report["target"] == "output 0"
    with np.load(runs["regression"].parent / "regression.npz") as npz:
        y_train, y_test = npz["y_train"], npz["y_test"]
    for r in report["samples"]:  # labels come back in the data's own units
        assert r["label"] == pytest.approx(float((y_test if r["split"] == "test" else y_train)[r["index"]]), abs=1e-3)
        assert r["abs_error"] == pytest.approx(abs(r["prediction"] - r["label"]))
    assert "mae" in report["comparison"]["kept"]
    _check_completeness(report["samples"])


@pytest.mark.parametrize("damage", ["delete", "unmeasured"])
def test_run_without_scores_is_explained_without_comparison(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    run = _copy(runs["tabular"], tmp_path)
    if damage == "delete":
        (run / "scores.pt").unlink()
    else:
        scores = torch.load(run / "scores.pt", weights_only=True)
        scores["count"].zero_()
        torch.save(scores, run / "scores.pt")
    report = explain.run(run, explain.Options(samples=2, n_steps=8))
    assert report["comparison"] is None
    assert all(r["split"] == "test" for r in report["samples"]) and report["figures"] == ["test_features.png"]
    reason = "no scores.pt" if damage == "delete" else "all counts are 0"
    assert len(report["notes"]) == 1 and "no kept/dropped comparison" in report["notes"][0]
    assert reason in report["notes"][0] and reason in capsys.readouterr().out


# --- TracIn --------------------------------------------------------------------------------------------------------
def test_tracin_from_saved_checkpoints(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["digits"]
    report = explain.run(run, explain.Options(classes=[1], tracin=True, out=str(tmp_path), **QUICK))
    tracin = report["tracin"]
    saved = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    assert saved and set(tracin["checkpoints"]) == {*saved, "checkpoint.pt"}  # how many fit depends on the machine
    for name in saved:  # each checkpoint is weighted by the learning rate its optimizer held
        ckpt = torch.load(run / "checkpoints" / name, weights_only=True)
        assert tracin["checkpoints"][name] == ckpt["optimizer"]["param_groups"][0]["lr"] > 0
    values = torch.load(tmp_path / "self_influence.pt", weights_only=True)
    scores = torch.load(run / "scores.pt", weights_only=True)
    assert values.shape == scores["count"].shape and bool((values >= 0).all())
    agreement = tracin["rank_correlation"]
    assert agreement["n"] == int((scores["count"] > 0).sum())
    assert -1.0 <= agreement["average"]["spearman_rho"] <= 1.0
    train_records = [r for r in report["samples"] if r["split"] == "train"]
    assert all(r["self_influence"] == pytest.approx(float(values[r["index"]])) for r in train_records)
    assert report["notes"] == []


def test_tracin_single_checkpoint_is_the_last_layer_gradient_norm(runs: dict[str, Path], tmp_path: Path) -> None:
    """With checkpoint.pt alone (weight 1), self-influence is |dL/dW|^2 of the last layer's weight, per sample."""
    run = runs["tabular"]
    report = explain.run(run, explain.Options(tracin=True, out=str(tmp_path), **QUICK))
    assert report["tracin"]["checkpoints"] == {"checkpoint.pt": 1.0}
    assert any("checkpoint.pt alone" in note for note in report["notes"])
    values = torch.load(tmp_path / "self_influence.pt", weights_only=True)
    loaded = run_folder.load_run(run, torch.device("cpu"))
    layer = [m for m in loaded.model.modules() if isinstance(m, nn.Linear)][-1]
    x, y = loaded.bundle.train.x, loaded.bundle.train.y
    for i in (0, 7, 123):
        loss = nn.functional.cross_entropy(loaded.model(x[i: i + 1]), y[i: i + 1], reduction="sum",
                                           label_smoothing=loaded.config.label_smoothing)  # the run's training loss
        (grad,) = torch.autograd.grad(loss, layer.weight)
        assert float(values[i]) == pytest.approx(float(grad.square().sum()), rel=1e-4, abs=1e-9)


def test_tracin_refuses_a_model_whose_output_is_not_its_last_linear() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(TimebudgetError, match="straight from its last nn.Linear"):
        influence.last_linear(model, torch.randn(2, 4))


# --- bad input -----------------------------------------------------------------------------------------------------
def _edit_checkpoint(run: Path, edit: str) -> None:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    key = next(k for k in ckpt["model"] if k.endswith("weight"))
    if edit == "missing":
        del ckpt["model"][key]
    elif edit == "reshaped":
        ckpt["model"][key] = torch.zeros(2, 2)
    else:
        ckpt["data"]["num_outputs"] = 7
    torch.save(ckpt, run / "checkpoint.pt")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "does not match model 'mlp' of config.yaml: missing keys 1.weight"),
        ("reshaped", "shapes (checkpoint vs model) 1.weight (2, 2) vs (256, 5)"),
        ("other_data", "was trained on other data than"),
        ("garbage", "is not a readable checkpoint"),
        ("no_config", "is not a timebudget run folder: it has no config.yaml"),
        ("short_scores", "scores 3 samples but the training set has 300"),
    ],
)
def test_damaged_run_folder(runs: dict[str, Path], tmp_path: Path, damage: str, message: str) -> None:
    run = _copy(runs["tabular"], tmp_path)
    if damage in ("missing", "reshaped", "other_data"):
        _edit_checkpoint(run, damage)
    elif damage == "garbage":
        (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    elif damage == "no_config":
        (run / "config.yaml").unlink()
    else:
        torch.save({k: v[:3] for k, v in torch.load(run / "scores.pt", weights_only=True).items()}, run / "scores.pt")
    with pytest.raises(TimebudgetError) as info:
        explain.run(run, explain.Options(**QUICK))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("run_name", "options", "message"),
    [
        ("digits", {"classes": [0, 10]}, "--classes 10 is out of range: this run has 10 classes (0 to 9)"),
        ("digits", {"classes": [-1]}, "--classes -1 is out of range"),
        ("digits", {"output": 1}, "--output selects a regression output"),
        ("tabular", {"baseline": "blur"}, "--baseline blur needs image data"),
        ("regression", {"output": 1}, "--output 1 is out of range: this run has 1 regression outputs"),
        ("regression", {"classes": [0]}, "--classes applies to classification runs"),
        ("digits", {"n_steps": 0}, "--n-steps must be >= 1, got 0"),
        ("digits", {"samples": 0}, "--samples must be >= 1"),
        ("digits", {"internal_batch_size": 0}, "--internal-batch-size must be >= 1"),
        ("digits", {"baseline": "noise"}, "unknown --baseline 'noise'; allowed: zeros, blur, mean"),
    ],
)
def test_bad_options(runs: dict[str, Path], tmp_path: Path, run_name: str, options: dict[str, Any],
                     message: str) -> None:
    with pytest.raises(TimebudgetError) as info:
        explain.run(runs[run_name], explain.Options(out=str(tmp_path), quiet=True, **options))
    assert message in str(info.value)
    assert not (tmp_path / "explain.json").exists()


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(TimebudgetError, match="is not a folder"):
        explain.run(tmp_path / "missing")


# --- command line --------------------------------------------------------------------------------------------------
def test_cli_process_non_run_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = subprocess.run([sys.executable, "-m", "timebudget", "explain", str(tmp_path / "empty")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.EXIT_BAD_INPUT
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("timebudget: error:") and "not a timebudget run folder" in lines[0]


def test_cli_explain(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["explain", str(runs["digits"]), "--classes", "42"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.splitlines()
    assert err == ["timebudget: error: --classes 42 is out of range: this run has 10 classes (0 to 9)"]
    argv = ["explain", str(runs["digits"]), "--classes", "2", "--samples", "1", "--n-steps", "4", "--baseline", "mean",
            "--target", "pred", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    assert "samples attributed" in capsys.readouterr().out
    report = json.loads((tmp_path / "explain.json").read_text())
    assert (report["baseline"], report["n_steps"], report["target"], report["samples_per_group"]) == ("mean", 4,
                                                                                                      "pred", 1)
    assert report["figures"] == ["test_class_2.png", "train_kept_vs_dropped.png"]


def test_train_explain_runs_after_training(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``train --explain`` hands the finished run folder to explain; training itself is replaced by the fixture's."""
    import timebudget.trainer

    run = _copy(runs["tabular"], tmp_path)
    seen: list[Config] = []

    def finished(config: Config, start: float | None = None) -> timebudget.trainer.TrainResult:
        seen.append(config)
        summary = json.loads((run / "summary.json").read_text())
        return timebudget.trainer.TrainResult(out_dir=run, summary=summary, model=nn.Identity(), config=config)

    monkeypatch.setattr(timebudget.trainer, "train", finished)
    argv = ["train", "--seconds", "60", "--data", str(runs["tabular"].parent / "tabular.npz"), "--explain"]
    assert cli.main(argv) == 0
    assert seen[0].explain
    assert json.loads((run / "explain" / "explain.json").read_text())["run"] == str(run)
    assert "outside the training budget" in capsys.readouterr().out
