"""Precision, memory format and compile options are honoured or refused with a clear error, never ignored."""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from timebudget import accel
from timebudget.config import Config
from timebudget.errors import TimebudgetError
from timebudget.trainer import build_optimizer, train

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device, shown to the tests by TIMEBUDGET_TEST_CUDA=1")


@pytest.mark.parametrize(("precision", "probe"), [("bf16", "_is_mkldnn_bf16_supported"),
                                                  ("fp16", "_is_mkldnn_fp16_supported")])
def test_cpu_precision_follows_what_the_cpu_supports(
    monkeypatch: pytest.MonkeyPatch, precision: str, probe: str
) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, probe, lambda: False)
    with pytest.raises(TimebudgetError, match=f"precision {precision} is not supported"):
        accel.check_precision(precision, CPU)
    monkeypatch.setattr(torch.ops.mkldnn, probe, lambda: True)
    accel.check_precision(precision, CPU)


def test_fp32_is_always_accepted_and_autocast_is_a_no_op() -> None:
    accel.check_precision("fp32", CPU)
    with accel.autocast("fp32", CPU)():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_autocast_computes_in_bf16() -> None:
    with accel.autocast("bf16", CPU)():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_only_fp16_scales_the_loss() -> None:
    assert not accel.grad_scaler("bf16", CPU).is_enabled()
    assert accel.grad_scaler("fp16", CPU).is_enabled()


def test_channels_last_is_refused_for_tabular_models() -> None:
    with pytest.raises(TimebudgetError, match="channels_last applies to image models only"):
        accel.memory_format(nn.Linear(3, 2), "true", image=False, device=CPU)
    conv = nn.Conv2d(3, 4, 3)
    assert accel.memory_format(conv, "true", image=True, device=CPU) == torch.channels_last
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("setting", "image", "device", "faster_nhwc", "nhwc"), [
    ("auto", True, "cpu", True, True),  # the built-in cnn on the CPU: the measured case
    ("auto", True, "cuda", True, False),  # not measured on CUDA
    ("auto", True, "cpu", False, False),  # airnet, resnet18, a user's module:function
    ("auto", False, "cpu", True, False),  # tabular: never, and no error under auto
    ("false", True, "cpu", True, False),
    ("true", True, "cuda", False, True),  # asked for: always
])
def test_channels_last_auto_picks_nhwc_only_where_it_was_measured_faster(
    setting: str, image: bool, device: str, faster_nhwc: bool, nhwc: bool
) -> None:
    conv = nn.Conv2d(3, 4, 3)  # stays on the CPU: the format is decided from the device's type alone
    fmt = accel.memory_format(conv, setting, image=image, device=torch.device(device), faster_nhwc=faster_nhwc)
    assert fmt == (torch.channels_last if nhwc else torch.contiguous_format)
    assert conv.weight.is_contiguous(memory_format=fmt) and conv.weight.is_contiguous() != nhwc


@pytest.mark.parametrize(("value", "expected"), [(True, "true"), (False, "false"), ("AUTO", "auto")])
def test_channels_last_accepts_booleans_and_auto(value: object, expected: str) -> None:
    assert Config(seconds=5, channels_last=value).validate().channels_last == expected  # type: ignore[arg-type]
    with pytest.raises(TimebudgetError, match="channels_last"):
        Config(seconds=5, channels_last="sometimes").validate()


def test_the_default_cnn_trains_in_nhwc_on_the_cpu_and_a_tabular_model_does_not(tmp_path) -> None:
    # the CPU named: the test is about the CPU's choice, and under TIMEBUDGET_TEST_CUDA=1 "auto" would pick the GPU
    image = train(Config(seconds=4, device="cpu", quiet=True, out=str(tmp_path / "digits"))).summary
    assert image["model"] == "cnn" and image["channels_last"] is True
    tabular = train(Config(seconds=4, device="cpu", data="synthetic", model="mlp", quiet=True,
                           out=str(tmp_path / "mlp"))).summary
    assert tabular["channels_last"] is False


def test_compile_refused_where_torch_cannot_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Windows not yet supported for torch.compile")

    monkeypatch.setattr(torch, "compile", refuse)
    with pytest.raises(TimebudgetError, match="torch cannot compile here"):
        accel.compile_module(nn.Linear(2, 2), True)


def test_a_compile_failure_at_the_first_step_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """torch.compile is lazy: backends fail at the first call, which the calibration step makes."""

    def broken_backend(model: nn.Module, **kwargs: object):
        def run(*args: object) -> None:
            raise RuntimeError("InductorError: no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_backend)
    with pytest.raises(TimebudgetError, match="compiling the training step failed"):
        train(Config(seconds=30, compile=True, quiet=True, out=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_cuda_is_refused_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TimebudgetError, match="CUDA is not available"):
        accel.resolve_device("cuda")
    assert accel.resolve_device("auto") == CPU


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without native bf16")
def test_bf16_channels_last_run_on_cpu_learns(tmp_path) -> None:
    s = train(Config(seconds=15, precision="bf16", channels_last=True, quiet=True, out=str(tmp_path / "r"))).summary
    assert s["precision"] == "bf16"
    assert s["test_metrics"]["accuracy"] > 0.5


@needs_cuda
@pytest.mark.parametrize("options", [{}, {"precision": "bf16", "channels_last": True}, {"compile": True},
                                     {"augment": True, "average_from": 0.5, "tta": True}])
def test_cuda_runs_end_before_the_deadline_and_learn(tmp_path, options: dict) -> None:
    budget = 60 if options.get("compile") else 15
    s = train(Config(seconds=budget, device="cuda", quiet=True, out=str(tmp_path / "r"), **options)).summary
    assert s["device"].startswith("cuda")
    assert s["elapsed_s"] <= budget
    assert s["test_metrics"]["accuracy"] > 0.9


@needs_cuda
def test_cuda_timeline_dates_step_ends_on_the_host_clock_without_draining_the_queue() -> None:
    """Marks after queued kernels are read back only once the GPU reaches them; ``collect(n)`` returns what has
    finished without waiting while at most n are unfinished, and ``collect(0)`` waits for all."""
    timeline = accel.CudaTimeline(time.monotonic, torch.device("cuda"))
    before = time.monotonic()
    for _ in range(3):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds of GPU time per "step"
        timeline.mark()
    assert timeline.collect(max_unfinished=3) == []  # the first still runs: nothing finished, no wait
    ends = timeline.collect(max_unfinished=0)
    after = time.monotonic()
    assert len(ends) == 3 and before < ends[0] < ends[1] < ends[2] <= after
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    assert max(gaps) < 1.5 * min(gaps)  # equal kernels, equal steps
    assert timeline.collect(max_unfinished=0) == []


class FakeGpu:
    """A simulated CUDA device for :class:`accel.CudaTimeline` on any machine: work queues behind what is queued,
    an event finishes when the device reaches it, and the host clock ``t`` moves only when the host waits (or the
    test moves it)."""

    def __init__(self, t: float = 100.0) -> None:
        self.t = self.busy_until = t

    def now(self) -> float:
        return self.t

    def wait(self, until: float) -> None:
        self.t = max(self.t, until)

    def queue(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, self.t) + seconds

    def reached(self) -> float:
        """When the device reaches an event recorded now: after the work queued so far."""
        return max(self.busy_until, self.now())

    def synchronize(self, device: object = None) -> None:
        self.wait(self.busy_until)

    def event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "Event", self.event)
        monkeypatch.setattr(torch.cuda, "synchronize", self.synchronize)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)


class FakeEvent:
    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu, self.at = gpu, math.inf

    def record(self, stream: object = None) -> None:
        self.at = self.gpu.reached()

    def query(self) -> bool:
        return self.gpu.now() >= self.at

    def synchronize(self) -> None:
        self.gpu.wait(self.at)

    def elapsed_time(self, end: FakeEvent) -> float:
        return (end.at - self.at) * 1000


class LaggingGpu(FakeGpu):
    """On real time: a CPU run seen through a CUDA timeline whose events finish ``lag`` seconds after the host records
    them, in order: the trainer's asynchronous path (late step ends, queued steps, waits, pauses)."""

    def __init__(self, lag: float) -> None:
        super().__init__(time.monotonic())
        self.lag = lag

    def now(self) -> float:
        return time.monotonic()

    def wait(self, until: float) -> None:
        time.sleep(max(0.0, until - time.monotonic()))

    def reached(self) -> float:
        self.busy_until = max(time.monotonic() + self.lag, self.busy_until)
        return self.busy_until


def test_cuda_timeline_logic_on_a_simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeline's bookkeeping without a GPU: finished steps are dated from the anchor on the host's scale, nothing
    is waited for while at most n steps are unfinished, beyond that only the oldest is waited for, and ``collect(0)``
    drains the queue and re-anchors."""
    gpu = FakeGpu()
    gpu.install(monkeypatch)
    created: list[FakeEvent] = []
    monkeypatch.setattr(torch.cuda, "Event", lambda enable_timing=False: created.append(FakeEvent(gpu)) or created[-1])
    timeline = accel.CudaTimeline(lambda: gpu.t, torch.device("cuda"))

    def launch(steps: int) -> None:
        for _ in range(steps):
            gpu.queue(0.1)  # a step's kernels: 0.1 s of device time
            gpu.t += 0.001  # the host returns at once
            timeline.mark()

    launch(3)
    assert timeline.collect(max_unfinished=3) == [] and gpu.t == pytest.approx(100.003)  # no wait
    gpu.t = 100.15  # the host did other work meanwhile; the first step has finished
    assert timeline.collect(max_unfinished=3) == pytest.approx([100.1])
    launch(3)  # now 5 unfinished, ending at 100.2 ... 100.6
    assert timeline.collect(max_unfinished=4) == pytest.approx([100.2])
    assert gpu.t == pytest.approx(100.2)  # waited for the oldest only; the others still queued
    assert timeline.collect(max_unfinished=0) == pytest.approx([100.3, 100.4, 100.5, 100.6])
    assert gpu.t == pytest.approx(100.6) and timeline.anchor_t == pytest.approx(100.6)
    assert timeline.collect(max_unfinished=0) == []
    launch(1)  # after the re-anchor, ends are dated from the new anchor
    assert timeline.collect(max_unfinished=0) == pytest.approx([100.7])
    anchors = 4  # the first and one per collect(0)
    assert len(created) == anchors + 5  # 7 steps marked, but read events are recorded again: at most 5 at once


def test_a_run_timed_through_a_lagging_device_timeline_ends_on_time(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The whole loop on the asynchronous path: step ends arrive late (several steps queued at times), yet the run
    ends before its deadline, the learning rate reaches about zero, and every step's time is accounted."""
    LaggingGpu(lag=0.03).install(monkeypatch)
    timelines: list[accel.CudaTimeline] = []
    monkeypatch.setattr(accel, "timeline", lambda device, now: timelines.append(
        accel.CudaTimeline(now, torch.device("cuda"))) or timelines[-1])
    start = time.monotonic()
    result = train(Config(seconds=4, device="cpu", quiet=True, out=str(tmp_path / "r")), start=start)
    s = result.summary
    assert time.monotonic() - start <= 4 and s["elapsed_s"] <= 4
    assert len(timelines) == 1 and not timelines[0].unfinished  # the run was timed through it, and drained it
    assert s["steps"] > 50 and s["test_metrics"]["accuracy"] > 0.8
    assert s["final_lr"] < 0.1 * result.config.lr  # real time: at load 5 on 2 cores the last step ended 7% early
    assert 0.5 * (4 - s["startup_s"] - s["tail_s"]) < s["train_s"] <= 4 - s["startup_s"]


def test_the_optimizer_update_is_fused_where_torch_has_the_kernels() -> None:
    """One fused kernel per parameter group instead of a Python loop over tensors: host time every step."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    expected = torch.__version__ >= "2.4"
    for name in ("sgd", "adamw"):
        optimizer = build_optimizer(Config(seconds=1, optimizer=name, lr=0.1, weight_decay=0.01), model)
        assert bool(optimizer.defaults.get("fused")) == expected
    assert accel.optimizer_options([torch.zeros(2, dtype=torch.long)]) == {}  # no fused kernel for integer tensors
