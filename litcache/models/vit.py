"""Vision Transformers (Dosovitskiy et al. 2021) for CIFAR: torchvision's ``VisionTransformer`` itself,
cut by callables (``vit_stem``, ``vit_section``, ``vit_head``) since its class token and position
embedding are added in functional code, not by a module of their own."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from torchvision.models.vision_transformer import VisionTransformer

from ..errors import RecipeError

__all__ = ["cifar_vit", "ViTStem", "ViTHead", "block_group", "vit_stem", "vit_section", "vit_head"]



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
