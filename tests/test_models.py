"""Models: registered names sized from one sample's shape, and users' ``module:function`` models."""
from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from torch import nn

from timebudget import models
from timebudget.errors import TimebudgetError

USER_MODELS = """
    from torch import nn

    calls = []

    def tiny(**kwargs):
        calls.append(kwargs)
        return nn.Sequential(nn.Flatten(), nn.Linear(kwargs["input_shape"][0], kwargs["num_outputs"]))

    def not_a_model(input_shape, num_outputs):
        return "a model"
"""


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("cnn", (1, 8, 8)),
        ("cnn", (3, 32, 32)),
        ("cnn", (1, 28, 28)),
        ("cnn", (3, 16, 16)),
        ("resnet18", (3, 32, 32)),
        ("resnet18", (1, 8, 8)),
        ("airnet", (1, 8, 8)),
        ("mlp", (5,)),
        ("mlp", (1, 8, 8)),
    ],
)
def test_registered_models_give_one_output_per_class_and_train_end_to_end(name: str, shape: tuple[int, ...]) -> None:
    """Sized from the sample shape alone, each model maps a batch to (batch, classes) and every parameter gets a
    gradient (nothing is accidentally detached or unused)."""
    model = models.build(name, shape, 7, "image" if len(shape) == 3 else "tabular")
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 7)
    out.square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


@pytest.mark.parametrize(("shape", "pooled"), [((1, 8, 8), 2), ((3, 16, 16), 4), ((3, 32, 32), 4), ((1, 28, 28), 3)])
def test_cnn_halves_the_resolution_to_about_four_pixels(shape: tuple[int, ...], pooled: int) -> None:
    """The default image model adapts its depth to the input: at least two stages (8x8 digits end at 2x2, as the
    textbook two-stage CNN has them), large images reduced to a few pixels before the hidden layer."""
    model = models.cnn(shape, 10)
    seen: list[tuple[int, ...]] = []
    flatten = next(m for m in model.modules() if isinstance(m, nn.Flatten))
    flatten.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[2:])))
    model(torch.randn(2, *shape))
    assert seen == [(pooled, pooled)]


def test_cnn_hidden_units_cannot_all_die() -> None:
    """The collapse behind issue 11's cifar-digits failure: one large step at SGD lr 0.1 pushed every hidden unit of
    the textbook CNN below zero for all inputs, so the logits became a constant and no gradient came back. Here the
    hidden layer's weights are made to do exactly that (non-positive weights on non-negative pooled ReLU features);
    with the hidden layer batch-normalised the logits still differ between samples and the convolutions still learn."""
    torch.manual_seed(0)
    model = models.cnn((3, 32, 32), 10)
    hidden = [m for m in model if isinstance(m, nn.Linear)][0]
    with torch.no_grad():
        hidden.weight.copy_(-hidden.weight.abs() - 0.01)
    model.train()
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    out = model(x)
    assert out.std(0).mean() > 1e-3, "the logits are the same for every sample: the hidden units are dead"
    nn.functional.cross_entropy(out, y).backward()
    first_conv = model[0][0]
    assert first_conv.weight.grad.abs().sum() > 0, "no gradient reaches the first convolution"


def test_resnet18_has_the_small_image_stem() -> None:
    """32x32 inputs need the 3x3 stride-1 stem and no max-pool, or the first layers throw away most pixels."""
    model = models.build("resnet18", (1, 32, 32), 10, "image")
    assert (model.conv1.in_channels, model.conv1.kernel_size, model.conv1.stride) == (1, (3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)


@pytest.mark.parametrize(("kind", "shape", "has_conv"), [("image", (1, 8, 8), True), ("tabular", (5,), False)])
def test_default_model_follows_the_data_kind(kind: str, shape: tuple[int, ...], has_conv: bool) -> None:
    model = models.build(None, shape, 3, kind)
    assert any(isinstance(m, nn.Conv2d) for m in model.modules()) == has_conv
    assert model(torch.randn(2, *shape)).shape == (2, 3)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "airnet"])
def test_image_models_refuse_tabular_samples(name: str) -> None:
    with pytest.raises(TimebudgetError, match=rf"model {name} needs image inputs \(C, H, W\), got sample shape \(5,\)"):
        models.build(name, (5,), 3, "tabular")


def test_user_model_is_called_with_the_sample_shape_and_output_count(
    user_module: Callable[[str, str], ModuleType],
) -> None:
    """The documented contract: keyword arguments ``input_shape`` (a tuple) and ``num_outputs``; the returned module
    is used as it is."""
    module = user_module("user_models", USER_MODELS)
    model = models.build("user_models:tiny", [6], 4, "tabular")
    assert module.calls == [{"input_shape": (6,), "num_outputs": 4}]
    assert model(torch.randn(3, 6)).shape == (3, 4)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("user_models:not_a_model", "--model 'user_models:not_a_model' must return a torch.nn.Module, got str"),
        ("user_models:absent", "module 'user_models' has no function 'absent'"),
        ("missing_models_xyz:tiny", "cannot import module 'missing_models_xyz'"),
        ("transformer", "unknown model 'transformer'; allowed: cnn, mlp, resnet18"),
    ],
)
def test_bad_model_spec_is_a_clear_error(user_module: Callable[[str, str], ModuleType], spec: str, needle: str) -> None:
    user_module("user_models", USER_MODELS)
    with pytest.raises(TimebudgetError, match=re.escape(needle)):
        models.build(spec, (6,), 4, "tabular")
