"""A tiny seeded recipe for tests: random 3x8x8 images, ResNet-14 teacher -> ResNet-8 student.

Environment knobs (read at import, so a subprocess can be steered):
  LITCACHE_TINY_SAMPLES   train samples (default 48)
  LITCACHE_TINY_DELAY     seconds to sleep per sample read (to make extraction slow enough to kill)
"""

from __future__ import annotations

import os
import time

import torch
from torch.utils.data import Dataset

from litcache import CropFlip, Recipe, TrainConfig
from litcache.zoo import CifarResNet, cifar_resnet

SAMPLES = {"train": int(os.environ.get("LITCACHE_TINY_SAMPLES", "48")), "test": 16}
DELAY = float(os.environ.get("LITCACHE_TINY_DELAY", "0"))
CLASSES = 4


class RandomImages(Dataset):
    def __init__(self, split: str) -> None:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = SAMPLES[split]
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, CLASSES, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if DELAY:
            time.sleep(DELAY)
        return self.x[i], int(self.y[i])


def resnet(depth: int):
    return lambda: cifar_resnet(depth, widths=(4, 8, 8), in_channels=3, num_classes=CLASSES)


recipe = Recipe(
    name="tiny",
    build_teacher=resnet(14),
    students={"resnet8": resnet(8)},
    student_depths=lambda depths: CifarResNet(depths, widths=(4, 8, 8), in_channels=3, num_classes=CLASSES),
    stem="stem",
    sections=("layer1", "layer2", "layer3"),
    head="head",
    load_split=RandomImages,
    num_classes=CLASSES,
    augment=CropFlip(padding=1, flip=True),
    teacher_training=TrainConfig(epochs=2, batch_size=16, lr=0.05),
)
