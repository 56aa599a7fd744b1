"""The StarGAN generator (Choi et al. 2018): down-sampling convs, residual blocks, up-sampling;
and the conversion of the released checkpoints' keys."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["InstanceNormResidualBlock", "StarGANGenerator", "stargan_generator", "convert_stargan_state"]



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
        layers: list[nn.Module] = [nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False), _instance_norm(conv_dim),
                                   nn.ReLU(inplace=True)]
        channels = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), _instance_norm(channels * 2),
                       nn.ReLU(inplace=True)]
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
            new = {"downsampling_layers": "stem", "bottleneck_section1": "blocks",
                   "upsampling_layers": "head"}[prefix] + "." + rest
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
