"""The resident and DataLoader paths must feed training identically: same batches for the same order."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from timebudget import sampler
from timebudget.batches import Batches, choose_path
from timebudget.data import ArrayDataset


class _Plain(Dataset):
    """A user dataset (not an ArrayDataset): items built on access, as torchvision datasets do."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i].clone(), int(self.y[i])


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _collect(batches: Batches, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    order = sampler.epoch_order(len(batches), torch.Generator().manual_seed(seed))
    return list(batches.iterate(sampler.batches(order, 16)))


def test_resident_and_loader_paths_give_the_same_batches() -> None:
    x, y = _data()
    cpu = torch.device("cpu")
    resident = Batches(ArrayDataset(x, y), cpu, (3, 8, 8), path="resident")
    loader = Batches(ArrayDataset(x, y), cpu, (3, 8, 8), path="loader")
    assert (resident.path, loader.path) == ("resident", "loader")
    got_r, got_l = _collect(resident, 3), _collect(loader, 3)
    assert len(got_r) == len(got_l) == 3  # 50 = 3 x 16 + a trailing 2, dropped as under half a batch
    for (xr, yr, ir), (xl, yl, il) in zip(got_r, got_l):
        assert torch.equal(ir, il)
        assert torch.equal(xr, xl) and torch.equal(yr, yl)
        assert torch.equal(xr, x[ir]) and torch.equal(yr, y[ir])


def test_a_different_seed_gives_a_different_order() -> None:
    x, y = _data()
    b = Batches(ArrayDataset(x, y), torch.device("cpu"), (3, 8, 8))
    assert not torch.equal(_collect(b, 0)[0][2], _collect(b, 1)[0][2])


def test_auto_path_keeps_tensors_resident_and_streams_other_datasets() -> None:
    x, y = _data()
    cpu = torch.device("cpu")
    assert choose_path("auto", ArrayDataset(x, y), cpu) == "resident"
    assert choose_path("auto", _Plain(x, y), cpu) == "loader"
    assert choose_path("loader", ArrayDataset(x, y), cpu) == "loader"


def test_forcing_resident_materialises_a_user_dataset() -> None:
    x, y = _data()
    streamed = Batches(_Plain(x, y), torch.device("cpu"), (3, 8, 8), path="loader")
    resident = Batches(_Plain(x, y), torch.device("cpu"), (3, 8, 8), path="resident")
    for (xs, ys, i_s), (xr, yr, i_r) in zip(_collect(streamed, 5), _collect(resident, 5)):
        assert torch.equal(i_s, i_r) and torch.equal(xs, xr) and torch.equal(ys, yr)


def test_channels_last_batches_hold_the_same_values() -> None:
    x, y = _data()
    b = Batches(ArrayDataset(x, y), torch.device("cpu"), (3, 8, 8), memory_format=torch.channels_last)
    xb, _, idx = _collect(b, 0)[0]
    assert xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(xb, x[idx])
