"""CIFAR-style ResNeXts (Xie et al. 2017, "Aggregated Residual Transformations", section 5.3):
bottleneck blocks with a grouped 3x3 conv, 3 stages. Depth = 9n + 2."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ResNeXtBottleneck", "CifarResNeXt", "cifar_resnext"]



class ResNeXtBottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 (``cardinality`` groups of ``group_width``) -> 1x1 expand, plus shortcut.

    The shortcut is a projection (1x1 conv + BN) when the shape changes, as in the ResNeXt paper:
    a bottleneck stage widens 4x, which zero-padding would mostly fill with zeros.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, cardinality: int, group_width: int) -> None:
        super().__init__()
        inner = cardinality * group_width
        self.conv_reduce = nn.Conv2d(in_channels, inner, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(inner)
        self.conv_group = nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False)
        self.bn_group = nn.BatchNorm2d(inner)
        self.conv_expand = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            # Named "shortcut" so that litcache.training.metrics.depth does not count it as a layer.
            self.shortcut: nn.Module = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                                     nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(nn.Module):
    """stem (3x3 conv, BN, ReLU) -> layer1..3 (bottlenecks) -> head (pool, flatten, linear).

    ``widths`` are the stage output widths; the grouped convs are ``cardinality`` groups of
    ``base_width * 2**stage`` channels (the bottleneck width doubles when the map halves).
    The defaults are the paper's CIFAR template ResNeXt-29 (8x64d): stem 64, stages 256/512/1024.
    """

    def __init__(self, blocks_per_stage: int, cardinality: int = 8, base_width: int = 64,
                 widths: tuple[int, int, int] = (256, 512, 1024), stem_width: int | None = None,
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.depth = 9 * blocks_per_stage + 2
        stem_width = stem_width or widths[0] // 4
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True)
        )
        stages, channels = [], stem_width
        for i, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(ResNeXtBottleneck(channels, width, stride, cardinality, base_width * 2**i))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def cifar_resnext(depth: int, **kwargs) -> CifarResNeXt:
    """ResNeXt-``depth`` for depth = 9n + 2 (11, 20, 29, ..., 110): 3 convs per bottleneck, 3 stages."""
    if depth < 11 or (depth - 2) % 9:
        raise ValueError("Expected a CIFAR ResNeXt depth of the form 9n + 2 (11, 20, 29, ..., 110), got "
                         f"{depth} instead.")
    return CifarResNeXt((depth - 2) // 9, **kwargs)
