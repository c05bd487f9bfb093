"""The typed config: YAML and ``--set`` values, their precedence, and one clear error for every bad value."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from timebudget import config
from timebudget.errors import TimebudgetError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write_yaml(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.parametrize(
    ("text", "shown"),
    [("0", "got 0"), ("-5", "got -5"), ("nan", "got nan"), ("inf", "got inf"), ("-inf", "got -inf"),
     ("abc", "got 'abc'"), ("", "got ''")],
)
def test_bad_seconds_are_refused_with_the_value(text: str, shown: str) -> None:
    """A budget must be a positive, finite number; the message names the flag and the value given."""
    with pytest.raises(TimebudgetError, match="--seconds must be a positive") as info:
        config.check_seconds(text)
    assert shown in str(info.value)


@pytest.mark.parametrize(("text", "seconds"), [("30", 30.0), ("0.5", 0.5), ("1e3", 1000.0)])
def test_good_seconds_parse(text: str, seconds: float) -> None:
    assert config.check_seconds(text) == seconds


def test_seconds_are_required() -> None:
    """Every other field has a default; the budget has none and says how to give it."""
    with pytest.raises(TimebudgetError, match="--seconds is required"):
        config.load()


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_validate_refuses_bad_seconds_set_in_code(seconds: float) -> None:
    """``train(Config(...))`` callers bypass the CLI parser; validation still catches the budget."""
    with pytest.raises(TimebudgetError, match="--seconds"):
        config.Config(seconds=seconds).validate()


def test_yaml_then_set_overrides_in_that_order(tmp_path: Path) -> None:
    """Defaults, then the file, then ``--set``: the later source wins, untouched fields keep their defaults."""
    path = write_yaml(tmp_path / "run.yaml", {"lr": 0.5, "batch_size": 32, "schedule": "cosine"})
    loaded = config.load(path, {"seconds": 12, "lr": 0.05})
    assert (loaded.seconds, loaded.lr, loaded.batch_size, loaded.schedule) == (12.0, 0.05, 32, "cosine")
    assert loaded.optimizer is None and loaded.data == "digits"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("lr=0.05", "lr", 0.05),
        ("augment=true", "augment", True),
        ("step_milestones=[0.3, 0.6]", "step_milestones", [0.3, 0.6]),
        ("model=null", "model", None),
        ("data=my.npz", "data", "my.npz"),
        ("data=mod:make", "data", "mod:make"),
        (" warmup = 0.1", "warmup", 0.1),
    ],
)
def test_set_values_are_read_as_yaml(text: str, key: str, value: Any) -> None:
    """``--set`` accepts what a YAML file would hold, so numbers, booleans, lists and null need no quoting."""
    assert config.parse_override(text) == (key, value)


@pytest.mark.parametrize("text", ["lr", "=0.1", ""])
def test_set_needs_key_equals_value(text: str) -> None:
    with pytest.raises(TimebudgetError, match="key=value"):
        config.parse_override(text)


@pytest.mark.parametrize("in_file", [True, False], ids=["file", "--set"])
def test_unknown_key_is_named_and_the_allowed_keys_listed(tmp_path: Path, in_file: bool) -> None:
    """A misspelt key must not be ignored silently: the error names it and lists the real ones."""
    values = {"seconds": 5, "lerning_rate": 0.1}
    path = write_yaml(tmp_path / "bad.yaml", values) if in_file else None
    with pytest.raises(TimebudgetError) as info:
        config.load(path, None if in_file else values)
    message = str(info.value)
    assert "'lerning_rate'" in message
    assert all(name in message for name in ("batch_size", "lr", "optimizer", "weight_decay", "schedule", "warmup"))


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("batch_size", "abc", "must be int"),
        ("batch_size", 2.5, "must be int"),
        ("batch_size", True, "must be int"),
        ("quiet", "yes please", "must be bool"),
        ("lr", "fast", "must be float"),
        ("seed", None, "cannot be empty"),
    ],
)
def test_values_of_the_wrong_type_name_the_key_and_type(key: str, value: Any, needle: str) -> None:
    with pytest.raises(TimebudgetError, match=needle) as info:
        config.load(overrides={"seconds": 5, key: value})
    assert repr(key) in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("schedule", "warp", ("linear", "cosine", "step", "constant")),
        ("optimizer", "lion", ("sgd", "adamw")),
        ("device", "tpu", ("auto", "cpu", "cuda")),
        ("strategy", "oracle", ("full",)),
    ],
)
def test_unknown_choice_lists_what_is_allowed(key: str, value: str, allowed: tuple[str, ...]) -> None:
    with pytest.raises(TimebudgetError, match=f"unknown {key} '{value}'") as info:
        config.load(overrides={"seconds": 5, key: value})
    assert all(name in str(info.value) for name in allowed)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", 0),
        ("lr", -0.1),
        ("lr", math.inf),
        ("warmup", 1.0),
        ("warmup", -0.1),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("step_milestones", [0.8, 0.2]),
        ("step_milestones", [0.5, 1.5]),
        ("num_workers", -1),
    ],
)
def test_out_of_range_values_are_refused(key: str, value: Any) -> None:
    """Values of the right type that cannot work (no samples per batch, a warm-up of the whole budget...)."""
    with pytest.raises(TimebudgetError, match=key):
        config.load(overrides={"seconds": 5, key: value})


def test_dumped_config_loads_back_unchanged() -> None:
    """``config.yaml`` in a run folder is the resolved config: reading it back must give the same run."""
    original = config.load(
        overrides={"seconds": 7.5, "lr": 0.03, "batch_size": 16, "step_milestones": [0.4, 0.9], "augment": False}
    )
    again = config.apply(yaml.safe_load(config.dump(original))).validate()
    assert dataclasses.asdict(again) == dataclasses.asdict(original)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    """Every file in ``configs/`` must load and validate once a budget is given."""
    assert config.load(path, {"seconds": 30}).seconds == 30.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [(None, "does not exist"), ("lr: [0.1", "not valid YAML"), ("- 1\n- 2\n", "mapping")],
)
def test_unusable_config_file_is_named(tmp_path: Path, text: str | None, needle: str) -> None:
    path = tmp_path / "run.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(TimebudgetError, match=needle) as info:
        config.load(path, {"seconds": 5})
    assert "run.yaml" in str(info.value)
