"""Deterministic per-view augmentation.

A view is made in two steps so that any stored row can be replayed exactly:
``sample`` draws the view's parameters from a generator seeded by (seed, sample, view),
and ``apply`` makes the view from those parameters alone. The parameters are stored
next to the teacher's outputs (``view_params``), so replay never needs the generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
import xxhash

__all__ = ["Augmentation", "CropFlip", "view_seed", "view_generator"]


@runtime_checkable
class Augmentation(Protocol):
    """What a recipe's per-view augmentation provides."""

    #: Names of the numeric parameters one view is made from, in storage order.
    param_names: tuple[str, ...]

    def sample(self, generator: torch.Generator, shape: torch.Size) -> tuple[float, ...]:
        """Draw one view's parameters for an input of ``shape`` (C, H, W)."""

    def apply(self, x: torch.Tensor, params: Sequence[float]) -> torch.Tensor:
        """Make the view of one input ``x`` (C, H, W) from its parameters."""

    def describe(self) -> dict:
        """JSON-able description, recorded in the store manifest."""


def view_seed(seed: int, index: int, view: int) -> int:
    """A 63-bit seed for view ``view`` of sample ``index``; stable across platforms and runs."""
    return xxhash.xxh3_64_intdigest(f"litcache-view:{seed}:{index}:{view}".encode()) >> 1


def view_generator(seed: int, index: int, view: int) -> torch.Generator:
    return torch.Generator().manual_seed(view_seed(seed, index, view))


@dataclass(frozen=True)
class CropFlip:
    """Random crop of the original size from a zero-padded input, then optional horizontal flip.

    The standard CIFAR augmentation (``padding=4, flip=True``).
    """

    padding: int = 4
    flip: bool = True
    param_names: tuple[str, ...] = ("dy", "dx", "flip")

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"Expected padding >= 0, got {self.padding} instead.")

    def sample(self, generator: torch.Generator, shape: torch.Size) -> tuple[float, ...]:
        span = 2 * self.padding + 1
        draws = torch.randint(0, span, (2,), generator=generator)
        flip = int(torch.rand((), generator=generator).item() < 0.5) if self.flip else 0
        return (float(draws[0]), float(draws[1]), float(flip))

    def apply(self, x: torch.Tensor, params: Sequence[float]) -> torch.Tensor:
        dy, dx, flip = (int(p) for p in params)
        _, h, w = x.shape
        p = self.padding
        out = F.pad(x, (p, p, p, p))[:, dy : dy + h, dx : dx + w]
        return out.flip(-1) if flip else out

    def describe(self) -> dict:
        return {"type": "CropFlip", "padding": self.padding, "flip": self.flip}
