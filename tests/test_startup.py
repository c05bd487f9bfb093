"""Start-up is accounted part by part, the default job imports only what it trains with, and the compile cache is
kept in its keyed folder, cold at the first run and warm at the next."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from conftest import FakeClock
from timebudget import Config, startup, train
from timebudget.trainer import default_batch


def test_parts_are_the_time_between_marks_and_compilation_leaves_calibration(fake_clock: FakeClock) -> None:
    start = fake_clock()
    fake_clock.advance(1.5)
    log = startup.Startup(start, fake_clock)
    for part, seconds in (("data", 0.25), ("model", 0.5), ("model", 0.25), ("calibration", 3.0)):
        fake_clock.advance(seconds)
        log.mark(part)
    plain = log.summary(training_started=fake_clock() + 0.125, calibration_steps=[2.0, 0.5])
    assert plain == {"imports_s": 1.5, "data_s": 0.25, "model_s": 0.75, "calibration_s": 3.0, "total_s": 5.625,
                     "compiled": False}
    log.compile_cache = startup.CompileCache("unused", "key")
    log.compile_cache._before = log.compile_cache._counts()
    compiled = log.summary(training_started=fake_clock(), calibration_steps=[2.0, 1.0, 0.5])
    assert (compiled["compile_s"], compiled["calibration_s"]) == (2.0, 1.0)  # the cold steps' excess over the last
    assert compiled["compile_cache"]["state"] == "unused"  # nothing was compiled in between


def test_cache_key_names_model_shape_batch_precision_and_device() -> None:
    assert startup.cache_key("airnet", (3, 32, 32), 512, "bf16", True, "cuda") == "airnet-3x32x32-b512-bf16-cl-cuda"
    key = startup.cache_key("my.models:wide net", (6,), 64, "fp32", False, "cpu")
    assert key == "my.models_wide_net-6-b64-fp32-cpu"


BUILD_COST = """
    from torch import nn

    class Clock:
        def __init__(self):
            self.t = 0.0

        def __call__(self):
            return self.t

    clock = Clock()

    class Timed(nn.Linear):
        def forward(self, x):
            clock.t += 1e-4 * len(x)  # time passes only while the model computes ...
            return super().forward(x.flatten(1))

    def make(input_shape, num_outputs):
        clock.t += 0.25  # ... and while it is built
        return Timed(64, num_outputs)
"""


def test_a_runs_start_up_is_accounted_exactly(user_module: Callable[[str, str], ModuleType], tmp_path: Path) -> None:
    """With a clock that moves only while the model is built and computes, every second of the start-up is in its
    part: the build in ``model_s``, calibration's steps and evaluations in ``calibration_s``, nothing elsewhere."""
    clock = user_module("built_model", BUILD_COST).clock
    s = train(Config(seconds=2.0, model="built_model:make", out=str(tmp_path / "run"), quiet=True), now=clock).summary
    parts = s["startup"]
    assert parts["model_s"] == 0.25 and parts["calibration_s"] > 0 and not parts["compiled"]
    assert all(parts[f"{name}_s"] == 0 for name in ("imports", "data", "optimizer", "setup", "copies", "folder"))
    assert parts["total_s"] == pytest.approx(parts["model_s"] + parts["calibration_s"]) == s["startup_s"]


def run_python(code: str, cwd: Path, **env: str) -> str:
    environ = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env={**environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_default_job_imports_neither_scikit_learn_nor_torchvision(tmp_path: Path) -> None:
    """Each costs about 0.6 s of the budget before the first step, and the digits job needs neither. (The run's clock
    moves 1 ms per reading, so a busy machine cannot make its budget too small.)"""
    out = run_python("""
        import itertools, json, sys
        from timebudget import Config, cli, train
        ticks = itertools.count()
        train(Config(seconds=0.5, quiet=True, out="run"), now=lambda: next(ticks) / 1000)
        heavy = ("sklearn", "scipy", "torchvision", "matplotlib")
        print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
    """, tmp_path)
    assert json.loads(out.splitlines()[-1]) == []
    parts = json.loads((tmp_path / "run" / "summary.json").read_text())["startup"]
    accounted = sum(value for name, value in parts.items() if name.endswith("_s") and name != "total_s")
    assert accounted == pytest.approx(parts["total_s"], abs=0.01)  # every reading between is in one part


def test_compiled_runs_keep_their_cache_in_a_keyed_folder_cold_then_warm(tmp_path: Path) -> None:
    """Two processes compile the same step: the first misses inductor's on-disk caches and fills the folder named
    for the model and shape, the second finds everything there."""
    g = np.random.default_rng(0)
    x = g.normal(size=(320, 6)).astype(np.float32)
    np.savez(tmp_path / "tab.npz", x_train=x[:256], y_train=(x[:256, 0] > 0).astype(np.int64), x_test=x[256:],
             y_test=(x[256:, 0] > 0).astype(np.int64))
    batch = default_batch("tabular", 256)  # the key names the batch the run chose
    states, key = [], f"mlp-6-b{batch}-fp32-{'cuda' if torch.cuda.is_available() else 'cpu'}"
    for run in ("cold", "warm"):  # the run's clock moves 1 ms per reading: compilation takes no time on it
        run_python(f"""
            import itertools
            from timebudget import Config, train
            ticks = itertools.count()
            train(Config(seconds=1, data="tab.npz", compile=True, compile_cache="cache", quiet=True, out="{run}"),
                  now=lambda: next(ticks) / 1000)
        """, tmp_path, TORCHINDUCTOR_COMPILE_THREADS="1")
        parts = json.loads((tmp_path / run / "summary.json").read_text())["startup"]
        cache = parts["compile_cache"]
        assert parts["compiled"] and parts["compile_s"] > 0
        assert cache["folder"] == str(tmp_path / "cache" / key)
        assert cache["chosen_by"] == "compile_cache"
        states.append((cache["state"], cache["fx_graph"]["miss"] > 0, cache["fx_graph"]["hit"] > 0))
    assert states == [("cold", True, False), ("warm", False, True)]
    assert any((tmp_path / "cache" / key / "fxgraph").iterdir())
