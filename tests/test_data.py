"""Data sources, each read from a tiny fixture written in the real on-disk format of that data set."""
from __future__ import annotations

import io
import pickle
import re
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from timebudget import data
from timebudget.errors import TimebudgetError

RED, GREY = (255, 0, 0), 128
IMAGEFOLDER_VALUES = {0: (2.0, -2.0, -2.0), 1: ((GREY / 255 - 0.5) / 0.25,) * 3}  # after Normalize(0.5, 0.25)


def described(bundle: data.DataBundle) -> tuple[str, str, int, tuple[int, ...]]:
    """What the trainer learns about a data set besides its samples: task, kind, outputs and one sample's shape."""
    return bundle.task, bundle.kind, bundle.num_outputs, bundle.input_shape


def assert_standardised(x: torch.Tensor, dims: tuple[int, ...]) -> None:
    """Training inputs are normalised once, from the training set: mean 0 and std 1 per channel or feature."""
    assert torch.allclose(x.mean(dims), torch.zeros(()), atol=1e-4)
    assert torch.allclose(x.std(dims), torch.ones(()), atol=1e-3)


def assert_increasing(x: torch.Tensor, dim: int) -> None:
    """A gradient written into the fixture along ``dim`` must survive the layout conversion along that same axis."""
    assert bool((x.diff(dim=dim) > 0).all())


# --- CIFAR: the python version, pickled by Python 2 ----------------------------------------------------------------
class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 byte strings, as the official CIFAR batches were pickled: torchvision reads
    them with ``encoding="latin1"`` (keys become ``'data'``; read with ``encoding="bytes"`` they are ``b'data'``)."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def write_py2_pickle(path: Path, value: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(value)
    path.write_bytes(buffer.getvalue())


def cifar_rows(labels: list[int]) -> np.ndarray:
    """(N, 3072) uint8 rows, planes R, G, B of 32x32 each: R is a per-image constant that grows with the label, G a
    left-to-right gradient, B noise. Checking them after loading proves the channel and axis order."""
    n = len(labels)
    red = np.repeat(10 + 2 * np.asarray(labels, dtype=np.uint8), 1024).reshape(n, 1024)
    green = np.tile(np.repeat(8 * np.arange(32, dtype=np.uint8)[None, :], 32, axis=0).ravel(), (n, 1))
    blue = np.random.default_rng(0).integers(0, 256, size=(n, 1024), dtype=np.uint8)
    return np.concatenate([red, green, blue], axis=1)


def write_cifar10(root: Path) -> tuple[list[int], list[int]]:
    """``cifar-10-batches-py/``: data_batch_1..5 and test_batch ({'data', 'labels', ...}) and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = [(3 * i) % 10 for i in range(20)]
    test = [9 - i for i in range(10)]
    batches = [(f"data_batch_{b + 1}", train[4 * b : 4 * b + 4]) for b in range(5)] + [("test_batch", test)]
    for name, labels in batches:
        write_py2_pickle(folder / name, {
            "batch_label": name, "labels": labels, "data": cifar_rows(labels),
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        })
    write_py2_pickle(folder / "batches.meta", {
        "label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 4, "num_vis": 3072,
    })
    return train, test


def write_cifar100(root: Path) -> tuple[list[int], list[int]]:
    """``cifar-100-python/``: train and test ({'data', 'fine_labels', 'coarse_labels', ...}) and meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train, test = [11 * i for i in range(10)], [99, 0, 50, 7]
    for name, fine in (("train", train), ("test", test)):
        write_py2_pickle(folder / name, {
            "batch_label": name, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
            "data": cifar_rows(fine), "filenames": [f"img_{i}.png" for i in range(len(fine))],
        })
    write_py2_pickle(folder / "meta", {
        "fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)],
    })
    return train, test


@pytest.mark.parametrize(
    ("name", "write", "classes"), [("cifar10", write_cifar10, 10), ("cifar100", write_cifar100, 100)]
)
def test_cifar_python_batches(
    tmp_path: Path, name: str, write: Callable[[Path], tuple[list[int], list[int]]], classes: int
) -> None:
    """The official pickles load in batch order with their labels (fine labels for CIFAR-100), as NCHW images
    with the channels and axes where CIFAR puts them, standardised per channel."""
    train_labels, test_labels = write(tmp_path)
    bundle = data.load(name, str(tmp_path))
    assert described(bundle) == ("classification", "image", classes, (3, 32, 32))
    assert bundle.augment
    for split, labels in ((bundle.train, train_labels), (bundle.test, test_labels)):
        assert split.y.tolist() == labels
        red = split.x[:, 0]
        assert torch.allclose(red, red[:, :1, :1].expand_as(red))  # constant within each image
        pairs = torch.stack([red[:, 0, 0].double(), torch.tensor(labels, dtype=torch.double)])
        assert torch.corrcoef(pairs)[0, 1] == pytest.approx(1.0)  # the label, up to the normalisation's affine map
        assert_increasing(split.x[:, 1], dim=2)
    assert_standardised(bundle.train.x, (0, 2, 3))


def test_cifar_reports_missing_files_and_the_expected_layout(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(TimebudgetError, match="lacks test_batch; expected layout: DIR/cifar-10-batches-py/"):
        data.load("cifar10", str(tmp_path))


def test_cifar_unpacked_one_level_too_deep_names_the_layout(tmp_path: Path) -> None:
    """A common mistake: --data-dir pointing at the batches folder itself instead of its parent."""
    write_cifar100(tmp_path)
    with pytest.raises(TimebudgetError, match="expected layout: DIR/cifar-100-python/ with train, test, meta"):
        data.load("cifar100", str(tmp_path / "cifar-100-python"))


def test_corrupt_cifar_batch_is_a_clear_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(TimebudgetError, match="could not read"):
        data.load("cifar10", str(tmp_path))


# --- MNIST and Fashion-MNIST: unzipped big-endian idx files --------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file: magic (0, 0, 0x08 = unsigned byte, number of dimensions), each size as big-endian uint32."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    """``<folder>/raw/`` with the four idx files; each image is a top-to-bottom gradient shifted by its label."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    labels = {"train": np.arange(20) % 10, "t10k": np.arange(10)[::-1]}
    for prefix, y in labels.items():
        images = 9 * np.arange(28)[None, :, None] + y[:, None, None] + np.zeros((1, 1, 28), dtype=int)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return labels["train"], labels["t10k"]


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    """idx files load as one-channel 28x28 images, upright, with their labels, standardised."""
    train_labels, test_labels = write_mnist(tmp_path, folder)
    bundle = data.load(name, str(tmp_path))
    assert described(bundle) == ("classification", "image", 10, (1, 28, 28))
    assert bundle.train.y.tolist() == train_labels.tolist()
    assert bundle.test.y.tolist() == test_labels.tolist()
    assert_increasing(bundle.test.x[:, 0], dim=1)
    assert_standardised(bundle.train.x, (0, 2, 3))


def test_mnist_files_outside_their_class_folder_name_the_layout(tmp_path: Path) -> None:
    """torchvision looks in DIR/MNIST/raw; idx files copied straight into DIR/raw must say so, not 'not found'."""
    write_mnist(tmp_path, ".")
    with pytest.raises(TimebudgetError, match=r"lacks train-images-idx3-ubyte.*expected layout: DIR/MNIST/raw/"):
        data.load("mnist", str(tmp_path))


def test_gzipped_mnist_asks_for_unzipped_files(tmp_path: Path) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        (raw / f"{prefix}-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(TimebudgetError, match="unzipped idx files"):
        data.load("fashion-mnist", str(tmp_path))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder"])
def test_folder_sources_need_data_dir_and_say_the_layout(tmp_path: Path, name: str) -> None:
    """Without --data-dir, or with one that does not exist, the message says what to pass and how it is laid out."""
    with pytest.raises(TimebudgetError, match=f"--data {name} needs --data-dir DIR; expected layout: DIR/"):
        data.load(name, None)
    with pytest.raises(TimebudgetError, match="is not a folder; expected layout"):
        data.load(name, str(tmp_path / "missing"))


# --- ImageFolder of PNGs -------------------------------------------------------------------------------------------
def write_pngs(folder: Path, per_class: int) -> None:
    """Class ``cat``: red RGB images; class ``dog``: grey one-channel images (converted to RGB on reading)."""
    for name, image in (("cat", Image.new("RGB", (12, 10), RED)), ("dog", Image.new("L", (9, 9), GREY))):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            image.save(folder / name / f"{i}.png")


def assert_images_match_labels(dataset: torch.utils.data.Dataset, size: int) -> list[int]:
    """Every item is a normalised RGB square of the requested size whose colour is its class's; returns labels."""
    labels = []
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.shape == (3, size, size)
        expected = torch.tensor(IMAGEFOLDER_VALUES[y])[:, None, None].expand_as(x)
        assert torch.allclose(x, expected, atol=1e-5)
        labels.append(y)
    return labels


def test_imagefolder_of_class_folders_is_split_80_20_by_class(tmp_path: Path) -> None:
    write_pngs(tmp_path, per_class=10)
    bundle = data.load("imagefolder", str(tmp_path), image_size=16)
    assert described(bundle) == ("classification", "image", 2, (3, 16, 16))
    assert sorted(assert_images_match_labels(bundle.test, 16)) == [0, 0, 1, 1]
    assert sorted(assert_images_match_labels(bundle.train, 16)) == [0] * 8 + [1] * 8


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_imagefolder_with_train_and_test_folders_keeps_them(tmp_path: Path, test_folder: str) -> None:
    write_pngs(tmp_path / "train", per_class=3)
    write_pngs(tmp_path / test_folder, per_class=2)
    bundle = data.load("imagefolder", str(tmp_path), image_size=8)
    assert assert_images_match_labels(bundle.train, 8) == [0, 0, 0, 1, 1, 1]
    assert assert_images_match_labels(bundle.test, 8) == [0, 0, 1, 1]
    assert bundle.num_outputs == 2


def test_imagefolder_with_a_test_folder_but_no_train_folder_is_refused(tmp_path: Path) -> None:
    """Else ``test/`` would silently become one more class of the training set."""
    write_pngs(tmp_path, per_class=3)
    write_pngs(tmp_path / "test", per_class=2)
    with pytest.raises(TimebudgetError, match="has test/ but no train/.*expected layout"):
        data.load("imagefolder", str(tmp_path))


def test_imagefolder_of_loose_images_names_the_layout(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), RED).save(tmp_path / "a.png")
    with pytest.raises(TimebudgetError, match="no class sub-folders with images; expected DIR/<class>/<image files>"):
        data.load("imagefolder", str(tmp_path))


def test_imagefolder_class_without_images_is_named(tmp_path: Path) -> None:
    """An empty class folder would be a class the model can never learn: say which one instead of failing inside
    torchvision."""
    write_pngs(tmp_path, per_class=5)
    (tmp_path / "bird").mkdir()
    with pytest.raises(TimebudgetError, match=r"bird.*expected DIR/<class>/"):
        data.load("imagefolder", str(tmp_path))


def test_imagefolder_reads_every_listed_image_type(tmp_path: Path) -> None:
    """What the layout check accepts as an image must also be read (a folder of GIFs is a valid data set)."""
    for name, colour in (("cat", RED), ("dog", (GREY,) * 3)):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB", (8, 8), colour).save(tmp_path / name / f"{i}.gif")
    bundle = data.load("imagefolder", str(tmp_path), image_size=8)
    assert len(bundle.train) + len(bundle.test) == 10
    assert_images_match_labels(bundle.test, 8)


def test_imagefolder_train_and_test_classes_must_agree(tmp_path: Path) -> None:
    write_pngs(tmp_path / "train", per_class=2)
    write_pngs(tmp_path / "test", per_class=2)
    (tmp_path / "test" / "dog").rename(tmp_path / "test" / "wolf")
    with pytest.raises(TimebudgetError, match="differ"):
        data.load("imagefolder", str(tmp_path))


# --- .npz files --------------------------------------------------------------------------------------------------
def write_npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def labels(n: int, classes: int = 3) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % classes


def test_npz_tabular_is_standardised_with_training_statistics(tmp_path: Path) -> None:
    """Features of different scales become mean 0, std 1; the test set uses the training mean and std."""
    g = np.random.default_rng(0)
    x_train = g.normal(loc=[0.0, 100.0, -5.0], scale=[1.0, 50.0, 0.01], size=(60, 3))
    x_test = g.normal(size=(15, 3))
    path = write_npz(tmp_path / "tab.npz", x_train=x_train, y_train=labels(60), x_test=x_test, y_test=labels(15))
    bundle = data.load(path)
    assert described(bundle) == ("classification", "tabular", 3, (3,))
    assert_standardised(bundle.train.x, (0,))
    expected = (x_test - x_train.mean(0)) / x_train.std(0, ddof=1)
    assert torch.allclose(bundle.test.x, torch.as_tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-4)
    assert bundle.train.y.tolist() == labels(60).tolist()


@pytest.mark.parametrize(
    ("shape", "dtype", "input_shape"),
    [((20, 6, 5), np.float32, (1, 6, 5)), ((20, 2, 6, 5), np.float64, (2, 6, 5)), ((20, 6, 5, 2), np.uint8, (2, 6, 5)),
     ((20, 3, 6, 5), np.uint8, (3, 6, 5)), ((20, 6, 5, 3), np.float32, (3, 6, 5))],
    ids=["NHW", "NCHW-float", "NHWC-uint8", "NCHW-uint8", "NHWC-float"],
)
def test_npz_images_become_nchw(
    tmp_path: Path, shape: tuple[int, ...], dtype: type, input_shape: tuple[int, ...]
) -> None:
    """Each image layout ends as (C, H, W) with its axes intact: a gradient written down the rows stays down the
    rows, one written across the columns stays across them, whatever layout the file uses. The channel axis is the
    one of size 1, 3 or 4; only when the shape does not tell does the dtype's convention decide."""
    n, (channels, height, width) = shape[0], input_shape
    nchw = np.zeros((n, channels, height, width))
    nchw += 10 * np.arange(height)[:, None] + labels(n)[:, None, None, None]
    nchw[:, -1] = 10 * np.arange(width)[None, :] + labels(n)[:, None, None]
    x = (nchw.reshape(shape) if len(shape) == 3 or shape[1:] == input_shape else nchw.transpose(0, 2, 3, 1))
    x = x.astype(dtype)
    path = write_npz(tmp_path / "img.npz", x_train=x, y_train=labels(n), x_test=x[:5], y_test=labels(5))
    bundle = data.load(path)
    assert described(bundle) == ("classification", "image", 3, input_shape)
    assert bundle.test.x.shape == (5, *input_shape)
    assert_increasing(bundle.train.x[:, -1], dim=2)
    if channels > 1:
        assert_increasing(bundle.train.x[:, 0], dim=1)
    assert_standardised(bundle.train.x, (0, 2, 3))


@pytest.mark.parametrize("targets", [1, 2])
def test_npz_float_targets_are_regression_in_standardised_units(tmp_path: Path, targets: int) -> None:
    """Float y means regression with one output per target column; targets are standardised with the training
    mean and std, which the bundle keeps so that metrics can be reported in the data's own units."""
    g = np.random.default_rng(1)
    y_train, y_test = g.normal(50.0, 7.0, size=(40, targets)), g.normal(50.0, 7.0, size=(10, targets))
    if targets == 1:
        y_train, y_test = y_train[:, 0], y_test[:, 0]
    x_train, x_test = g.normal(size=(40, 4)), g.normal(size=(10, 4))
    path = write_npz(tmp_path / "reg.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    bundle = data.load(path)
    assert described(bundle) == ("regression", "tabular", targets, (4,))
    assert bundle.train.y.shape == (40, targets)
    restored = bundle.test.y * bundle.target_std + bundle.target_mean
    assert torch.allclose(restored, torch.as_tensor(y_test, dtype=torch.float32).view(10, targets), atol=1e-3)
    assert bundle.target_mean == pytest.approx(y_train.mean(), rel=1e-5)


def good_arrays() -> dict[str, np.ndarray]:
    return {"x_train": np.zeros((10, 3)), "y_train": labels(10), "x_test": np.zeros((4, 3)), "y_test": labels(4)}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"y_test": None}, "missing arrays y_test; an .npz needs x_train, y_train, x_test, y_test"),
        ({"x_train": None, "y_train": None}, "missing arrays x_train, y_train"),
        ({"y_train": labels(9)}, "x_train has 10 samples but y_train has 9"),
        ({"x_test": np.zeros((3, 3))}, "x_test has 3 samples but y_test has 4"),
        ({"x_test": np.zeros((4, 5))}, "x_train samples have shape (3,), x_test (5,)"),
        ({"x_train": np.zeros((10, 1, 2, 2, 2)), "x_test": np.zeros((4, 1, 2, 2, 2))}, "(N, F) tabular"),
        ({"y_train": -labels(10)}, "class labels must be >= 0"),
        ({"x_train": np.zeros((0, 3)), "y_train": labels(0)}, "x_train is empty"),
    ],
)
def test_bad_npz_is_refused_with_what_is_wrong(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    arrays = {**good_arrays(), **change}
    path = write_npz(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(TimebudgetError, match=re.escape(needle)):
        data.load(path)


def test_unreadable_npz_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"no zip here")
    with pytest.raises(TimebudgetError, match="not a readable .npz"):
        data.load(str(path))
    with pytest.raises(TimebudgetError, match="no such file"):
        data.load(str(tmp_path / "absent.npz"))


# --- module:function factories ------------------------------------------------------------------------------------
FACTORIES = """
    import torch
    from torch.utils.data import Dataset, TensorDataset

    def tabular():
        x = torch.randn(30, 5)
        return TensorDataset(x, torch.arange(30) % 4), TensorDataset(x[:6], torch.arange(6) % 4)

    def grids():
        y = torch.arange(8) % 2
        return TensorDataset(torch.randn(8, 7, 6), y), TensorDataset(torch.randn(4, 7, 6), y[:4])

    def regression():
        return TensorDataset(torch.randn(8, 3), torch.randn(8, 2)), TensorDataset(torch.randn(4, 3), torch.randn(4, 2))

    class Named(Dataset):
        classes = ["a", "b", "c", "d", "e"]

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return [float(i), 1.0], i % 2

    def named():
        return Named(), Named()

    def single():
        return Named()
"""


@pytest.mark.parametrize(
    ("function", "task", "num_outputs", "input_shape", "kind"),
    [
        ("tabular", "classification", 4, (5,), "tabular"),
        ("grids", "classification", 2, (1, 7, 6), "image"),
        ("regression", "regression", 2, (3,), "tabular"),
        ("named", "classification", 5, (2,), "tabular"),
    ],
)
def test_factory_data_is_described_from_its_items(
    user_module: Callable[[str, str], ModuleType],
    function: str,
    task: str,
    num_outputs: int,
    input_shape: tuple[int, ...],
    kind: str,
) -> None:
    """Integer targets mean classes (counted from the labels unless the dataset lists its ``classes``), float
    targets regression; 2-D samples are one-channel images. The datasets are used as given."""
    module = user_module("user_data", FACTORIES)
    bundle = data.load(f"user_data:{function}")
    assert described(bundle) == (task, kind, num_outputs, input_shape)
    assert len(bundle.train) == len(getattr(module, function)()[0])


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("user_data:single", "must return (train_dataset, test_dataset), got Named"),
        ("user_data:absent", "module 'user_data' has no function 'absent'"),
        ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_bad_factory_is_a_clear_error(user_module: Callable[[str, str], ModuleType], spec: str, needle: str) -> None:
    user_module("user_data", FACTORIES)
    with pytest.raises(TimebudgetError, match=re.escape(needle)):
        data.load(spec)


# --- built-in sources ----------------------------------------------------------------------------------------------
def test_digits_is_a_fixed_stratified_split() -> None:
    """The default data set: 8x8 one-channel digits, 80/20 with every class in both parts, standardised."""
    bundle = data.load("digits")
    assert described(bundle) == ("classification", "image", 10, (1, 8, 8))
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    assert set(bundle.test.y.tolist()) == set(range(10))
    assert_standardised(bundle.train.x, (0, 2, 3))
    assert torch.equal(data.load("digits").test.y, bundle.test.y)


def test_synthetic_is_deterministic() -> None:
    """Tests and benchmarks compare runs on it, so two loads must give the same samples."""
    first, second = data.load("synthetic"), data.load("synthetic")
    assert (first.input_shape, first.num_outputs, len(first.train), len(first.test)) == ((3, 16, 16), 10, 2048, 512)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)


def test_unknown_data_lists_what_is_allowed() -> None:
    with pytest.raises(TimebudgetError) as info:
        data.load("imagenet")
    message = str(info.value)
    assert "unknown data 'imagenet'" in message
    assert all(name in message for name in (*data.NAMES, ".npz", "module:function"))


@pytest.mark.parametrize("stratify", [True, False])
def test_stratified_split_is_disjoint_complete_fixed_and_proportional(stratify: bool) -> None:
    labels = np.repeat(np.arange(4), [50, 31, 7, 2])
    train, test = data.stratified_split(labels, 0.2, seed=0, stratify=stratify)
    assert len(test) == 18 and np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    again = data.stratified_split(labels, 0.2, seed=0, stratify=stratify)
    assert np.array_equal(test, again[1]) and not np.array_equal(test, data.stratified_split(labels, 0.2, 1)[1])
    if stratify:  # each class within one sample of its proportional share
        assert np.all(np.abs(np.bincount(labels[test], minlength=4) - np.array([50, 31, 7, 2]) * 0.2) < 1)


def test_digits_load_without_importing_scikit_learn() -> None:
    """scikit-learn's import costs about 0.6 s of a budget; the digits are read from the file it ships."""
    code = "import sys; from timebudget import data; data.load('digits'); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
