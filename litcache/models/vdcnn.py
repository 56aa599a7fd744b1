"""VDCNN (Conneau et al. 2017, "Very Deep Convolutional Networks for Text Classification"):
character-level temporal convolutions for text, depth 9/17/29/49."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CharacterStem", "TemporalConvBlock", "KMaxPool1d", "VDCNN", "vdcnn", "VDCNN_BLOCKS"]


#: Temporal conv blocks per stage for each depth (paper, Table 2). Depth counts the convolutions:
#: the first conv + 2 per block (the fully connected head is not counted).
VDCNN_BLOCKS = {9: (1, 1, 1, 1), 17: (2, 2, 2, 2), 29: (5, 5, 2, 2), 49: (8, 8, 5, 3)}


class CharacterStem(nn.Module):
    """Character indices (N, L) int64 -> embedding (N, E, L) -> first temporal conv (N, C, L).

    The lookup lives in the stem so that every stored boundary is a float tensor; the stem is
    frozen in students, so integer inputs never need a gradient.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, channels: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.conv = nn.Conv1d(embedding_dim, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.embedding(x).transpose(1, 2))


class TemporalConvBlock(nn.Module):
    """[max-pool /2] -> (conv3, BN, ReLU) x 2; no shortcut (the paper's best depths <= 29 and
    the LIT authors' VDCNN use none). Pooling sits at the input of a stage's first block, as in
    the LIT authors' "maxpool" variant, so a stage's output is at its own resolution."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.pool = nn.MaxPool1d(3, stride=2, padding=1) if downsample else nn.Identity()
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(self.pool(x))))
        return F.relu(self.bn2(self.conv2(x)))


class KMaxPool1d(nn.Module):
    """The k largest values of each channel over time, kept in their temporal order."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.topk(self.k, dim=2).indices.sort(dim=2).values
        return x.gather(2, index)


class VDCNN(nn.Module):
    """stem (embedding + first conv) -> layer1..4 (64/128/256/512 filters, halving the length
    between stages) -> head (k-max pooling, 3 fully connected layers).

    Sequences must be at least ``8 * k`` long so the last stage keeps ``k`` positions.
    """

    def __init__(self, blocks: tuple[int, int, int, int], widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 num_classes: int = 2, vocab_size: int = 69, embedding_dim: int = 16, k: int = 8,
                 hidden: int = 2048) -> None:
        super().__init__()
        self.depth = 1 + 2 * sum(blocks)
        self.stem = CharacterStem(vocab_size, embedding_dim, widths[0])
        stages, channels = [], widths[0]
        for i, (count, width) in enumerate(zip(blocks, widths)):
            layers = []
            for b in range(count):
                layers.append(TemporalConvBlock(channels, width, downsample=(i > 0 and b == 0)))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.head = nn.Sequential(
            KMaxPool1d(k), nn.Flatten(),
            nn.Linear(channels * k, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x))))))


def vdcnn(depth: int, **kwargs) -> VDCNN:
    """VDCNN-``depth`` for depth in 9, 17, 29, 49."""
    if depth not in VDCNN_BLOCKS:
        raise ValueError(f"Expected a VDCNN depth in {sorted(VDCNN_BLOCKS)}, got {depth} instead.")
    return VDCNN(VDCNN_BLOCKS[depth], **kwargs)
