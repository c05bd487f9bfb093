"""Device, precision and compilation: what makes a step fast, each option accepted or refused clearly, never
silently ignored.

- ``precision``: ``bf16`` or ``fp16`` autocast (``fp16`` with a gradient scaler); refused where the hardware cannot
  run it (bf16 on a GPU or CPU without bf16 support, fp16 on a CPU whose oneDNN lacks it).
- ``channels_last``: the NHWC memory format, which tensor-core convolutions prefer and oneDNN's CPU convolution,
  pooling and BatchNorm kernels run faster in (image models only; ``auto``: on for the built-in ``cnn`` on the CPU).
- ``compile``: ``torch.compile`` of the training module. Compilation happens in the trainer's calibration steps,
  so its cost is measured and charged to the budget and never mistaken for a normal step.
- :class:`CudaTimeline`: when CUDA finishes each step, from events read without waiting, for the budget clock.
"""
from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .errors import TimebudgetError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TimebudgetError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick the fastest kernels once
    return device


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot run, with the reason and the alternatives."""
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise TimebudgetError("precision bf16 is not supported by this GPU; use fp16 or fp32")
        return
    if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise TimebudgetError("precision bf16 is not supported by this CPU (no native bf16 in oneDNN); use fp32")
    if precision == "fp16" and not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        raise TimebudgetError("precision fp16 is not supported on this CPU; use bf16 (if supported) or fp32")


def autocast(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A factory of autocast contexts for the forward pass (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = _DTYPES[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's range); disabled scalers pass through at no cost."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


# torch has fused SGD and AdamW kernels for these devices from 2.4 on (CUDA-only before, for fewer optimizers)
_FUSED_DEVICES = ("cpu", "cuda") if torch.__version__ >= "2.4" else ()


def optimizer_options(params: list[torch.Tensor]) -> dict[str, Any]:
    """``fused``: the whole update of a parameter group in one kernel instead of a Python loop of per-tensor
    operations (CPU) or several multi-tensor launches (CUDA); on the digits CNN the CPU update took about 2.5x less
    host time. Only where torch has the fused kernels: floating-point parameters on the CPU or CUDA, torch 2.4+."""
    fused = bool(params) and all(p.device.type in _FUSED_DEVICES and p.is_floating_point() for p in params)
    return {"fused": True} if fused else {}


def memory_format(model: nn.Module, setting: str, image: bool, device: torch.device, faster_nhwc: bool = False
                  ) -> torch.memory_format:
    """The memory format of the model and its input batches; the model is converted in place.

    ``auto`` picks NHWC on the CPU for a model known to run faster in it there (``faster_nhwc``: the built-in ``cnn``,
    whose whole runs trained 1.30x the samples per second on digits, 1.49x on 3x16x16 and 1.90x on 3x32x32 images in
    NHWC, ``benchmarks/memory_format.py``), and NCHW otherwise: ``airnet`` and ``resnet18`` were no faster on the CPU, a
    user's own model may call ``x.view(len(x), -1)``, which fails on an NHWC tensor, and CUDA was not measured.
    ``true`` asks for NHWC anyway."""
    if setting == "auto":
        setting = "true" if image and faster_nhwc and device.type == "cpu" else "false"
    if setting == "false":
        return torch.contiguous_format
    if not image:
        raise TimebudgetError("channels_last applies to image models only; this data is tabular")
    model.to(memory_format=torch.channels_last)
    return torch.channels_last


def compile_module(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile`` the module for training; evaluation keeps the eager module (same parameters), so the
    final evaluation never pays for a second compilation."""
    if not enabled:
        return model
    try:
        return torch.compile(model, dynamic=False)
    except Exception as exc:  # torch refuses at once on unsupported platforms / Python versions
        raise TimebudgetError(f"compile: torch cannot compile here ({exc}); run without --set compile=true") from None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, which runs synchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HostCopy:
    """A value on its way to the host without a wait: on CUDA the copy is queued behind the kernels that compute it
    (into pinned memory) and an event tells when it has arrived; on the CPU it is there at once."""

    def __init__(self, value: torch.Tensor) -> None:
        self.value = value.to("cpu", non_blocking=True)
        self.arrived = torch.cuda.Event() if value.is_cuda else None
        if self.arrived is not None:
            self.arrived.record()

    def ready(self) -> bool:
        """Whether :meth:`get` would return without waiting."""
        return self.arrived is None or self.arrived.query()

    def get(self) -> float:
        """The value; waits for the copy if it has not arrived (call :meth:`ready` first to never wait)."""
        if self.arrived is not None:
            self.arrived.synchronize()
        return float(self.value)


class CudaTimeline:
    """Step ends on the CUDA stream, on the host clock's scale, for :class:`timebudget.clock.BudgetClock`.

    Each mark is a timing event recorded after a step's kernels. Finished events are found with a non-blocking query
    and dated by their GPU-measured distance from an anchor event whose host time is known (recorded on an idle
    device), so reading a step's end never drains the queue. The anchor is renewed whenever the queue is drained
    anyway (``collect(0)``: a pause or the end of training), so GPU and host clocks never drift apart for long.
    """

    def __init__(self, now: Callable[[], float], device: torch.device) -> None:
        self.now, self.device = now, device
        self.stream = torch.cuda.current_stream(device)  # the one the training step's kernels are queued on
        self.unfinished: deque[torch.cuda.Event] = deque()
        self.spare: list[torch.cuda.Event] = []  # read events, recorded again: no event created and freed per step
        self._anchor()

    def _anchor(self) -> None:
        torch.cuda.synchronize(self.device)
        self.anchor = torch.cuda.Event(enable_timing=True)
        self.anchor.record(self.stream)
        self.anchor.synchronize()
        self.anchor_t = self.now()

    def mark(self) -> None:
        event = self.spare.pop() if self.spare else torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        self.unfinished.append(event)

    def collect(self, max_unfinished: int) -> list[float]:
        ends = []
        while self.unfinished and (len(self.unfinished) > max_unfinished or self.unfinished[0].query()):
            event = self.unfinished.popleft()
            event.synchronize()  # at once when the query said finished; else the wait for the oldest step
            ends.append(self.anchor_t + self.anchor.elapsed_time(event) / 1000)
            self.spare.append(event)
        if max_unfinished == 0:
            self._anchor()
        return ends


def timeline(device: torch.device, now: Callable[[], float]) -> CudaTimeline | None:
    """The clock's view of an asynchronous device; ``None`` where steps finish when the host returns (CPU)."""
    return CudaTimeline(now, device) if device.type == "cuda" else None
