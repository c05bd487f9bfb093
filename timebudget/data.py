"""Data sources: a registry of names, ``.npz`` files and ``module:function`` factories, all resolved to one bundle.

In-memory sources (digits, CIFAR, MNIST, npz) become :class:`ArrayDataset` tensors, normalised once, so the trainer
can index whole batches without per-sample Python. Other datasets (ImageFolder, user datasets) go through a
DataLoader. Every dataset yields ``(x, y)``; the trainer pairs each item with its index for the score table.
torchvision is imported only for the sources that need it (it costs about a second of the budget).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from . import checks
from .errors import TimebudgetError
from .imports import import_callable

NAMES = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder", "synthetic")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ArrayDataset(Dataset):
    """Samples held as two tensors; the trainer indexes batches of them directly."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise TimebudgetError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


@dataclass
class DataBundle:
    """A train/test pair and what the trainer needs to know about it."""

    name: str
    train: Dataset
    test: Dataset
    task: str  # "classification" or "regression"
    num_outputs: int
    input_shape: tuple[int, ...]
    kind: str  # "image" or "tabular"
    augment: bool = False  # whether flip/crop augmentation suits these images
    target_mean: float = 0.0  # regression targets are standardised; predictions are scaled back for metrics
    target_std: float = 1.0


def load(spec: str, data_dir: str | None = None, image_size: int = 32) -> DataBundle:
    """Resolve ``--data``: a registered name, a path to an ``.npz`` file, or ``module:function``."""
    if spec in NAMES:
        return _SOURCES[spec](data_dir, image_size)
    if spec.endswith(".npz") or Path(spec).is_file():
        return from_npz(spec)
    if ":" in spec:
        return from_factory(spec)
    raise TimebudgetError(
        f"unknown data {spec!r}; allowed: {', '.join(NAMES)}, a path to an .npz file, or module:function"
    )


# --- arrays to bundles -----------------------------------------------------------------------------------------
def _images(x: np.ndarray, layout: str) -> torch.Tensor:
    """Float NCHW in [0, 1] (uint8) or as given (float)."""
    t = torch.as_tensor(np.ascontiguousarray(x))
    if layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    elif layout == "NHW":
        t = t.unsqueeze(1)
    return t.float().div_(255.0) if x.dtype == np.uint8 else t.float()


def _channel_layout(x: np.ndarray) -> str:
    """Where the channels are: the axis (1 or 3) of size 1, 3 or 4 when only one of them is; when the shape does not
    tell, the usual convention of the dtype (uint8 images are stored (N, H, W, C), float arrays (N, C, H, W))."""
    first, last = x.shape[1] in (1, 3, 4), x.shape[3] in (1, 3, 4)
    if first != last:
        return "NCHW" if first else "NHWC"
    return "NHWC" if x.dtype == np.uint8 else "NCHW"


def from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    augment: bool = False,
) -> DataBundle:
    """Build a normalised in-memory bundle; the shape of x decides tabular vs image, the dtype of y the task."""
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise TimebudgetError(f"{name}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if len(x) == 0:
            raise TimebudgetError(f"{name}: x_{split} is empty")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise TimebudgetError(f"{name}: x_train samples have shape {x_train.shape[1:]}, x_test {x_test.shape[1:]}")
    if not (np.issubdtype(x_train.dtype, np.number) and np.issubdtype(y_train.dtype, np.number)):
        raise TimebudgetError(f"{name}: x and y must be numeric arrays, got {x_train.dtype} and {y_train.dtype}")
    for key, array in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        checks.finite_array(name, key, array)
    ndim = x_train.ndim
    if ndim == 2:
        kind, layout = "tabular", None
    elif ndim == 3:
        kind, layout = "image", "NHW"
    elif ndim == 4:
        kind, layout = "image", _channel_layout(x_train)
    else:
        raise TimebudgetError(
            f"{name}: x must be (N, F) tabular, (N, H, W) one-channel images, or (N, C, H, W) or (N, H, W, C) images; "
            f"got shape {x_train.shape}"
        )
    if kind == "tabular":
        xtr, xte = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(x_test, dtype=torch.float32)
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    else:
        xtr, xte = _images(x_train, layout), _images(x_test, layout)
        dims = (0, 2, 3)
        mean = xtr.mean(dims).view(1, -1, 1, 1)
        std = xtr.std(dims).clamp_min(1e-6).view(1, -1, 1, 1)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    target_mean, target_std = 0.0, 1.0
    if np.issubdtype(y_train.dtype, np.integer) or y_train.dtype == bool:
        if y_train.ndim != 1 or y_test.ndim != 1:
            raise TimebudgetError(f"{name}: integer (class) targets must be 1-D, got shape {y_train.shape}")
        ytr, yte = torch.as_tensor(y_train, dtype=torch.long), torch.as_tensor(y_test, dtype=torch.long)
        if int(min(ytr.min(), yte.min())) < 0:
            raise TimebudgetError(f"{name}: class labels must be >= 0")
        task, num_outputs = "classification", int(max(ytr.max(), yte.max())) + 1
    else:
        ytr, yte = torch.as_tensor(y_train, dtype=torch.float32), torch.as_tensor(y_test, dtype=torch.float32)
        if ytr.ndim == 1:
            ytr, yte = ytr.unsqueeze(1), yte.unsqueeze(1)
        if ytr.ndim != 2:
            raise TimebudgetError(f"{name}: float (regression) targets must be (N,) or (N, K), got {y_train.shape}")
        target_mean, target_std = float(ytr.mean()), float(ytr.std().clamp_min(1e-6))
        ytr, yte = (ytr - target_mean) / target_std, (yte - target_mean) / target_std
        task, num_outputs = "regression", int(ytr.shape[1])
    return DataBundle(
        name=name,
        train=ArrayDataset(xtr.contiguous(), ytr),
        test=ArrayDataset(xte.contiguous(), yte),
        task=task,
        num_outputs=num_outputs,
        input_shape=tuple(xtr.shape[1:]),
        kind=kind,
        augment=augment and kind == "image",
        target_mean=target_mean,
        target_std=target_std,
    )


# --- registered sources ----------------------------------------------------------------------------------------
def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits in [0, 1] as ``x_train, y_train, x_test, y_test``: a fixed stratified 80/20 split.

    Read straight from the CSV file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: 64 pixel values
    and the label per row), found without importing scikit-learn, whose import costs about 0.6 s of the budget.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise TimebudgetError("--data digits reads the digits scikit-learn ships; install it: pip install scikit-learn")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x, y = (table[:, :-1] / 16.0).reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    train, test = stratified_split(y, test_fraction=0.2, seed=0)
    return x[train], y[train], x[test], y[test]


def digits(data_dir: str | None = None, image_size: int = 32) -> DataBundle:
    """scikit-learn's 8x8 digits (ships inside scikit-learn): a fixed stratified 80/20 split."""
    return from_arrays("digits", *digits_arrays())


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test positions, ``ceil(test_fraction * n)`` of them in the test part: drawn within each class
    in proportion to its size (the classes with the largest remainders get the places left over), or uniformly from
    all samples with ``stratify=False``."""
    g = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    sizes = np.array([len(group) for group in groups])
    n_test = math.ceil(test_fraction * len(labels))
    exact = sizes * n_test / len(labels)
    take = np.floor(exact).astype(np.int64)
    take[np.argsort(take - exact, kind="stable")[: n_test - take.sum()]] += 1
    test = np.sort(np.concatenate([g.permutation(group)[:k] for group, k in zip(groups, take)]))
    return np.setdiff1d(np.arange(len(labels)), test), test


def synthetic(data_dir: str | None = None, image_size: int = 32) -> DataBundle:
    """A small deterministic 10-class image task (3x16x16): class prototypes plus noise. For tests and benchmarks."""
    g = np.random.default_rng(1234)
    prototypes = g.normal(size=(10, 3, 16, 16)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = g.integers(0, 10, size=n)
        x = prototypes[y] * 0.6 + g.normal(size=(n, 3, 16, 16)).astype(np.float32)
        return x.astype(np.float32), y.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(2048), split(512)
    return from_arrays("synthetic", x_train, y_train, x_test, y_test)


def _need_dir(name: str, data_dir: str | None, layout: str) -> Path:
    if not data_dir:
        raise TimebudgetError(f"--data {name} needs --data-dir DIR; expected layout: {layout}")
    path = Path(data_dir)
    if not path.is_dir():
        raise TimebudgetError(f"--data-dir {data_dir!r} is not a folder; expected layout for {name}: {layout}")
    return path


def _unverified(cls: type) -> type:
    """A torchvision CIFAR class that checks its files exist but skips the download checksums, so a user's own
    copy (or a test fixture) in the official layout loads; torchvision's reading code is used unchanged."""
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[f, None] for f, _ in cls.train_list],
            "test_list": [[f, None] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def _cifar(name: str, data_dir: str | None) -> DataBundle:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    layout = f"DIR/{cls.base_folder}/ with {', '.join(files)} (the official python version, unpacked)"
    root = _need_dir(name, data_dir, layout)
    missing = [f for f in files if not (root / cls.base_folder / f).is_file()]
    if missing:
        raise TimebudgetError(f"--data {name}: {root} lacks {', '.join(missing)}; expected layout: {layout}")
    try:
        train, test = (_unverified(cls)(str(root), train=t, download=False) for t in (True, False))
    except Exception as exc:  # a corrupt pickle: say which set, not torch's internals
        raise TimebudgetError(f"--data {name}: could not read {root / cls.base_folder}: {exc}") from None
    return from_arrays(
        name, train.data, np.asarray(train.targets), test.data, np.asarray(test.targets), augment=True
    )


def _mnist(name: str, data_dir: str | None) -> DataBundle:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    files = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    layout = f"DIR/{cls.__name__}/raw/ with {', '.join(files)} (unzipped idx files)"
    root = _need_dir(name, data_dir, layout)
    raw = root / cls.__name__ / "raw"
    missing = [f for f in files if not (raw / f).is_file()]
    if missing:
        raise TimebudgetError(f"--data {name}: {raw} lacks {', '.join(missing)}; expected layout: {layout}")
    try:
        train, test = (cls(str(root), train=t, download=False) for t in (True, False))
    except Exception as exc:
        raise TimebudgetError(f"--data {name}: could not read the idx files in {raw}: {exc}") from None
    return from_arrays(name, train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy())


def imagefolder(data_dir: str | None, image_size: int = 32) -> DataBundle:
    """A folder of class sub-folders of images, or ``train/`` and ``test/`` (or ``val/``) folders of them.

    Without a test folder, a fixed stratified 80/20 split is used. Images are resized to ``image_size`` square and
    read through a DataLoader (they need not fit in memory).
    """
    from torchvision import datasets, transforms

    layout = "DIR/<class>/<image files>, or DIR/train/<class>/... with DIR/test/<class>/... (or DIR/val/)"
    root = _need_dir("imagefolder", data_dir, layout)
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is not None and not (root / "train").is_dir():
        raise TimebudgetError(f"--data imagefolder: {root} has {test_dir.name}/ but no train/ (a class folder cannot "
                              f"be named {test_dir.name!r}); expected layout: {layout}")
    train_dir = root / "train" if test_dir is not None else root
    tf = transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ]
    )
    loader = _rgb_loader

    def is_image(name: str) -> bool:
        return Path(name).suffix.lower() in IMAGE_EXTENSIONS

    def folder(path: Path) -> Any:
        classes = [d for d in sorted(path.iterdir()) if d.is_dir()]
        empty = [d.name for d in classes if not any(is_image(f.name) for f in d.rglob("*"))]
        if len(empty) == len(classes):
            raise TimebudgetError(f"--data imagefolder: {path} has no class sub-folders with images; expected {layout}")
        if empty:
            raise TimebudgetError(
                f"--data imagefolder: class folders without images in {path}: {', '.join(empty)}; expected {layout}"
            )
        return datasets.ImageFolder(str(path), transform=tf, loader=loader, is_valid_file=is_image)

    train = folder(train_dir)
    if test_dir is not None and train_dir != root:
        test = folder(test_dir)
        if test.classes != train.classes:
            raise TimebudgetError(f"--data imagefolder: test classes {test.classes} differ from train {train.classes}")
    else:
        targets = np.asarray(train.targets)
        counts = np.bincount(targets)
        stratify = bool(counts.min() >= 2 and len(targets) >= 5 * len(counts))
        tr_idx, te_idx = stratified_split(targets, test_fraction=0.2, seed=0, stratify=stratify)
        train, test = torch.utils.data.Subset(train, tr_idx.tolist()), torch.utils.data.Subset(train, te_idx.tolist())
        train.targets = targets[tr_idx].tolist()  # type: ignore[attr-defined]
    num_classes = len(train.dataset.classes if isinstance(train, torch.utils.data.Subset) else train.classes)
    return DataBundle(
        name="imagefolder",
        train=train,
        test=test,
        task="classification",
        num_outputs=num_classes,
        input_shape=(3, image_size, image_size),
        kind="image",
        augment=True,
    )


def _rgb_loader(path: str) -> Any:
    from PIL import Image

    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


_SOURCES: dict[str, Callable[[str | None, int], DataBundle]] = {
    "digits": digits,
    "synthetic": synthetic,
    "cifar10": lambda d, s: _cifar("cifar10", d),
    "cifar100": lambda d, s: _cifar("cifar100", d),
    "mnist": lambda d, s: _mnist("mnist", d),
    "fashion-mnist": lambda d, s: _mnist("fashion-mnist", d),
    "imagefolder": imagefolder,
}


# --- files and factories ---------------------------------------------------------------------------------------
def from_npz(path: str) -> DataBundle:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test``."""
    p = Path(path)
    if not p.is_file():
        raise TimebudgetError(f"--data {path!r}: no such file")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
            needed = ["x_train", "y_train", "x_test", "y_test"]
            missing = [k for k in needed if k not in keys]
            if missing:
                raise TimebudgetError(
                    f"--data {path!r}: missing arrays {', '.join(missing)}; an .npz needs {', '.join(needed)}"
                )
            arrays = [npz[k] for k in needed]
    except TimebudgetError:
        raise
    except Exception as exc:
        raise TimebudgetError(f"--data {path!r} is not a readable .npz file: {exc}") from None
    return from_arrays(p.name, *arrays)


def labels(ds: Dataset) -> torch.Tensor:
    """All targets of a dataset, without loading inputs when the dataset keeps them apart (``targets``)."""
    if isinstance(ds, ArrayDataset):
        return ds.y
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def from_factory(spec: str) -> DataBundle:
    """``module:function`` returning ``(train_dataset, test_dataset)`` whose items are ``(x, y)``.

    Integer (or integer-tensor) targets mean classification, with the class count from the largest label seen (a
    ``classes`` attribute wins if present); float targets mean regression.
    """
    made = import_callable(spec, "--data")()
    if not (isinstance(made, tuple) and len(made) == 2):
        raise TimebudgetError(f"--data {spec!r} must return (train_dataset, test_dataset), got {type(made).__name__}")
    train, test = made
    if len(train) == 0 or len(test) == 0:
        raise TimebudgetError(f"--data {spec!r}: the train and test datasets must not be empty")
    x0, y0 = train[0]
    x0, y0 = torch.as_tensor(x0), torch.as_tensor(y0)
    if y0.is_floating_point():
        task, num_outputs = "regression", max(1, y0.numel())
    else:
        classes = getattr(train, "classes", None)
        num_outputs = len(classes) if classes is not None else int(labels(train).max()) + 1
        task = "classification"
    kind = "tabular" if x0.ndim == 1 else "image"
    shape = tuple(x0.shape) if x0.ndim != 2 else (1, *x0.shape)
    return DataBundle(spec, train, test, task, num_outputs, shape, kind)
