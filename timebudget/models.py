"""Models: registered names sized from the data, or a user's ``module:function``.

``cnn`` (default for images) stacks conv-BN-ReLU-max-pool stages, halving the resolution until about 4x4, then a
hidden layer: small enough for a CPU budget, and it adapts to 8x8 digits as well as 32x32 CIFAR. ``mlp`` (default for
tabular classification) is two hidden layers with BatchNorm, ``mlp-nobn`` (default for tabular regression) the same
without it. ``resnet18`` is torchvision's, with the 3x3 stride-1 stem used for 32x32
inputs (no max-pool), as in the CIFAR literature. ``airnet`` is a compact residual net in the spirit of the CIFAR-10
speed-run codes (a ResNet-9-like stack of conv-pool stages with residual pairs and a scaled linear head), the model of
``configs/cifar10-fast.yaml``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .errors import TimebudgetError
from .imports import import_callable

NAMES = ("cnn", "mlp", "resnet18", "airnet", "mlp-nobn")
# The models whose training step is faster on the CPU in NHWC (channels_last: auto turns it on for them there):
# ``cnn`` 1.3-1.9x (benchmarks/memory_format.py); a step of airnet or resnet18 was no faster (a scratch check).
FASTER_NHWC_ON_CPU = ("cnn",)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def cnn(input_shape: tuple[int, ...], num_outputs: int, width: int = 32, hidden: int = 128) -> nn.Module:
    """Conv-BN-ReLU-max-pool stages doubling the width while halving the resolution down to ~4x4 (at least two
    stages: 8x8 digits end at 2x2), then a hidden layer and a linear head: the textbook small CNN (two stages of 32 and
    64 channels on 16x16 inputs). On digits, one stage (the earlier rule for 8x8) reached 98.1% at 5 s where two reach
    98.5% (4 seeds, ``benchmarks/defaults.py``'s harness).

    Pooling after every conv keeps a step cheap (most convolutions run at reduced resolution); flattening the last
    feature map keeps where a stroke is, which a global max-pool threw away, and keeps the logits' scale tame: the
    former global-max-pool head diverged at SGD lr 0.1 on distorted 16x16 digits (issue 11).

    The hidden layer is batch-normalised too. Without it, one large early step at SGD lr 0.1 can push every hidden
    unit's pre-activation below zero for all inputs: the ReLUs die, the logits become a constant, and the loss sits at
    ln(classes) for the rest of the run (the textbook loop does this on ``cifar-digits`` within 25 steps). BatchNorm
    centres each unit on the batch, so no unit can be negative for a whole batch and the collapse cannot happen.
    """
    if len(input_shape) != 3:
        raise TimebudgetError(f"model cnn needs image inputs (C, H, W), got sample shape {tuple(input_shape)}")
    channels, height, wide = input_shape
    size = min(height, wide)
    layers: list[nn.Module] = []
    cin, cout = channels, width
    for _ in range(max(2, round(math.log2(max(size, 1))) - 2)):
        layers += [_conv_bn(cin, cout), nn.MaxPool2d(2) if size >= 2 else nn.Identity()]
        cin, cout = cout, 2 * cout
        if size >= 2:
            size, height, wide = size // 2, height // 2, wide // 2
    layers += [nn.Flatten(), nn.Linear(cin * height * wide, hidden, bias=False), nn.BatchNorm1d(hidden),
               nn.ReLU(inplace=True), nn.Linear(hidden, num_outputs)]
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Scale(nn.Module):
    """A fixed output scale: keeps the initial logits small, which the speed-run codes found trains faster."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def airnet(input_shape: tuple[int, ...], num_outputs: int, widths: tuple[int, ...] = (64, 128, 256)) -> nn.Module:
    """Stem, then per width: conv, max-pool, and a residual pair of convs; global max-pool and a scaled head."""
    if len(input_shape) != 3:
        raise TimebudgetError(f"model airnet needs image inputs (C, H, W), got sample shape {tuple(input_shape)}")
    layers: list[nn.Module] = [_conv_bn(input_shape[0], widths[0] // 2)]
    cin = widths[0] // 2
    for width in widths:
        layers += [_conv_bn(cin, width), nn.MaxPool2d(2), _Residual(width)]
        cin = width
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(cin, num_outputs, bias=False), _Scale(0.125)]
    return nn.Sequential(*layers)


def mlp(input_shape: tuple[int, ...], num_outputs: int, hidden: int = 256, norm: bool = True) -> nn.Module:
    """Two hidden ReLU layers, each after BatchNorm when ``norm`` (the default for classification)."""
    features = math.prod(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]
    for cin in (features, hidden):
        layers += [nn.Linear(cin, hidden), *([nn.BatchNorm1d(hidden)] if norm else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(hidden, num_outputs))


def mlp_nobn(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The MLP without BatchNorm, the default for regression: on diabetes, BatchNorm's batch noise cost 7% of MAE
    against the same MLP without it at 20 passes (issue 11)."""
    return mlp(input_shape, num_outputs, norm=False)


def resnet18(input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if len(input_shape) != 3:
        raise TimebudgetError(f"model resnet18 needs image inputs (C, H, W), got sample shape {tuple(input_shape)}")
    from torchvision.models import resnet18 as tv_resnet18

    model = tv_resnet18(weights=None, num_classes=num_outputs)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


_MODELS = {"cnn": cnn, "mlp": mlp, "mlp-nobn": mlp_nobn, "resnet18": resnet18, "airnet": airnet}


def default(kind: str, task: str) -> str:
    """The model a run uses when none is named: ``cnn`` for images, ``mlp`` for tables (``mlp-nobn`` to regress)."""
    if kind == "image":
        return "cnn"
    return "mlp" if task == "classification" else "mlp-nobn"


def build(spec: str | None, input_shape: tuple[int, ...], num_outputs: int, kind: str) -> nn.Module:
    """``spec`` is a registered name, ``module:function`` (called with ``input_shape`` and ``num_outputs``), or
    ``None`` for the default of the data kind."""
    if spec is None:
        spec = "cnn" if kind == "image" else "mlp"
    if spec in _MODELS:
        return _MODELS[spec](tuple(input_shape), num_outputs)
    if ":" in spec:
        model = import_callable(spec, "--model")(input_shape=tuple(input_shape), num_outputs=num_outputs)
        if not isinstance(model, nn.Module):
            raise TimebudgetError(f"--model {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
        return model
    raise TimebudgetError(f"unknown model {spec!r}; allowed: {', '.join(NAMES)}, or module:function")
