"""Hard, realistic data sets generated offline, saved in timebudget's ``.npz`` format for ``--data file.npz``.

Nothing can be downloaded where the benchmarks run, so these stand in for real sets of each data kind timebudget
supports, hard enough to separate training recipes:

- ``digits16``: scikit-learn's 8x8 digits upscaled to 16x16 grayscale (a USPS-sized set: 7,291 training and 2,007 test
  images), each with a random affine distortion (rotation, anisotropic scale, shear, translation), a random stroke
  width (thinned or thickened), random contrast and brightness, blur and pixel noise;
- ``digits28``: the same at 28x28 (MNIST-sized images, 8,000 training and 2,000 test by default);
- ``cifar-digits``: CIFAR-shaped 32x32 RGB uint8 images (N, H, W, C): a distorted digit, coloured and textured, on a
  cluttered background of smooth colour fields, strokes and faded fragments of other digits;
- ``classification``: ``make_classification`` with 40 informative and 20 redundant of 80 features, 20 classes in
  2 clusters each and 5% of labels flipped (train and test alike, as real label noise would be);
- ``regression``: ``make_regression`` with 100 features of which 30 informative, low effective rank (correlated
  features), plus a nonlinearity and noise of 20% of the signal;
- ``diabetes``: scikit-learn's diabetes (442 patients, 10 features; regression), a fixed 80/20 split;
- ``synthetic20k``: timebudget's built-in ``synthetic`` task (10 class prototypes of 3x16x16 plus unit noise) at 10x
  its rows (20,480 training, 2,048 test): for throughput benchmarks (``benchmarks/distributed.py``), where the
  built-in set's 2,048 rows make an epoch of two to eight steps, so per-epoch costs weigh as they would in no real run.

Training and test images are drawn from disjoint source digits (scikit-learn's digits split 80/20, stratified,
``random_state=0``, the split timebudget's own ``digits`` uses), so no test image is a distortion of a training one.
Everything is a pure function of ``seed``.

API, one function per set returning :class:`Split` (``x_train, y_train, x_test, y_test`` numpy arrays; integer labels
for classification, float targets for regression), and :func:`write_npz`::

    from benchmarks.hard_data import SETS, digits16, write_npz
    x_train, y_train, x_test, y_test = digits16(seed=0)
    write_npz("cifar-digits", "/tmp/cifar-digits.npz", seed=0)

Command line: ``python benchmarks/hard_data.py digits16 cifar-digits --out /tmp/sets --seed 0`` (all sets when none is
named).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


class Split(NamedTuple):
    """One data set as arrays, in the layout ``timebudget.data.from_npz`` reads."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


# --- digit images --------------------------------------------------------------------------------------------------
def _source_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits in [0, 1], split as timebudget's ``digits`` source splits them."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _affine(g: torch.Generator, n: int, scale: tuple[float, float], shift: float) -> torch.Tensor:
    """Random 2x3 inverse maps for ``affine_grid``: rotation +-18 degrees, anisotropic scale, shear, translation."""
    angle = _uniform(g, n, -0.32, 0.32)
    sx, sy = _uniform(g, n, *scale), _uniform(g, n, *scale)
    sy = sy * _uniform(g, n, 0.85, 1.15)  # aspect changes: narrow and wide handwriting
    shear = _uniform(g, n, -0.35, 0.35)
    tx, ty = _uniform(g, n, -shift, shift), _uniform(g, n, -shift, shift)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # forward map A = R @ Shear @ S; affine_grid wants output -> input coordinates, i.e. A^-1
    a = torch.stack([torch.stack([cos * sx, cos * shear * sy - sin * sy], -1),
                     torch.stack([sin * sx, sin * shear * sy + cos * sy], -1)], -2)
    inv = torch.linalg.inv(a)
    t = torch.stack([tx, ty], -1).unsqueeze(-1)
    return torch.cat([inv, -inv @ t], -1)


def _strokes(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-image stroke width at working size: eroded (thin pen), unchanged, or dilated once or twice (thick pen)."""
    width = torch.randint(-1, 3, (len(x),), generator=g)  # -1, 0, 1, 2 alike
    out = x.clone()
    dilated, eroded = F.max_pool2d(x, 3, 1, 1), -F.max_pool2d(-x, 3, 1, 1)
    twice = F.max_pool2d(dilated, 3, 1, 1)
    out[width == -1] = eroded[width == -1]
    out[width == 1] = dilated[width == 1]
    out[width == 2] = twice[width == 2]
    return out


def distorted_digits(
    images: np.ndarray, size: int, copies: int, g: torch.Generator, scale: tuple[float, float] = (0.7, 1.0)
) -> torch.Tensor:
    """``copies`` distorted renderings of each 8x8 digit at ``size`` x ``size``, grayscale ink in [0, 1], (N, 1, H, W).

    Rendered at twice the size and area-downsampled (anti-aliased strokes). ``scale`` is the digit's size relative to
    the frame (per axis).
    """
    work = 2 * size
    src = torch.as_tensor(images).unsqueeze(1).repeat_interleave(copies, 0)
    # sharpen the blurry 8x8 bilinear upscale back into strokes
    up = F.interpolate(src, size=(work, work), mode="bicubic", align_corners=False).clamp(0, 1)
    up = torch.sigmoid((up - 0.6) * 14.0)
    up = _strokes(up, g)
    theta = _affine(g, len(up), scale, shift=0.12)
    grid = F.affine_grid(theta, list(up.shape), align_corners=False)
    warped = F.grid_sample(up, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return F.avg_pool2d(warped, 2)


def _grayscale(images: np.ndarray, labels: np.ndarray, n: int, size: int, g: torch.Generator) -> tuple[np.ndarray, ...]:
    """``n`` noisy grayscale images (N, H, W) float32 in [0, 1]: ink with random contrast, blur, background, noise."""
    copies = math.ceil(n / len(images))
    x = distorted_digits(images, size, copies, g)
    y = np.repeat(labels, copies)
    keep = torch.randperm(len(x), generator=g)[:n]
    x, y = x[keep], y[keep.numpy()]
    k = len(x)
    blur = torch.rand(k, generator=g) < 0.3
    x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, 1)
    contrast = _uniform(g, k, 0.45, 1.0).view(-1, 1, 1, 1)
    background = _uniform(g, k, 0.0, 0.25).view(-1, 1, 1, 1)
    noise = _uniform(g, k, 0.03, 0.2).view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    x = (background + contrast * x + noise).clamp(0, 1)
    return x.squeeze(1).numpy().astype(np.float32), y.astype(np.int64)


def digits_images(size: int, n_train: int, n_test: int, seed: int = 0) -> Split:
    """Distorted grayscale digits at ``size`` x ``size`` from disjoint train/test source digits."""
    g = torch.Generator().manual_seed(seed)
    src_x_train, src_y_train, src_x_test, src_y_test = _source_digits()
    x_train, y_train = _grayscale(src_x_train, src_y_train, n_train, size, g)
    x_test, y_test = _grayscale(src_x_test, src_y_test, n_test, size, g)
    return Split(x_train, y_train, x_test, y_test)


def digits16(seed: int = 0, n_train: int = 7291, n_test: int = 2007) -> Split:
    """USPS-sized: 16x16 grayscale in [0, 1], 7,291 training and 2,007 test images, 10 classes."""
    return digits_images(16, n_train, n_test, seed)


def digits28(seed: int = 0, n_train: int = 8000, n_test: int = 2000) -> Split:
    """MNIST-shaped: 28x28 grayscale in [0, 1], 10 classes."""
    return digits_images(28, n_train, n_test, seed)


# --- CIFAR-shaped colour images ------------------------------------------------------------------------------------
def _smooth_field(g: torch.Generator, n: int, size: int, coarse: int) -> torch.Tensor:
    """Low-frequency random colour fields (N, 3, size, size) in [0, 1]."""
    field = torch.rand(n, 3, coarse, coarse, generator=g)
    return F.interpolate(field, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _texture(g: torch.Generator, n: int, size: int) -> torch.Tensor:
    """Per-image stripes at a random angle and frequency, or fine noise: (N, 1, size, size) in [0, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angle = _uniform(g, n, 0, math.pi).view(-1, 1, 1)
    freq = _uniform(g, n, 3, 12).view(-1, 1, 1)
    stripes = 0.5 + 0.5 * torch.sin(freq * (xs * torch.cos(angle) + ys * torch.sin(angle)) * math.pi)
    grain = torch.rand(n, size, size, generator=g)
    use_grain = (torch.rand(n, generator=g) < 0.4).view(-1, 1, 1)
    return torch.where(use_grain, grain, stripes).unsqueeze(1)


def _clutter(g: torch.Generator, n: int, size: int, distractors: torch.Tensor) -> torch.Tensor:
    """Backgrounds: smooth colour fields, textured, with random line strokes and faded fragments of other digits."""
    bg = 0.7 * _smooth_field(g, n, size, 4) + 0.3 * _smooth_field(g, n, size, 12)
    bg = bg * (0.75 + 0.25 * _texture(g, n, size))
    # 3 random line strokes per image, each a thin band around a random line
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    for _ in range(3):
        angle = _uniform(g, n, 0, math.pi).view(-1, 1, 1)
        offset = _uniform(g, n, -0.9, 0.9).view(-1, 1, 1)
        dist = (xs * torch.cos(angle) + ys * torch.sin(angle) - offset).abs()
        band = (dist < _uniform(g, n, 0.02, 0.08).view(-1, 1, 1)).float().unsqueeze(1)
        colour = torch.rand(n, 3, 1, 1, generator=g)
        bg = bg * (1 - 0.8 * band) + 0.8 * band * colour
    # a faded, shifted fragment of another digit: the net must find the real one
    pick = torch.randint(0, len(distractors), (n,), generator=g)
    fragment = torch.roll(distractors[pick], shifts=(size // 3, -size // 3), dims=(2, 3))
    colour = torch.rand(n, 3, 1, 1, generator=g)
    alpha = _uniform(g, n, 0.15, 0.45).view(-1, 1, 1, 1)
    return bg * (1 - alpha * fragment) + alpha * fragment * colour


def _colour_digits(
    images: np.ndarray, labels: np.ndarray, n: int, size: int, g: torch.Generator
) -> tuple[np.ndarray, ...]:
    copies = math.ceil(n / len(images))
    ink = distorted_digits(images, size, copies, g, scale=(0.6, 0.9))
    y = np.repeat(labels, copies)
    keep = torch.randperm(len(ink), generator=g)[:n]
    ink, y = ink[keep], y[keep.numpy()]
    distractors = distorted_digits(images, size, 1, g, scale=(0.6, 0.9))
    bg = _clutter(g, n, size, distractors)
    # the digit: a colour, modulated by its own texture, drawn with random opacity
    # mostly a colour far from the local background (its complement, jittered), sometimes any colour
    local = F.avg_pool2d(bg, 9, 1, 4)
    colour = torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.75,
                         (1 - local + 0.3 * torch.randn(n, 3, 1, 1, generator=g)).clamp(0, 1),
                         torch.rand(n, 3, 1, 1, generator=g))
    fg = colour * (0.6 + 0.4 * _texture(g, n, size))
    alpha = _uniform(g, n, 0.65, 1.0).view(-1, 1, 1, 1) * ink
    x = bg * (1 - alpha) + fg * alpha
    x = x + _uniform(g, n, 0.02, 0.08).view(-1, 1, 1, 1) * torch.randn(x.shape, generator=g)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return x.numpy(), y.astype(np.int64)


def cifar_digits(seed: int = 0, n_train: int = 6000, n_test: int = 2000) -> Split:
    """CIFAR-shaped: 32x32 RGB uint8 (N, H, W, C), a coloured textured digit on clutter, 10 classes."""
    g = torch.Generator().manual_seed(seed)
    src_x_train, src_y_train, src_x_test, src_y_test = _source_digits()
    x_train, y_train = _colour_digits(src_x_train, src_y_train, n_train, 32, g)
    x_test, y_test = _colour_digits(src_x_test, src_y_test, n_test, 32, g)
    return Split(x_train, y_train, x_test, y_test)


# --- tabular -------------------------------------------------------------------------------------------------------
def _split(x: np.ndarray, y: np.ndarray, seed: int, stratify: bool) -> Split:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y if stratify else None
    )
    return Split(x_train, y_train, x_test, y_test)


def classification(seed: int = 0, n_samples: int = 12000) -> Split:
    """80 features (40 informative, 20 redundant, 20 noise), 20 classes of 2 clusters each, 5% labels flipped."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n_samples, n_features=80, n_informative=40, n_redundant=20, n_repeated=0, n_classes=20,
        n_clusters_per_class=2, class_sep=1.5, flip_y=0.05, random_state=seed,
    )
    return _split(x.astype(np.float32), y.astype(np.int64), seed, stratify=True)


def regression(seed: int = 0, n_samples: int = 10000) -> Split:
    """100 correlated features (effective rank 20), 30 informative, a nonlinearity a linear model cannot fit, and
    noise of 20% of the signal's standard deviation."""
    from sklearn.datasets import make_regression

    x, y = make_regression(
        n_samples=n_samples, n_features=100, n_informative=30, effective_rank=20, tail_strength=0.4, noise=0.0,
        random_state=seed,
    )
    x = x / x.std(0)  # make_regression's low-rank features are tiny; unit scale keeps the signal visible in y
    y = y + 0.5 * y.std() * np.tanh(4.0 * x[:, 0]) * np.sign(x[:, 1])
    y = y + 0.2 * y.std() * np.random.default_rng(seed).normal(size=len(y))
    return _split(x.astype(np.float32), y.astype(np.float32), seed, stratify=False)


def diabetes(seed: int = 0) -> Split:
    """scikit-learn's diabetes: 442 patients, 10 features, disease progression after a year; 80/20 split."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return _split(x.astype(np.float32), y.astype(np.float32), seed, stratify=False)


def synthetic20k(seed: int = 0, n_train: int = 20480, n_test: int = 2048) -> Split:
    """Class prototypes (10 of 3x16x16, standard normal) scaled by 0.6 plus standard normal noise, as the built-in
    ``synthetic`` set draws them, with 10x its rows."""
    g = np.random.default_rng(seed)
    prototypes = g.normal(size=(10, 3, 16, 16)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = g.integers(0, 10, size=n)
        return (prototypes[y] * 0.6 + g.normal(size=(n, 3, 16, 16))).astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = draw(n_train), draw(n_test)
    return Split(x_train, y_train, x_test, y_test)


SETS: dict[str, Callable[..., Split]] = {
    "digits16": digits16,
    "digits28": digits28,
    "cifar-digits": cifar_digits,
    "classification": classification,
    "regression": regression,
    "diabetes": diabetes,
    "synthetic20k": synthetic20k,
}


def write_npz(name: str, path: str | Path, seed: int = 0) -> Path:
    """Generate the set ``name`` (a key of :data:`SETS`) with ``seed`` and save it as an ``.npz`` for ``--data``."""
    if name not in SETS:
        raise ValueError(f"unknown set {name!r}; allowed: {', '.join(SETS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    split = SETS[name](seed=seed)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **split._asdict())
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(SETS)} (default: all)")
    parser.add_argument("--out", default="data", help="folder for NAME.npz (default: data)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SETS]
    if unknown:
        parser.error(f"unknown set {unknown[0]!r}; allowed: {', '.join(SETS)}")
    for name in args.names or list(SETS):
        path = write_npz(name, Path(args.out) / f"{name}.npz", args.seed)
        split = np.load(path)
        print(f"{path}: " + ", ".join(f"{k} {split[k].shape} {split[k].dtype}" for k in split.files))


if __name__ == "__main__":
    main()
