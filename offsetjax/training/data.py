"""Datasets as NumPy arrays or random-access sources, and seeded batching with augmentation.

Images are ``[N, H, W, C]`` (uint8 or float in [0, 1]), labels ``[N]`` int. Three readers:

* :func:`load_digits` — scikit-learn's 8x8 digits, shipped inside scikit-learn (no download);
* :func:`load_idx` — the IDX files of MNIST / Fashion-MNIST from a directory (by default also
  ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` puts them);
* :func:`load_tfds` — a prepared TFDS dataset through ``tfds.data_source`` (ArrayRecord,
  random access, no TensorFlow needed to read).
"""

from __future__ import annotations

import gzip
import importlib
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from offsetjax.splits import Split, num_examples, take  # noqa: F401 - the training package's names for them


def _optional(module: str, package: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{module} is needed here: pip install 'offsetjax[data]' (or {package})") from error


#: Where Debian's and Ubuntu's ``dataset-fashion-mnist`` package installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: Number of classes of each dataset.
NUM_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet2012": 1000}

#: Per-channel mean and standard deviation used to normalise each dataset's images in [0, 1].
NORMALIZATION = {
    "digits": ((0.2087,), (0.3701,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class StreamingSplit:
    """A random-access source read batch by batch, for data that does not fit in memory.

    ``take(indices, rng)`` reads only those records, turns each image into a fixed-size array
    with ``preprocess(rng, image)`` (``rng`` is ``None`` for deterministic evaluation) and
    normalises the batch for ``dataset``.
    """

    def __init__(self, source, *, preprocess, dataset: str, limit: int | None = None):
        if dataset not in NORMALIZATION:
            raise ValueError(f"dataset must be one of {sorted(NORMALIZATION)}, got {dataset!r}")
        self.source, self.preprocess, self.dataset = source, preprocess, dataset
        self.size = len(source) if not limit else min(limit, len(source))

    def __len__(self) -> int:
        return self.size

    def take(self, indices, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        records = [self.source[int(i)] for i in indices]
        images = np.stack([self.preprocess(rng, np.asarray(r["image"])) for r in records])
        return normalize(images, self.dataset), np.asarray([r["label"] for r in records], np.int32)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    Image = _optional("PIL.Image", "pillow")

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def imagenet_train_preprocess(rng: np.random.Generator, image: np.ndarray, *, size: int = 224) -> np.ndarray:
    """Random resized crop (area 8-100%, aspect 3/4-4/3) to ``size`` and a random flip."""
    height, width = image.shape[:2]
    for _ in range(10):
        area = height * width * rng.uniform(0.08, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_h, crop_w = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
        if 0 < crop_h <= height and 0 < crop_w <= width:
            break
    else:
        crop_h = crop_w = min(height, width)
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    out = _resize(image[top : top + crop_h, left : left + crop_w], size, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def imagenet_eval_preprocess(_rng, image: np.ndarray, *, resize: int = 256, size: int = 224) -> np.ndarray:
    """Resize the short side to ``resize``, then a centre crop of ``size``."""
    height, width = image.shape[:2]
    scale = resize / min(height, width)
    image = _resize(image, max(size, int(round(height * scale))), max(size, int(round(width * scale))))
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Split]:
    """scikit-learn's 1797 8x8 digits as ``{"train", "test"}``, split by a seeded permutation."""
    sklearn_digits = _optional("sklearn.datasets", "scikit-learn").load_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = int(round(test_fraction * len(labels)))
    test, train = order[:num_test], order[num_test:]
    return {"train": Split(images[train], labels[train]), "test": Split(images[test], labels[test])}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its stored shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} elements (truncated?)")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).exists():
            return directory / name
    return None


def load_idx(directory: str | os.PathLike | None = None) -> dict[str, Split]:
    """MNIST-format IDX files from ``directory`` (or Debian's Fashion-MNIST) as ``{"train", "test"}``.

    Images come back as uint8 ``[N, 28, 28, 1]``.
    """
    candidates = [Path(directory)] if directory is not None else [DEBIAN_FASHION_MNIST]
    for candidate in candidates:
        found = {split: [_find_idx(candidate, stem) for stem in stems] for split, stems in IDX_FILES.items()}
        if all(path is not None for paths in found.values() for path in paths):
            splits = {}
            for split, (images_path, labels_path) in found.items():
                images, labels = read_idx(images_path), read_idx(labels_path)
                if images.ndim != 3 or labels.shape != images.shape[:1]:
                    raise ValueError(f"{images_path}: expected images [N, H, W] matching labels [N]")
                splits[split] = Split(images[..., None], labels.astype(np.int32))
            return splits
    where = ", ".join(str(c) for c in candidates)
    wanted = ", ".join(f"{stem}[.gz]" for stems in IDX_FILES.values() for stem in stems)
    raise FileNotFoundError(
        f"no IDX dataset in {where}: expected {wanted}. For Fashion-MNIST on Debian or Ubuntu run "
        f"`apt-get install dataset-fashion-mnist` (installs into {DEBIAN_FASHION_MNIST}), or pass "
        "the directory holding the files"
    )


def load_tfds(name: str, split: str, *, data_dir: str | os.PathLike | None = None):
    """A prepared TFDS dataset as a random-access source of ``{"image", "label"}`` records.

    Raises:
      FileNotFoundError: when the dataset is not prepared in ``data_dir``, with the command
        that prepares it (which needs TensorFlow and the network).
    """
    tfds = _optional("tensorflow_datasets", "tensorflow-datasets")

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # tfds raises AssertionError or its own errors when not prepared
        where = data_dir or "~/tensorflow_datasets"
        raise FileNotFoundError(
            f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}. Prepare it once, on a "
            "machine with the network and TensorFlow, with\n"
            f'  pip install tensorflow tensorflow-datasets && python -c "import tensorflow_datasets as tfds; '
            f"tfds.builder('{name}', data_dir='{where}', file_format='array_record').download_and_prepare()\"\n"
            f"({type(error).__name__}: {error})"
        ) from error


def source_to_split(source, *, limit: int | None = None) -> Split:
    """Read a random-access source of ``{"image", "label"}`` records into memory."""
    count = len(source) if limit is None else min(limit, len(source))
    records = [source[i] for i in range(count)]
    return Split(
        np.stack([np.asarray(r["image"]) for r in records]), np.asarray([r["label"] for r in records], np.int32)
    )


def normalize(images: np.ndarray, dataset: str) -> np.ndarray:
    """uint8 (or [0, 1] float) images to float32, standardised per channel for ``dataset``."""
    if dataset not in NORMALIZATION:
        raise ValueError(f"dataset must be one of {sorted(NORMALIZATION)}, got {dataset!r}")
    mean, std = (np.asarray(x, np.float32) for x in NORMALIZATION[dataset])
    if images.shape[-1] != mean.size:
        raise ValueError(f"images of {dataset} must have {mean.size} channels, got shape {images.shape}")
    scaled = images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)
    return (scaled - mean) / std


def random_crop_flip(rng: np.random.Generator, images: np.ndarray, *, pad: int, flip: bool = True) -> np.ndarray:
    """Random crop after zero padding by ``pad``, and a random horizontal flip, per image."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy, dx = rng.integers(0, 2 * pad + 1, size=(2, n))
    rows = dy[:, None] + np.arange(h)[None, :]
    cols = dx[:, None] + np.arange(w)[None, :]
    out = padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if flip:
        mirror = rng.random(n) < 0.5
        out[mirror] = out[mirror, :, ::-1]
    return out


def cutout(rng: np.random.Generator, images: np.ndarray, *, size: int) -> np.ndarray:
    """Zero one ``size`` x ``size`` square per image (clipped at the border), centred at random."""
    n, h, w, _ = images.shape
    top = rng.integers(0, h, n)[:, None] - size // 2
    left = rng.integers(0, w, n)[:, None] - size // 2
    rows = (np.arange(h)[None, :] >= top) & (np.arange(h)[None, :] < top + size)
    cols = (np.arange(w)[None, :] >= left) & (np.arange(w)[None, :] < left + size)
    mask = rows[:, :, None] & cols[:, None, :]
    return np.where(mask[..., None], np.zeros((), images.dtype), images)


def batches(
    split: Split | StreamingSplit,
    *,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    start_batch: int = 0,
    augment=None,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(images, labels)`` batches; the order depends only on ``(seed, epoch)``.

    Args:
      split: the data.
      batch_size: images per batch.
      seed, epoch: the permutation and augmentation of this epoch are drawn from both, so a
        resumed run sees exactly the batches an uninterrupted run would.
      shuffle: permute the examples.
      drop_remainder: drop the last partial batch.
      start_batch: skip this many batches (resuming mid-epoch).
      augment: ``augment(rng, images) -> images`` applied per batch, or ``None``.
      process_index, process_count: in a multi-host run each process yields only its
        ``batch_size / process_count`` rows of every global batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} must be a multiple of process_count {process_count}")
    local = batch_size // process_count
    count = num_examples(split)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(count) if shuffle else np.arange(count)
    stop = count - count % batch_size if drop_remainder else count
    for index, begin in enumerate(range(0, stop, batch_size)):
        if index < start_batch:
            continue
        # One stream per (seed, epoch, batch) and, in multi-host runs, per process.
        batch_rng = np.random.default_rng([seed, epoch, index] + ([process_index] if process_count > 1 else []))
        rows = order[begin : begin + batch_size][process_index * local : (process_index + 1) * local]
        images, labels = take(split, rows, batch_rng)
        if augment is not None:
            images = augment(batch_rng, images)
        yield images, labels


def num_batches(count: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Batches of ``batch_size`` in ``count`` examples: whole ones only, or with the last partial one
    (``drop_remainder=False``)."""
    return count // batch_size if drop_remainder else -(-count // batch_size)


def train_transform(dataset: str, *, pad: int = 0, cutout_size: int = 0, flip: bool = True, autoaugment: bool = False):
    """The reference recipe's training augmentation as one ``augment(rng, raw_images)``.

    In the reference order: AutoAugment's CIFAR policy (on uint8 pixels, when asked), random crop
    after ``pad`` zero padding and horizontal flip (when ``pad`` > 0), normalisation for
    ``dataset``, then Cutout (zeros in normalised space, i.e. the mean colour).
    """

    def augment(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
        if autoaugment:
            from offsetjax.training.autoaugment import cifar10_autoaugment

            images = cifar10_autoaugment(rng, images)
        if pad:
            images = random_crop_flip(rng, images, pad=pad, flip=flip)
        images = normalize(images, dataset)
        return cutout(rng, images, size=cutout_size) if cutout_size else images

    return augment


__all__: Sequence[str] = [
    "DEBIAN_FASHION_MNIST",
    "NORMALIZATION",
    "Split",
    "StreamingSplit",
    "batches",
    "cutout",
    "load_digits",
    "load_idx",
    "load_tfds",
    "imagenet_eval_preprocess",
    "imagenet_train_preprocess",
    "normalize",
    "num_batches",
    "num_examples",
    "random_crop_flip",
    "read_idx",
    "source_to_split",
    "take",
    "train_transform",
]
