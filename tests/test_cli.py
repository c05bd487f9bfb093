"""The ``timebudget train`` command: flags, one-line errors for every bad input, and one real run end to end.

A bad ``--seconds`` fails before torch is imported, so it is checked in real processes (cheap); the other bad inputs
run the CLI in this process. Two more processes go further: a budget smaller than start-up, and the one run that
trains, end to end, with a budget that leaves room for start-up.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from timebudget import cli, config, data, models
from timebudget.errors import TimebudgetError

from conftest import SLACK_S, CliResult, check_summary, load_checkpoint, run_timebudget, step_records
from test_data import write_cifar10

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

BUDGET = 10.0


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(["train", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flags = ("--seconds", "--config", "--set", "--data", "--data-dir", "--model", "--out", "--seed", "--device",
             "--quiet", "--batch-size", "--lr", "--optimizer", "--weight-decay", "--schedule", "--warmup", "--strategy",
             "--keep-fraction", "--filter-noisy", "--explain")
    assert [flag for flag in flags if flag not in text] == []


def test_settings_precedence_is_defaults_file_flags_then_set(tmp_path: Path) -> None:
    """Later sources win: ``--config`` over defaults, a named flag over the file, ``--set`` over everything."""
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.5\nbatch_size: 32\nschedule: cosine\n")

    def resolve(*extra: str) -> config.Config:
        return cli.config_from_args(cli.build_parser().parse_args(["train", "--seconds", "9", *extra]))

    assert resolve().lr is None
    assert resolve("--config", str(path)).lr == 0.5
    from_flag = resolve("--config", str(path), "--lr", "0.2", "--data", "synthetic")
    assert (from_flag.lr, from_flag.batch_size, from_flag.schedule, from_flag.data) == (0.2, 32, "cosine", "synthetic")
    assert resolve("--config", str(path), "--lr", "0.2", "--set", "lr=0.1").lr == 0.1


def test_selection_flags_set_their_config_fields() -> None:
    def resolve(*extra: str) -> config.Config:
        return cli.config_from_args(cli.build_parser().parse_args(["train", "--seconds", "9", *extra]))

    plain = resolve()
    assert (plain.filter_noisy, plain.keep_fraction) == ("auto", None)
    chosen = resolve("--strategy", "selective", "--filter-noisy", "--keep-fraction", "0.4")
    assert (chosen.strategy, chosen.filter_noisy, chosen.keep_fraction) == ("selective", "true", 0.4)
    assert resolve("--set", "filter_noisy=false").filter_noisy == "false"
    with pytest.raises(TimebudgetError, match=r"keep_fraction must be in \(0, 1\]"):
        resolve("--keep-fraction", "1.5")


def write_bad_inputs(folder: Path) -> None:
    """Files for the bad-input cases: npz files short of an array or of samples, a config with a misspelt key."""
    arrays = {"x_train": np.zeros((10, 3)), "y_train": np.zeros(10, dtype=np.int64), "x_test": np.zeros((4, 3))}
    np.savez(folder / "three.npz", **arrays)
    np.savez(folder / "short.npz", **arrays, y_test=np.zeros(3, dtype=np.int64))
    (folder / "typo.yaml").write_text("lerning_rate: 0.1\n")
    (folder / "empty").mkdir()


BAD_INPUTS = [
    (["--data", "imagenet"], ["unknown data 'imagenet'", "allowed: digits, cifar10", "module:function"]),
    (["--model", "transformer"], ["unknown model 'transformer'", "allowed: cnn, mlp, resnet18"]),
    (["--schedule", "warp"], ["unknown schedule 'warp'", "allowed: linear, cosine, step, constant"]),
    (["--strategy", "oracle"], ["unknown strategy 'oracle'", "allowed: ", "full"]),
    (["--set", "lerning_rate=0.1"], ["unknown --set key 'lerning_rate'", "batch_size"]),
    (["--config", "{dir}/typo.yaml"], ["unknown config key 'lerning_rate'", "weight_decay"]),
    (["--set", "batch_size=many"], ["config key 'batch_size' must be int"]),
    (["--data", "cifar10"], ["--data cifar10 needs --data-dir DIR", "expected layout: DIR/cifar-10-batches-py/"]),
    (["--data", "mnist", "--data-dir", "{dir}/empty"], ["expected layout: DIR/MNIST/raw/"]),
    (["--data", "imagefolder", "--data-dir", "{dir}/empty"], ["expected DIR/<class>/<image files>"]),
    (["--data", "{dir}/three.npz"], ["missing arrays y_test", "x_train, y_train, x_test, y_test"]),
    (["--data", "{dir}/short.npz"], ["x_test has 4 samples but y_test has 3"]),
    (["--data", "{dir}/absent.npz"], ["no such file"]),
    (["--data", "no_such_module_xyz:make"], ["cannot import module 'no_such_module_xyz'"]),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUTS, ids=[" ".join(args) for args, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path, cli_main: Callable[..., CliResult], args: list[str], needles: list[str]
) -> None:
    """Each bad input is refused before training with exit code 2 and one line naming the problem and what is
    allowed; the run folder is never created."""
    write_bad_inputs(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--seconds", "30", "--out", str(out), "--quiet", *(a.format(dir=tmp_path) for a in args)]
    result = cli_main(*argv)
    result.one_line_error(*needles)
    assert result.code == cli.EXIT_BAD_INPUT
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused(tmp_path: Path, cli_main: Callable[..., CliResult]) -> None:
    out = tmp_path / "run"
    result = cli_main("train", "--seconds", "30", "--out", str(out), "--device", "cuda")
    result.one_line_error("--device cuda", "CUDA is not available")
    assert result.code == cli.EXIT_BAD_INPUT and not out.exists()


def test_missing_seconds_is_one_line(cli_main: Callable[..., CliResult]) -> None:
    cli_main("train", "--data", "digits").one_line_error("--seconds")


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf", "abc"])
def test_bad_seconds_from_the_command_line(tmp_path: Path, seconds: str) -> None:
    """What a user types, in a real process: exit code 2, one line naming --seconds, no traceback, no files."""
    proc = run_timebudget("train", "--seconds", seconds, "--out", "run", cwd=tmp_path)
    CliResult.of(proc).one_line_error("--seconds must be a positive")
    assert proc.returncode == cli.EXIT_BAD_INPUT
    assert list(tmp_path.iterdir()) == []


def test_budget_smaller_than_start_up_exits_3(tmp_path: Path) -> None:
    """Half a second cannot even hold the interpreter's start-up: its own exit code, one line about the budget."""
    proc = run_timebudget("train", "--seconds", "0.5", "--out", "run", "--quiet", cwd=tmp_path)
    CliResult.of(proc).one_line_error("--seconds 0.5 ")
    assert proc.returncode == cli.EXIT_BUDGET_TOO_SMALL
    assert list(tmp_path.iterdir()) == []


# --- one real run ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    out: Path
    wall_s: float


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``python -m timebudget train --seconds 10 --out run --quiet`` on the default data, timed from outside."""
    cwd = tmp_path_factory.mktemp("cli")
    started = time.monotonic()
    proc = run_timebudget("train", "--seconds", str(BUDGET), "--out", "run", "--quiet", cwd=cwd)
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return Run(proc, cwd / "run", wall_s)


def test_run_is_quiet_and_leaves_the_promised_files(cli_run: Run) -> None:
    assert (cli_run.proc.stdout, cli_run.proc.stderr) == ("", "")
    names = {p.name for p in cli_run.out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json"} <= names
    assert not [name for name in names if name.endswith(".tmp")]


def test_run_used_the_budget_and_learnt(cli_run: Run) -> None:
    """The budget counts from process start, so the outside wall time is the budget, give or take process exit."""
    summary = check_summary(cli_run.out, BUDGET)
    assert cli_run.wall_s <= BUDGET + 3 * SLACK_S
    assert summary["test_metrics"]["accuracy"] > 0.5  # ten digits: chance is 0.1
    step_records(cli_run.out, summary)


def test_config_yaml_resolves_back_into_the_run_config(cli_run: Run) -> None:
    saved = config.apply(yaml.safe_load((cli_run.out / "config.yaml").read_text())).validate()
    assert (saved.seconds, saved.data, saved.quiet, Path(saved.out).name) == (BUDGET, "digits", True, "run")
    assert None not in (saved.batch_size, saved.lr, saved.optimizer)


def test_checkpoint_holds_the_evaluated_model(cli_run: Run) -> None:
    """Loaded into the default digits model, the checkpoint scores what the summary says it scored."""
    summary = json.loads((cli_run.out / "summary.json").read_text())
    checkpoint = load_checkpoint(cli_run.out, summary)
    bundle = data.load("digits")
    model = models.build(None, bundle.input_shape, bundle.num_outputs, bundle.kind)
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        accuracy = float((model.eval()(bundle.test.x).argmax(1) == bundle.test.y).float().mean())
    assert accuracy == pytest.approx(summary["test_metrics"]["accuracy"], abs=0.01)


def test_fast_cifar_config_trains_on_cifar10_files(cli_main, tmp_path: Path) -> None:
    """``configs/cifar10-fast.yaml`` as its usage line says, on CIFAR-10 files in the real on-disk format: every trick
    it switches on runs (crop/flip, label smoothing, weight averaging, test-time flips), and the run ends in time.
    Compilation and bf16 are switched off here: a 2-core CPU would spend the budget compiling."""
    write_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    result = cli_main("train", "--seconds", "15", "--config", str(CONFIGS / "cifar10-fast.yaml"),
                      "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet",
                      "--set", "compile=false", "--set", "precision=fp32")
    assert result.code == 0, result.lines
    summary = check_summary(out, 15.0)
    assert (summary["data"], summary["model"], summary["n_train"], summary["n_test"]) == ("cifar10", "airnet", 20, 10)
    assert summary["weights_averaged"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["augment"], saved["tta"], saved["label_smoothing"], saved["average_from"]) == (True, True, 0.2, 0.75)
    assert step_records(out, summary)[-1]["lr"] < 0.4 * 0.05  # decayed to near zero at the window's end


def test_a_command_line_run_freezes_the_collector_itself_as_its_process_ends_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` marks a command-line process's run as its only one; ``_train`` then freezes what exists before it, so
    ``train`` keeps that arrangement (no collection after the last artifact, nothing given back) while an in-process
    caller's runs (``only_run`` false) end with nothing frozen."""
    parser = cli.build_parser()
    argv = ["train", "--seconds", "3", "--data", "synthetic", "--model", "mlp", "--quiet"]
    try:
        for only_run in (False, True):
            args = parser.parse_args([*argv, "--out", str(tmp_path / str(only_run))])
            args.only_run = only_run
            monkeypatch.setattr(cli, "_PROCESS_START", time.monotonic())  # the budget counts from here
            assert cli._train(args) == 0
            assert (gc.get_freeze_count() > 0) is only_run
    finally:
        gc.unfreeze()
