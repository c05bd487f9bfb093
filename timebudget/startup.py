"""Start-up: the seconds from process start to the first training step, part by part, and the folder that keeps
compilation out of repeated runs.

A short budget is eaten by start-up before it trains at all, so ``summary.json`` says where it went (``startup``):
``imports_s`` (process start to the trainer's set-up: interpreter, torch, config; about 0 for a library call, whose
budget starts at the call), ``data_s`` (reading and normalising the data), ``model_s`` (building it and moving it to
the device, which creates the CUDA context), ``compile_s`` (with ``compile``: torch.compile's own imports, dynamo and
inductor, plus what the cold calibration steps took beyond a normal step, i.e. the compilation), ``optimizer_s`` (the
first ``torch.optim`` optimizer of a process imports ``torch._dynamo``, about 0.9 s on a 2-core CPU, whether or not
anything is compiled: its constructor and ``step`` are wrapped in ``torch._disable_dynamo``), ``setup_s`` (data to the
device, score table, strategy), ``copies_s`` (counting near copies, :mod:`timebudget.dedup`), ``calibration_s`` (the
rest of calibration: its steps, the evaluation, tail and serialisation probes), ``folder_s`` (the run folder), and
``total_s``, process start to the start of training.

Compilation (``compile``) runs through inductor, whose on-disk caches (compiled FX graphs, AOTAutograd's joint
graphs, on CUDA also Triton kernels and autotuning results) make a repeated compilation a lookup. timebudget points
them (``TORCHINDUCTOR_CACHE_DIR``) at a folder kept between runs, one sub-folder per model and shape:
``compile_cache`` (default ``$XDG_CACHE_HOME/timebudget/compile``, else ``~/.cache/timebudget/compile``)
``/<model>-<sample shape>-b<batch>-<precision>[-cl]-<device>``; a ``TORCHINDUCTOR_CACHE_DIR`` the user exported
before the run is used as it is. Whether the cache was cold or warm is read from inductor's own hit and miss counters
and reported with the folder. Dynamo still traces the model in every process: a warm cache saves the code
generation and the C++/Triton compilation, not the tracing. torch's portable "mega-cache"
(``torch.compiler.save_cache_artifacts``) fills these same on-disk caches from one blob and is meant for moving them
to another machine; on one machine (or a shared file system) the folder itself is the cache, and copying the key's
folder moves it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

# A cache folder the user chose before timebudget ran is theirs: honoured, never replaced by a keyed folder.
_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

# inductor's counters (torch._dynamo.utils.counters) that tell a cache hit from a miss
_COUNTERS = {"fx_graph": ("inductor", "fxgraph_cache"), "aot_autograd": ("aot_autograd", "autograd_cache")}


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "timebudget" / "compile"


def cache_key(model: str, sample_shape: tuple[int, ...], batch_size: int, precision: str, channels_last: bool,
              device: str) -> str:
    """A readable folder name for one compiled training step: the same key, the same graphs."""
    shape = "x".join(str(d) for d in sample_shape)
    key = f"{model}-{shape}-b{batch_size}-{precision}{'-cl' if channels_last else ''}-{device}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", key)


class CompileCache:
    """The on-disk compile cache of one run: where it is, and after compiling, whether it was cold or warm."""

    def __init__(self, root: str | None, key: str) -> None:
        if _USER_CACHE_DIR:
            self.folder, self.chosen_by = Path(_USER_CACHE_DIR), "TORCHINDUCTOR_CACHE_DIR"
        else:
            self.folder = (Path(root).expanduser() if root else default_cache_root()).absolute() / key
            self.chosen_by = "compile_cache"
        self.key = key
        self._before: dict[str, dict[str, int]] = {}

    def activate(self) -> None:
        """Point inductor at the folder (it reads the variable at each compilation) and note its counters."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder)
        self._before = self._counts()

    @staticmethod
    def _counts() -> dict[str, dict[str, int]]:
        from torch._dynamo.utils import counters

        return {name: {what: counters[group][f"{prefix}_{what}"] for what in ("hit", "miss", "bypass")}
                for name, (group, prefix) in _COUNTERS.items()}

    def report(self) -> dict[str, Any]:
        """Hits and misses since :meth:`activate`; ``warm`` when every lookup hit, ``cold`` when none did."""
        after = self._counts()
        counts = {name: {what: after[name][what] - self._before[name][what] for what in after[name]}
                  for name in after}
        hits = sum(c["hit"] for c in counts.values())
        misses = sum(c["miss"] + c["bypass"] for c in counts.values())
        state = "warm" if hits and not misses else "cold" if misses and not hits else "partial" if hits else "unused"
        return {"state": state, "folder": str(self.folder), "key": self.key, "chosen_by": self.chosen_by, **counts}


class Startup:
    """The parts of the start-up, each the time since the previous mark; the first, ``imports_s``, runs from process
    start (the budget clock's start) to the construction of this object."""

    def __init__(self, start: float, now: Callable[[], float]) -> None:
        self.start, self.now = start, now
        self.last = now()
        self.parts: dict[str, float] = {"imports_s": self.last - start}
        self.compile_cache: CompileCache | None = None

    def mark(self, part: str) -> None:
        """Charge the time since the previous mark to ``part``."""
        t = self.now()
        self.parts[f"{part}_s"] = self.parts.get(f"{part}_s", 0.0) + t - self.last
        self.last = t

    def use_compile_cache(self, root: str | None, key: str) -> None:
        self.compile_cache = CompileCache(root, key)
        self.compile_cache.activate()

    def summary(self, training_started: float, calibration_steps: list[float]) -> dict[str, Any]:
        """The parts, ``total_s`` (process start to the start of training) and, when compiled, the cache's state.

        With compilation, the cold calibration steps' excess over the last (representative) step is compilation:
        it is moved from ``calibration_s`` to ``compile_s``."""
        parts = dict(self.parts)
        if self.compile_cache is not None and "calibration_s" in parts:
            in_steps = sum(max(0.0, t - calibration_steps[-1]) for t in calibration_steps[:-1])
            parts["compile_s"] = parts.get("compile_s", 0.0) + in_steps
            parts["calibration_s"] -= in_steps
        summary: dict[str, Any] = {**parts, "total_s": training_started - self.start,
                                   "compiled": self.compile_cache is not None}
        if self.compile_cache is not None:
            summary["compile_cache"] = self.compile_cache.report()
        return summary
