"""Amazon reviews, character-level VDCNN-29 teacher -> VDCNN-17 (or 9) student (LIT paper: 1.7x by depth).

Each review (title + " " + text, lower-cased) becomes LITCACHE_AMAZON_SEQ_LEN character indices
(0 = padding, 1 = unknown character, 2.. = the 67-character alphabet below: 69 tokens in all).
The stem is the character embedding + first temporal conv, so every stored boundary is a float
tensor; sections are the four stages (64/128/256/512 filters); the head is k-max pooling and the
three fully connected layers. Hyperparameters are the LIT authors' released VDCNN code. No
per-view augmentation (one view per review).

Data: the standard CSV of Zhang et al. 2015 (no header; columns label, title, text; label 1..C),
encoded once into a uint8 array cached in a .litcache/ folder next to the CSV (or LITCACHE_CACHE_DIR)
and memory-mapped afterwards:
  LITCACHE_AMAZON_CSV        train.csv (required for the train split)
  LITCACHE_AMAZON_TEST_CSV   test.csv (required for the test split)
  LITCACHE_AMAZON_CLASSES    2 for Amazon Review Polarity (labels 1/2, the default); 5 for Amazon
                             Review Full, which the LIT authors' released code uses (read at import)

Model and sequence size, read when a split is loaded or a model is built (defaults: the paper's):
  LITCACHE_AMAZON_SEQ_LEN    characters per review (default 1014; at least 64 = 8 * k for k-max 8)
  LITCACHE_VDCNN_TEACHER     teacher depth, 9/17/29/49 (default 29; 17 for the 17 -> 9 pair)
  LITCACHE_VDCNN_WIDTHS      filters of the four stages (default 64,128,256,512)
  LITCACHE_VDCNN_HIDDEN      width of the two hidden fully connected layers (default 2048)
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from litcache.recipe import import_beside
from litcache import DistillConfig, Recipe, TrainConfig
from litcache.errors import RecipeError
from litcache.zoo import vdcnn

#: The LIT authors' alphabet, with an ASCII "^" where theirs has the look-alike U+02C6.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/|_#$%^&*~`+=<>()[]{} "
PAD, UNKNOWN = 0, 1
VOCAB_SIZE = len(ALPHABET) + 2  # 69




_data = import_beside(__file__, "_data")
NUM_CLASSES = _data.env_int("LITCACHE_AMAZON_CLASSES", 2)

# Code point -> token for ASCII; everything else is UNKNOWN.
_ASCII_TOKENS = np.full(128, UNKNOWN, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _ASCII_TOKENS[ord(_c)] = _i + 2


def encode(text: str, length: int) -> np.ndarray:
    """Lower-cased text -> ``length`` uint8 tokens, truncated or padded with PAD."""
    # Vectorized over the code points: a Python loop per character would take hours on 3.6M reviews.
    text = text[:length].lower()[:length]  # lower() can lengthen a few characters
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    out = np.full(length, PAD, dtype=np.uint8)
    out[: len(points)] = np.where(points < 128, _ASCII_TOKENS[np.minimum(points, 127)], UNKNOWN)
    return out


def _encode_csv(path: Path, length: int) -> dict[str, np.ndarray]:
    # Two passes: count rows, then write into a preallocated array (Amazon is 3.6M x 1014 bytes).
    with path.open(newline="", encoding="utf-8") as f:
        rows = sum(1 for _ in csv.reader(f))
    tokens = np.empty((rows, length), dtype=np.uint8)
    labels = np.empty(rows, dtype=np.int64)
    with path.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if len(row) < 2 or not row[0].strip().isdigit() or not 1 <= int(row[0]) <= NUM_CLASSES:
                raise RecipeError(f"Expected row {i + 1} of {str(path)!r} to be label (1..{NUM_CLASSES}), title, text; "
                                  f"got {row[:1]!r}. For the 5-class Amazon Review Full set LITCACHE_AMAZON_CLASSES=5.")
            labels[i] = int(row[0]) - 1
            tokens[i] = encode(" ".join(row[1:]), length)
    return {"tokens": tokens, "labels": labels}


class CharacterReviews(Dataset):
    """Row i -> (character indices as a LongTensor (length,), label)."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.tokens[i].astype(np.int64)), int(self.labels[i])


def load_split(split: str) -> CharacterReviews:
    var = "LITCACHE_AMAZON_CSV" if split == "train" else "LITCACHE_AMAZON_TEST_CSV"
    path = _data.env_path(var)
    if path is None:
        raise RecipeError(
            f"Expected the Amazon reviews {split} CSV in environment variable {var}, but it is not set. Set "
            "LITCACHE_AMAZON_CSV=.../train.csv and LITCACHE_AMAZON_TEST_CSV=.../test.csv (Zhang et al. 2015 format: "
            "label, title, text; amazon_review_polarity_csv or, with LITCACHE_AMAZON_CLASSES=5, amazon_review_full_csv)."
        )
    if not path.is_file():
        raise RecipeError(f"Expected {var}={str(path)!r} to be a CSV file, but there is no such file.")
    length = _data.env_int("LITCACHE_AMAZON_SEQ_LEN", 1014)
    key = _data.files_key([path], length, ALPHABET, NUM_CLASSES)
    arrays = _data.cached_arrays(_data.cache_dir(path) / f"{path.stem}-{key}", lambda: _encode_csv(path, length), mmap=True)
    return CharacterReviews(arrays["tokens"], arrays["labels"])


def model(depth: int | None = None):
    """A builder of VDCNN-``depth`` (None: the teacher depth from LITCACHE_VDCNN_TEACHER)."""

    def build():
        d = depth if depth is not None else _data.env_int("LITCACHE_VDCNN_TEACHER", 29)
        return vdcnn(d, widths=_data.env_ints("LITCACHE_VDCNN_WIDTHS", (64, 128, 256, 512)), num_classes=NUM_CLASSES,
                     vocab_size=VOCAB_SIZE, hidden=_data.env_int("LITCACHE_VDCNN_HIDDEN", 2048))

    return build


recipe = Recipe(
    name="amazon_vdcnn",
    description=f"Amazon reviews ({NUM_CLASSES} classes, Zhang et al. CSV), character-level VDCNN-29 -> VDCNN-17/9, "
                "stem = embedding + first conv, sections = the four stages",
    build_teacher=model(),
    students={"vdcnn17": model(17), "vdcnn9": model(9)},
    stem="stem",
    sections=("layer1", "layer2", "layer3", "layer4"),
    head="head",
    load_split=load_split,
    num_classes=NUM_CLASSES,
    augment=None,
    teacher_checkpoint="runs/amazon_vdcnn/teacher.pt",
    # Conneau et al. 2017 train as Zhang et al. 2015: SGD, batch 128, momentum 0.9, lr 0.01 halved
    # every 3 epochs, 10 times. Weight decay is not stated there; this is the LIT authors' value.
    teacher_training=TrainConfig(epochs=30, batch_size=128, lr=0.01, momentum=0.9, weight_decay=1e-4,
                                 milestones=tuple(range(3, 30, 3)), gamma=0.5),
    # The LIT authors' released VDCNN configuration: LIT lr x0.5 at 3, 6, 9, 12; fine-tune x0.1 at 3, 6, 9.
    distill=DistillConfig(
        lit=TrainConfig(epochs=15, batch_size=128, lr=0.01, momentum=0.9, weight_decay=1e-4,
                        milestones=(3, 6, 9, 12), gamma=0.5),
        finetune=TrainConfig(epochs=10, batch_size=128, lr=0.001, momentum=0.9, weight_decay=1e-4,
                             milestones=(3, 6, 9), gamma=0.1),
        alpha=0.95, tau=6.0, beta=0.05,
    ),
)
