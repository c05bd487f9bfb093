"""Batched crop-and-flip augmentation: label-preserving shifts and mirrors, reproducible under a seed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from timebudget import augment


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 8, 10, generator=generator(99))


def windows(x: torch.Tensor, pad: int) -> list[list[torch.Tensor]]:
    """Every crop of the reflect-padded image that has the original size, per image."""
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    h, w = x.shape[2:]
    return [
        [padded[i, :, dy : dy + h, dx : dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        for i in range(len(x))
    ]


def test_crops_are_shifted_windows_of_the_reflect_padded_image() -> None:
    """Without flips, each output image is one of the (2 * pad + 1)^2 shifted views, and the shifts vary."""
    x = images()
    out = augment.crop_flip(x, generator(), pad=2, flip=False)
    assert out.shape == x.shape
    chosen = []
    for i, candidates in enumerate(windows(x, pad=2)):
        matches = [k for k, window in enumerate(candidates) if torch.equal(out[i], window)]
        assert matches, f"image {i} is no shifted window of its input"
        chosen.append(matches[0])
    assert len(set(chosen)) > 1


def test_flips_mirror_about_half_of_the_images() -> None:
    """Without crops, each image is itself or its left-right mirror; both occur."""
    x = images(64)
    out = augment.crop_flip(x, generator(), pad=0, flip=True)
    mirrored = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, x)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, x)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 16 < sum(mirrored) < 48


def test_augmentation_is_reproducible_under_a_seed() -> None:
    """A seeded run must see the same augmented batches; another seed, different ones."""
    x = images()
    first = augment.crop_flip(x, generator(1))
    assert torch.equal(first, augment.crop_flip(x, generator(1)))
    assert not torch.equal(first, augment.crop_flip(x, generator(2)))


def test_no_crop_and_no_flip_is_the_identity() -> None:
    x = images()
    assert torch.equal(augment.crop_flip(x, generator(), pad=0, flip=False), x)
