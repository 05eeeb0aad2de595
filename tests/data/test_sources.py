"""IDX files, image folders and the dataset registry, including every bad-input error."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from obow.data.idx import read_idx
from obow.data.sources import open_dataset
from obow.errors import DataError


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    data = header + body
    path.write_bytes(gzip.compress(data) if compress else data)


def test_idx_hand_example(tmp_path: Path):
    # magic 0x00000803, dims 2x2x3, then 12 bytes
    raw = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "a.idx").write_bytes(raw)
    arr = read_idx(tmp_path / "a.idx")
    assert arr.shape == (2, 2, 3) and arr.dtype == np.uint8
    assert arr[1, 0, 2] == 8


def test_idx_int32_gz_round_trip(tmp_path: Path):
    values = np.array([[1, -2, 300000], [4, 5, -6]], dtype=np.int32)
    write_idx(tmp_path / "b.gz", values, code=0x0C, compress=True)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), values)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\x01\x02\x03\x04", "bad magic"), (bytes([0, 0, 8, 2, 0, 0, 0, 2]), "truncated"),
     (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "expected 5")],
)
def test_bad_idx_files(tmp_path: Path, content: bytes, message: str):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_the_debian_package():
    train, test = open_dataset("FashionMNIST", None, "train"), open_dataset("FashionMNIST", None, "test")
    assert (len(train), len(test), train.num_classes) == (60000, 10000, 10)
    image, label = train[0]
    assert image.size == (28, 28) and image.mode == "RGB" and label == 9  # the first training image is a boot
    assert sorted(set(test.targets)) == list(range(10))


def test_mnist_layout_from_idx_files(tmp_path: Path):
    imgs = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(6, dtype=np.uint8), compress=False)
    source = open_dataset("MNIST", tmp_path, "train")
    assert len(source) == 6 and source[3][1] == 3
    assert np.array_equal(np.asarray(source[2][0])[:, :, 0], imgs[2])


def make_folder(root: Path, counts: dict[str, int], split: str = "train") -> None:
    for name, n in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(folder / f"img_{i:02d}.png")


def test_image_folder_with_per_class_subset(tmp_path: Path):
    make_folder(tmp_path, {"b": 3, "a": 5})
    full = open_dataset("ImageFolder", tmp_path, "train")
    assert full.classes == ["a", "b"] and len(full) == 8
    sub = open_dataset("ImageFolder", tmp_path, "train", subset=2)
    assert len(sub) == 4 and sub.targets == [0, 0, 1, 1]
    assert [p.name for p in sub.paths] == ["img_00.png", "img_01.png", "img_00.png", "img_01.png"]


def test_foolbox_samples_and_synthetic():
    photos = open_dataset("FoolboxImageNet", None, "train")
    assert len(photos) == 20 and photos[0][0].mode == "RGB"
    synth = open_dataset("Synthetic", None, "train")
    assert len(synth) == 512 and synth.num_classes == 4
    assert np.array_equal(np.asarray(synth[5][0]), np.asarray(open_dataset("Synthetic", None, "train")[5][0]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ImageFolder", "/nonexistent", "train"), "does not exist"),
        (("ImageFolder", None, "train"), "needs a data folder"),
        (("MNIST", None, "train"), "needs --data-dir"),
        (("Cifar", None, "train"), "unknown dataset 'Cifar'"),
        (("FashionMNIST", None, "dev"), "unknown split"),
        (("FashionMNIST", "/tmp", "train"), "no train-images-idx3-ubyte"),
    ],
)
def test_bad_dataset_requests(args, message):
    with pytest.raises(DataError, match=message):
        open_dataset(*args)


def test_folder_errors(tmp_path: Path):
    with pytest.raises(DataError, match="has no 'train/' folder"):
        open_dataset("ImageFolder", tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        open_dataset("ImageFolder", tmp_path, "train")
    (tmp_path / "train" / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_dataset("ImageFolder", tmp_path, "train")
    with pytest.raises(DataError, match="at least 1"):
        open_dataset("FashionMNIST", None, "train", subset=0)
