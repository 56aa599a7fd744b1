"""The tiny recipe with a teacher whose stem output exceeds the float16 range for some inputs.

Train samples 20 and 37 are filled with 100.0; the stem scales its output by 1e6 for any input
whose largest |value| exceeds 50: finite in float32 and bfloat16, Inf once cast to float16.
Module names and parameters are the tiny teacher's.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from litcache import load_recipe

MARKED = (20, 37)
base = load_recipe(Path(__file__).with_name("tiny.py"))


class MarkedImages(Dataset):
    def __init__(self, split: str) -> None:
        self.inner = base.load_split(split)
        self.marked = MARKED if split == "train" else ()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        x, y = self.inner[i]
        return (torch.full_like(x, 100.0) if i in self.marked else x), y


class LoudStem(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        loud = x.flatten(1).abs().amax(1) > 50
        return torch.where(loud[:, None, None, None], out * 1e6 + 1e5, out)


def build_teacher() -> nn.Module:
    model = base.build_teacher()
    model.stem = LoudStem(*model.stem)
    return model


recipe = replace(base, name="tiny_overflow", build_teacher=build_teacher, load_split=MarkedImages)
