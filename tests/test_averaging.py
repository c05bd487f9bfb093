"""Weight averaging: the EMA follows the trained model as torch's reference averaging does, buffers included."""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from timebudget.averaging import EMA


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


def train_steps(model: nn.Module, steps: int, after_each: list) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(5, 3, 8, 8, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for update in after_each:
            update()


def test_ema_matches_torch_averaged_model_on_weights_and_batchnorm_statistics() -> None:
    model = net()
    ours = EMA(model, decay=0.9)
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    reference.update_parameters(model)  # torch's first update copies; ours copies when created
    train_steps(model, 6, [ours.update, lambda: reference.update_parameters(model)])
    for (name, mine), theirs in zip(ours.module.state_dict().items(), reference.module.state_dict().values()):
        if mine.is_floating_point():  # torch also "averages" integer counters, rounding them; ours copies them
            torch.testing.assert_close(mine, theirs, msg=name)
    assert not torch.equal(ours.module[0].weight, model[0].weight)  # an average, not a copy
    assert int(ours.module[1].num_batches_tracked) == 6  # counters follow the model


def test_ema_is_a_detached_copy_that_starts_equal_and_takes_no_gradient() -> None:
    model = net()
    ema = EMA(model, decay=0.5)
    for mine, theirs in zip(ema.module.parameters(), model.parameters()):
        assert torch.equal(mine, theirs) and mine.data_ptr() != theirs.data_ptr()
        assert not mine.requires_grad
    with torch.no_grad():
        model[0].weight.add_(2.0)
    ema.update()
    torch.testing.assert_close(ema.module[0].weight, model[0].weight - 1.0)  # halfway with decay 0.5
