"""The tiny recipe with a teacher that outputs NaN for some inputs.

Train samples 20 and 37 are filled with 100.0; the stem returns NaN for any input whose largest
|value| exceeds 50. Module names stay stem/layer1..3/head and the parameters are the tiny
teacher's, so the tiny teacher checkpoints fit.
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


class NanStem(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        bad = x.flatten(1).abs().amax(1) > 50
        return torch.where(bad[:, None, None, None], torch.full_like(out, float("nan")), out)


def build_teacher() -> nn.Module:
    model = base.build_teacher()
    model.stem = NanStem(*model.stem)
    return model


recipe = replace(base, name="tiny_nan", build_teacher=build_teacher, load_split=MarkedImages)
