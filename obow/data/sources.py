"""Labelled image sources behind one interface: `len`, `source[i] -> (PIL RGB image, label)`.

Grey IDX datasets keep their uint8 array in memory and make a PIL image per access, so 60k images
cost 47 MB, not 60k Python objects.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
from PIL import Image

from obow.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


class ImageSource:
    classes: list[str]
    targets: list[int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def get_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.get_image(index), self.targets[index]


class ArraySource(ImageSource):
    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
        self.images = images
        self.targets = [int(x) for x in labels]
        self.classes = classes

    def get_image(self, index: int) -> Image.Image:
        array = self.images[index]
        return Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB").convert("RGB")


class FileListSource(ImageSource):
    def __init__(self, paths: list[Path], targets: list[int], classes: list[str]) -> None:
        self.paths, self.targets, self.classes = paths, targets, classes

    def get_image(self, index: int) -> Image.Image:
        with Image.open(self.paths[index]) as image:
            return image.convert("RGB")


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"'{folder}' has no {stem}(.gz); point --data-dir at the folder with the IDX files")


def open_idx_dataset(folder: Path, split: str, classes: list[str]) -> ArraySource:
    from obow.data.idx import read_idx

    if not folder.is_dir():
        raise DataError(f"data folder '{folder}' does not exist")
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if len(images) != len(labels):
        raise DataError(f"'{folder}': {len(images)} images but {len(labels)} labels")
    return ArraySource(images, labels, classes)


def open_image_folder(root: Path, split: str, subset: int | None = None) -> FileListSource:
    """`root/<split>/<class>/<image>`: classes sorted by name, images sorted within a class.

    `subset=N` keeps the first N images of each class in that order (the original's `subset` option).
    """
    folder = root / split
    if not root.is_dir():
        raise DataError(f"data folder '{root}' does not exist")
    if not folder.is_dir():
        raise DataError(f"'{root}' has no '{split}/' folder; expected {root}/{split}/<class>/<images>")
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"'{folder}' has no class folders; expected {folder}/<class>/<images>")
    paths: list[Path] = []
    targets: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if subset is not None:
            files = files[:subset]
        paths += files
        targets += [label] * len(files)
    if not paths:
        raise DataError(f"'{folder}' has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return FileListSource(paths, targets, classes)


def foolbox_data_dir() -> Path:
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the sample photos come with foolbox: pip install --no-deps foolbox==3.3.4")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def open_foolbox_samples(prefix: str = "imagenet") -> FileListSource:
    """The 20 labelled sample photos foolbox ships (`imagenet_07_609.jpg`: index 07, class 609)."""
    pattern = re.compile(rf"^{prefix}_(\d+)_(\d+)\.(jpg|png)$")
    found = sorted(
        (int(m.group(1)), int(m.group(2)), p)
        for p in foolbox_data_dir().iterdir()
        if (m := pattern.match(p.name))
    )
    if not found:
        raise DataError(f"no '{prefix}' sample images in {foolbox_data_dir()}")
    labels = sorted({label for _, label, _ in found})
    remap = {label: i for i, label in enumerate(labels)}
    return FileListSource([p for _, _, p in found], [remap[lbl] for _, lbl, _ in found], [str(x) for x in labels])


def synthetic_source(num_images: int = 256, size: int = 32, num_classes: int = 4, seed: int = 0) -> ArraySource:
    """Deterministic images whose class is a bright square's quadrant: learnable, needs no files."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(num_images, size, size, 3), dtype=np.uint8)
    labels = np.arange(num_images) % num_classes
    half, side = size // 2, max(2, size // 4)
    for i, label in enumerate(labels):
        y0 = (label // 2) * half + int(rng.integers(0, half - side + 1))
        x0 = (label % 2) * half + int(rng.integers(0, half - side + 1))
        images[i, y0 : y0 + side, x0 : x0 + side] = rng.integers(180, 256, size=3, dtype=np.uint8)
    return ArraySource(images, labels, [f"quadrant{c}" for c in range(num_classes)])


def _subset_first(source: ImageSource, per_class: int) -> ImageSource:
    keep: list[int] = []
    seen: dict[int, int] = {}
    for i, label in enumerate(source.targets):
        if seen.get(label, 0) < per_class:
            keep.append(i)
            seen[label] = seen.get(label, 0) + 1
    return SubsetSource(source, keep)


class SubsetSource(ImageSource):
    def __init__(self, base: ImageSource, indices: list[int]) -> None:
        self.base, self.indices = base, indices
        self.targets = [base.targets[i] for i in indices]
        self.classes = base.classes

    def get_image(self, index: int) -> Image.Image:
        return self.base.get_image(self.indices[index])


def open_dataset(name: str, data_dir: str | Path | None, split: str, subset: int | None = None) -> ImageSource:
    """A labelled split of a dataset by name (the `data.dataset_name` values of the specs)."""
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}'; use train, val or test")
    if subset is not None and subset < 1:
        raise DataError(f"subset must be at least 1 image per class, got {subset}")
    root = Path(data_dir) if data_dir else None
    if name == "FashionMNIST":
        source: ImageSource = open_idx_dataset(root or FASHION_MNIST_DIR, split, list(FASHION_MNIST_CLASSES))
    elif name == "MNIST":
        if root is None:
            raise DataError("MNIST needs --data-dir: the folder with train-images-idx3-ubyte(.gz) and friends")
        source = open_idx_dataset(root, split, [str(d) for d in range(10)])
    elif name in ("ImageNet", "ImageFolder"):
        if root is None:
            raise DataError(f"{name} needs a data folder with train/ and val/ (--data-dir)")
        folder_split = "val" if split == "test" and not (root / "test").is_dir() else split
        return open_image_folder(root, folder_split, subset)
    elif name == "FoolboxImageNet":
        source = open_foolbox_samples("imagenet")
    elif name == "Synthetic":
        source = synthetic_source(num_images=512 if split == "train" else 128, seed=0 if split == "train" else 1)
    else:
        raise DataError(
            f"unknown dataset '{name}'; use FashionMNIST, MNIST, ImageNet, ImageFolder, FoolboxImageNet or Synthetic"
        )
    return _subset_first(source, subset) if subset is not None else source
