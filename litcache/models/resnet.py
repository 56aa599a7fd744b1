"""CIFAR-style ResNets (He et al. 2016, section 4.2) with option-A shortcuts: when a block changes
shape, the shortcut subsamples by 2 and zero-pads the new channels, so it has no parameters.
Depth = 6n + 2 for n blocks per stage; a block library mixes stages of different depths, where a stage
of 0 blocks is a pointwise linear map (``PointwiseMap``), fitted by least squares rather than trained."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["BasicBlock", "PointwiseMap", "CifarResNet", "cifar_resnet"]


class _ZeroPadShortcut(nn.Module):
    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = _ZeroPadShortcut(out_channels - in_channels)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PointwiseMap(nn.Module):
    """A stage of no blocks: ``y = W x + b`` at every (strided) pixel, a 1x1 convolution. It maps a
    stage's input to its output shape, so a library can replace a whole stage by it; its weights come
    from a least-squares fit on stored boundaries (``litcache.library``), not from training."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Subsampled, then a 1x1 convolution of stride 1: the strided 1x1 convolution's map, whose backward in
        # channels_last on one CPU thread crashes torch 2.14 for few channels (4 -> 8, stride 2: a double free).
        return self.conv(x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x)


class CifarResNet(nn.Module):
    """stem (conv, BN, ReLU) -> layer1..3 -> head (pool, flatten, linear). ``blocks_per_stage`` is one
    count for every stage, or one per stage (0: a ``PointwiseMap``)."""

    def __init__(self, blocks_per_stage: int | Sequence[int], widths: tuple[int, int, int] = (16, 32, 64),
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        per_stage = [blocks_per_stage] * 3 if isinstance(blocks_per_stage, int) else list(blocks_per_stage)
        if len(per_stage) != len(widths) or any(not isinstance(b, int) or b < 0 for b in per_stage):
            raise ValueError(f"Expected {len(widths)} block counts >= 0, one per stage, got {blocks_per_stage!r}.")
        self.depth = 2 * sum(per_stage) + 2 + per_stage.count(0)  # a PointwiseMap is one layer
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages, channels = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, per_stage)):
            blocks: list[nn.Module] = []
            for b in range(count):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
            if not count:
                blocks.append(PointwiseMap(channels, width, 2 if i > 0 else 1))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def cifar_resnet(depth: int, **kwargs) -> CifarResNet:
    """ResNet-``depth`` for depth = 6n + 2 (20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"Expected a CIFAR ResNet depth of the form 6n + 2 (8, 14, 20, 32, ...), got {depth} instead.")
    return CifarResNet((depth - 2) // 6, **kwargs)
