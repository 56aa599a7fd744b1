"""Helpers shared by the recipes in this folder: environment settings, a decode-once array cache,
and CIFAR-10 loading. Recipes import this file by path (``_sibling("_data")``): ``pipelines/`` is
a folder of scripts, not a package.

Environment variables read here:
  LITCACHE_CACHE_DIR      where decoded arrays are cached (default: a ``.litcache`` folder inside the
                          dataset's folder, or next to a CSV file)
  LITCACHE_CIFAR10_ROOT   a torchvision CIFAR-10 root (holds ``cifar-10-batches-py``), read with
                          ``CIFAR10(root, download=False)``; takes precedence over the next one
  LITCACHE_CIFAR10_DIR    an ImageFolder directory with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import xxhash
from torch.utils.data import Dataset

from litcache.errors import RecipeError

# Per-channel statistics of the CIFAR-10 training images.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: A black pixel after normalisation: what a crop padded with zeros in uint8 (as
#: ../shared/teachers/train_cifar_teacher.py pads) holds in its border.
CIFAR10_BLACK = tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# --- environment ------------------------------------------------------------------------------


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise RecipeError(f"Expected environment variable {name} to be an integer, got {value!r} instead.") from None


def env_ints(name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """A comma-separated list of integers, e.g. LITCACHE_CIFAR_WIDTHS=16,32,64."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        parsed = tuple(int(v) for v in value.split(","))
    except ValueError:
        parsed = ()
    if len(parsed) != len(default):
        raise RecipeError(f"Expected environment variable {name} to be {len(default)} comma-separated integers "
                          f"(default {','.join(map(str, default))}), got {value!r} instead.")
    return parsed


def env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


# --- decode-once cache --------------------------------------------------------------------------


def cache_dir(source: Path) -> Path:
    """Where arrays decoded from ``source`` (a folder or a file) are cached."""
    configured = env_path("LITCACHE_CACHE_DIR")
    if configured is not None:
        return configured
    return (source if source.is_dir() else source.parent) / ".litcache"


def files_key(paths: list[Path], *extra: object) -> str:
    """A short key that changes when any file is added, removed, resized or touched."""
    return _stats_key([(p.name, p.stat()) for p in paths], *extra)


def _stats_key(stats, *extra: object) -> str:
    h = xxhash.xxh3_64()
    for name, st in stats:
        h.update(f"{name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(repr(extra).encode())
    return h.hexdigest()


def _folder_stats(folder: Path) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of the files in ``folder``, sorted by name: ``files_key``'s input for a folder of
    50,000 images in a fifth of the time (no Path objects to sort, one scandir)."""
    with os.scandir(folder) as entries:
        return sorted((e.name, e.stat()) for e in entries if e.is_file())


def cached_arrays(path: Path, build: Callable[[], dict[str, np.ndarray]], mmap: bool = False) -> dict[str, np.ndarray]:
    """Arrays saved as ``path/<name>.npy`` by ``build()`` the first time, loaded afterwards.

    Each file is written under a temporary name and renamed, and ``done`` is written last, so an
    interrupted build is redone rather than read. With ``mmap`` the arrays are memory-mapped.
    """
    done = path / "done"
    if not done.exists():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecipeError(f"Cannot create the cache folder {str(path)!r} ({exc.strerror}). "
                              "Set LITCACHE_CACHE_DIR to a writable folder.") from None
        print(f"litcache: decoding once into {path} ...", file=sys.stderr)
        for name, array in build().items():
            tmp = path / f".{name}.{os.getpid()}.npy"
            np.save(tmp, array)
            os.replace(tmp, path / f"{name}.npy")
        done.write_text("ok\n")
    names = sorted(p.stem for p in path.glob("*.npy") if not p.name.startswith("."))
    return {name: np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None) for name in names}


# --- CIFAR-10 -----------------------------------------------------------------------------------


class NormalizedImages(Dataset):
    """uint8 images (N, H, W, C) and labels -> (normalized float32 (C, H, W), int label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        # Kept as uint8 (a quarter of the memory of float32) and normalized per item.
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.tensor(mean).view(-1, 1, 1) * 255
        self.std = torch.tensor(std).view(-1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return (self.images[i].float() - self.mean) / self.std, int(self.labels[i])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Many items at once (what ``litcache train-teacher`` asks for): (inputs (N, C, H, W), labels)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return (self.images[index].float() - self.mean) / self.std, self.labels[index]


def _decode_image_folder(folder: Path) -> dict[str, np.ndarray]:
    """``folder/<class>/*`` in ImageFolder order (classes sorted, files sorted) -> images and labels."""
    from PIL import Image

    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels, shape = [], [], None
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
            if shape is None:
                shape = array.shape
            elif array.shape != shape:
                raise RecipeError(f"Expected every image to be {shape[1]}x{shape[0]} like the first one, "
                                  f"but {str(path)!r} is {array.shape[1]}x{array.shape[0]}.")
            images.append(array)
            labels.append(label)
    return {"images": np.stack(images), "labels": np.asarray(labels, dtype=np.int64)}


def _image_folder_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    folder = root / split
    if not folder.is_dir():
        raise RecipeError(f"Expected LITCACHE_CIFAR10_DIR={str(root)!r} to hold a {split}/ folder with one subfolder "
                          f"per class, but {str(folder)!r} does not exist. Unpack the images with "
                          "`tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR` and point LITCACHE_CIFAR10_DIR at DIR.")
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if [c.name for c in classes] != list(CIFAR10_CLASSES):
        raise RecipeError(f"Expected the CIFAR-10 class folders {', '.join(CIFAR10_CLASSES)} in {str(folder)!r}, "
                          f"found {', '.join(c.name for c in classes) or 'none'}.")
    stats = [stat for c in classes for stat in _folder_stats(c)]
    if not stats:
        raise RecipeError(f"Expected images in {str(folder)!r}, found none.")
    key = _stats_key(stats, split)  # the same key as files_key over the sorted paths
    arrays = cached_arrays(cache_dir(root) / f"cifar10-{split}-{key}", lambda: _decode_image_folder(folder))
    return arrays["images"], arrays["labels"]


def _torchvision_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(str(root), train=split == "train", download=False)
    except RuntimeError as exc:
        raise RecipeError(f"Expected LITCACHE_CIFAR10_ROOT={str(root)!r} to hold torchvision's pickled CIFAR-10 "
                          f"(cifar-10-batches-py/), but torchvision says: {exc}") from None
    return ds.data, np.asarray(ds.targets, dtype=np.int64)


def cifar10_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 32, 32, 3), int64 labels) of ``split`` ("train" or "test")."""
    root = env_path("LITCACHE_CIFAR10_ROOT")
    if root is not None:
        return _torchvision_split(root, split)
    folder = env_path("LITCACHE_CIFAR10_DIR")
    if folder is not None:
        return _image_folder_split(folder, split)
    raise RecipeError(
        "Expected CIFAR-10 data, but neither LITCACHE_CIFAR10_ROOT nor LITCACHE_CIFAR10_DIR is set. Either set "
        "LITCACHE_CIFAR10_ROOT to a torchvision CIFAR-10 root (the folder holding cifar-10-batches-py/; nothing is "
        "downloaded), or unpack the JPEG images with `tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR` and set "
        "LITCACHE_CIFAR10_DIR=DIR (it holds train/<class>/*.jpg and test/<class>/*.jpg; the images are decoded once "
        "into a cache, see LITCACHE_CACHE_DIR)."
    )


def balanced_subset(labels: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``size`` samples, as many of each class as possible, drawn with a fixed seed.
    (A class-sorted split's first N samples, as --limit takes them, would hold only a few classes.)"""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = -(-size // len(classes))
    picks = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes])
    return np.sort(rng.permutation(picks)[:size])


def load_cifar10(split: str) -> NormalizedImages:
    """"train" (the class-balanced LITCACHE_CIFAR10_TRAIN_SUBSET if set), "test", or "val": a class-balanced
    LITCACHE_CIFAR10_VAL (default 5,000) of the training images the subset leaves out, for choices made on
    held-out rows that must not be the test split's (a block library's scores)."""
    images, labels = cifar10_arrays("test" if split == "test" else "train")
    subset = env_int("LITCACHE_CIFAR10_TRAIN_SUBSET", 0) if split != "test" else 0
    if split == "val":
        if not 0 < subset < len(labels):
            raise RecipeError("The 'val' split is training images outside LITCACHE_CIFAR10_TRAIN_SUBSET: set it to a "
                              f"subset smaller than the {len(labels)} training images.")
        rest = np.setdiff1d(np.arange(len(labels)), balanced_subset(labels, subset))
        keep = rest[balanced_subset(labels[rest], min(env_int("LITCACHE_CIFAR10_VAL", 5000), len(rest)), seed=1)]
        images, labels = images[keep], labels[keep]
    elif 0 < subset < len(labels):
        keep = balanced_subset(labels, subset)
        images, labels = images[keep], labels[keep]
    return NormalizedImages(images, labels, CIFAR10_MEAN, CIFAR10_STD)
