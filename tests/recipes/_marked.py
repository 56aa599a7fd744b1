"""Shared by the test recipes that make the tiny teacher misbehave on marked training samples."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from litcache import load_recipe

base = load_recipe(Path(__file__).with_name("tiny.py"))


class MarkedImages(Dataset):
    """The tiny split, with the training samples in ``marked`` filled with ``value``."""

    def __init__(self, split: str, marked, value: float) -> None:
        self.inner = base.load_split(split)
        self.marked = marked if split == "train" else ()
        self.value = value

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        x, y = self.inner[i]
        return (torch.full_like(x, self.value) if i in self.marked else x), y


def teacher_with_stem(stem_class: type[nn.Sequential]):
    """A builder of the tiny teacher whose stem runs as ``stem_class`` (same names and parameters)."""

    def build() -> nn.Module:
        model = base.build_teacher()
        model.stem = stem_class(*model.stem)
        return model

    return build
