"""Model families written in the project, for recipes to share.

Every family exposes the names a recipe cuts at: ``stem``, the stages (``layer1``...) or
``blocks``, and ``head``; ``forward`` is exactly stem -> stages -> head, so the split check holds.

- CIFAR-style ResNets (He et al. 2016, section 4.2) with option-A shortcuts: when a block
  changes shape, the shortcut subsamples by 2 and zero-pads the new channels, so it has no
  parameters. Depth = 6n + 2 for n blocks per stage.
- CIFAR-style ResNeXts (Xie et al. 2017, section 5.3): bottleneck blocks with a grouped 3x3
  conv, 3 stages. Depth = 9n + 2.
- VDCNN (Conneau et al. 2017): character-level temporal convolutions for text, depth 9/17/29/49.
- The StarGAN generator (Choi et al. 2018): down-sampling convs, residual blocks, up-sampling.
- Vision Transformers (Dosovitskiy et al. 2021) for CIFAR: torchvision's ``VisionTransformer``
  itself, cut by callables (``vit_stem``, ``vit_section``, ``vit_head``) since its class token and
  position embedding are added in functional code, not by a module of their own.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from .errors import RecipeError

__all__ = [
    "CifarResNet", "cifar_resnet",
    "CifarResNeXt", "cifar_resnext",
    "VDCNN", "vdcnn", "VDCNN_BLOCKS",
    "StarGANGenerator", "stargan_generator", "convert_stargan_state",
    "cifar_vit", "ViTStem", "ViTHead", "vit_stem", "vit_section", "vit_head", "block_group",
]


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


class CifarResNet(nn.Module):
    """stem (conv, BN, ReLU) -> layer1..3 -> head (pool, flatten, linear)."""

    def __init__(self, blocks_per_stage: int, widths: tuple[int, int, int] = (16, 32, 64),
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.depth = 6 * blocks_per_stage + 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)
        )
        stages, channels = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if (i > 0 and b == 0) else 1
                blocks.append(BasicBlock(channels, width, stride))
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


# ---------------------------------------------------------------------------------------------
# CIFAR ResNeXt (Xie et al. 2017, "Aggregated Residual Transformations", section 5.3)


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
            # Named "shortcut" so that litcache.evaluate.depth does not count it as a layer.
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
        raise ValueError(f"Expected a CIFAR ResNeXt depth of the form 9n + 2 (11, 20, 29, ..., 110), got {depth} instead.")
    return CifarResNeXt((depth - 2) // 9, **kwargs)


# ---------------------------------------------------------------------------------------------
# VDCNN (Conneau et al. 2017, "Very Deep Convolutional Networks for Text Classification")

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


# ---------------------------------------------------------------------------------------------
# StarGAN generator (Choi et al. 2018)


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    # Per-image statistics in train and eval mode alike. StarGAN's code sets
    # track_running_stats=True but never switches the generator to eval mode, so its images come
    # from per-image statistics; litcache runs the teacher in eval mode, where running statistics
    # would replace them and change every output.
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class InstanceNormResidualBlock(nn.Module):
    """x + (conv3, IN, ReLU, conv3, IN)(x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _instance_norm(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), _instance_norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class StarGANGenerator(nn.Module):
    """stem (7x7 conv and two stride-2 convs, each with InstanceNorm and ReLU) -> blocks
    (residual blocks at 1/4 resolution) -> head (two stride-2 transposed convs, 7x7 conv, tanh).

    The input is one tensor (N, 3 + c_dim, H, W): the image in [-1, 1] and the target attribute
    vector broadcast to constant maps (the dataset concatenates them). Output (N, 3, H, W) in
    [-1, 1]. H and W must be multiples of 4.
    """

    def __init__(self, residual_blocks: int = 6, conv_dim: int = 64, c_dim: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _instance_norm(conv_dim), nn.ReLU(inplace=True)]
        channels = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), _instance_norm(channels * 2), nn.ReLU(inplace=True)]
            channels *= 2
        self.stem = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*(InstanceNormResidualBlock(channels) for _ in range(residual_blocks)))
        layers = []
        for _ in range(2):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False), _instance_norm(channels // 2),
                       nn.ReLU(inplace=True)]
            channels //= 2
        layers += [nn.Conv2d(channels, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def stargan_generator(residual_blocks: int = 6, **kwargs) -> StarGANGenerator:
    if residual_blocks < 1:
        raise ValueError(f"Expected at least 1 residual block, got {residual_blocks} instead.")
    return StarGANGenerator(residual_blocks, **kwargs)


_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


def convert_stargan_state(state: dict, residual_blocks: int = 6) -> dict:
    """A generator state dict from StarGAN's or the LIT authors' code, renamed for StarGANGenerator.

    StarGAN keeps everything in ``main.N`` (stem = main.0-8, blocks = main.9.., head = the rest);
    the LIT code uses ``downsampling_layers``, ``bottleneck_section1`` and ``upsampling_layers``.
    Their InstanceNorm running statistics are dropped: they were never used (see _instance_norm).
    """
    renamed = {}
    for key, value in state.items():
        if key.rsplit(".", 1)[-1] in _RUNNING_STATS:
            continue
        if key.startswith(("downsampling_layers.", "bottleneck_section1.", "upsampling_layers.")):
            prefix, rest = key.split(".", 1)
            new = {"downsampling_layers": "stem", "bottleneck_section1": "blocks", "upsampling_layers": "head"}[prefix] + "." + rest
        elif key.startswith("main."):
            _, index, rest = key.split(".", 2)
            i = int(index)
            if i < 9:
                new = f"stem.{i}.{rest}"
            elif i < 9 + residual_blocks:
                new = f"blocks.{i - 9}.{rest}"
            else:
                new = f"head.{i - 9 - residual_blocks}.{rest}"
        else:
            raise ValueError(f"Expected StarGAN generator keys (main.N.* or downsampling_layers/bottleneck_section1/"
                             f"upsampling_layers.*), found {key!r}.")
        renamed[new] = value
    return renamed


# ---------------------------------------------------------------------------------------------
# Vision Transformer for CIFAR (torchvision's VisionTransformer, cut at groups of encoder blocks)


def cifar_vit(depth: int = 8, width: int = 192, heads: int = 3, mlp: int = 384, patch: int = 4, image: int = 32,
              num_classes: int = 10, dropout: float = 0.0) -> VisionTransformer:
    """torchvision's ViT for small images: (image / patch)^2 patch tokens + a class token, ``depth``
    pre-LayerNorm encoder blocks of ``width``. A teacher checkpoint is its plain state dict."""
    return VisionTransformer(image_size=image, patch_size=patch, num_layers=depth, num_heads=heads, hidden_dim=width,
                             mlp_dim=mlp, dropout=dropout, num_classes=num_classes)


class ViTStem(nn.Module):
    """Patch projection, class token, position embedding and dropout of a ``VisionTransformer``:
    image (N, 3, H, W) -> residual stream (N, 1 + patches, width). Shares the model's parameters."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, width, h, w) -> (N, h * w, width), as torchvision
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.dropout(x + self.pos_embedding)


class ViTHead(nn.Module):
    """Final LayerNorm and classifier on the class token: (N, tokens, width) -> logits."""

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.ln = vit.encoder.ln
        self.heads = vit.heads

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(self.ln(z)[:, 0])


def block_group(blocks: Sequence[nn.Module], index: int, count: int) -> nn.Sequential:
    """The ``index``-th of ``count`` equal runs of consecutive ``blocks``, sharing their modules:
    a section of a transformer, for teacher and student depths alike (8 blocks, 4 sections: 2 each)."""
    if count < 1 or len(blocks) % count:
        raise RecipeError(f"Expected a transformer depth divisible by the recipe's {count} sections, got {len(blocks)} "
                          f"blocks instead: choose a depth that is a multiple of {count}, or another section count.")
    size = len(blocks) // count
    return nn.Sequential(*list(blocks)[index * size:(index + 1) * size])


def vit_stem(vit: VisionTransformer) -> ViTStem:
    return ViTStem(vit)


def vit_section(index: int, count: int):
    """A recipe's ModuleRef for section ``index`` (from 0) of ``count``: a callable of the model."""

    def section(vit: VisionTransformer) -> nn.Sequential:
        return block_group(vit.encoder.layers, index, count)

    section.__qualname__ = f"vit_section({index}, {count})"
    return section


def vit_head(vit: VisionTransformer) -> ViTHead:
    return ViTHead(vit)
