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
    """Random crop of the original size from a padded input, then optional horizontal flip.

    The standard CIFAR augmentation (``padding=4, flip=True``). The padding is 0 unless ``fill``
    gives one value per channel: a recipe whose inputs are normalised pads with the normalised
    value of a black pixel (``-mean / std``) to match a zero-padded uint8 crop.

    ``sample_batch`` and ``apply_batch`` do the same for a whole batch on tensors (random views
    for training from scratch, where per-sample Python would dominate a fast step).
    """

    padding: int = 4
    flip: bool = True
    fill: tuple[float, ...] | None = None
    param_names: tuple[str, ...] = ("dy", "dx", "flip")

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"Expected padding >= 0, got {self.padding} instead.")
        if self.fill is not None:
            object.__setattr__(self, "fill", tuple(float(v) for v in self.fill))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the last two axes of ``x`` (C, H, W) or (N, C, H, W) by ``padding`` with the fill."""
        p = self.padding
        if self.fill is None:
            return F.pad(x, (p, p, p, p))
        channels = x.shape[-3]
        if len(self.fill) != channels:
            raise ValueError(f"CropFlip.fill has {len(self.fill)} values, but the input has {channels} channels.")
        out = torch.empty((*x.shape[:-2], x.shape[-2] + 2 * p, x.shape[-1] + 2 * p), dtype=x.dtype, device=x.device)
        out[...] = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        out[..., p:p + x.shape[-2], p:p + x.shape[-1]] = x
        return out

    def sample(self, generator: torch.Generator, shape: torch.Size) -> tuple[float, ...]:
        span = 2 * self.padding + 1
        draws = torch.randint(0, span, (2,), generator=generator)
        flip = int(torch.rand((), generator=generator).item() < 0.5) if self.flip else 0
        return (float(draws[0]), float(draws[1]), float(flip))

    def apply(self, x: torch.Tensor, params: Sequence[float]) -> torch.Tensor:
        dy, dx, flip = (int(p) for p in params)
        _, h, w = x.shape
        out = self._pad(x)[:, dy : dy + h, dx : dx + w]
        return out.flip(-1) if flip else out

    def sample_batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """Parameters of ``n`` random views, (n, 3) float32 as ``sample`` gives them."""
        span = 2 * self.padding + 1
        shifts = torch.randint(0, span, (n, 2), generator=generator)
        flips = (torch.rand(n, generator=generator) < 0.5) if self.flip else torch.zeros(n, dtype=torch.bool)
        return torch.cat([shifts, flips[:, None].long()], dim=1).float()

    def apply_batch(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The views of a batch ``x`` (N, C, H, W) from ``params`` (N, 3); equal to ``apply`` per row."""
        n, c, h, w = x.shape
        params = params.to(x.device).long()
        rows = params[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
        cols = params[:, 1:2] + torch.arange(w, device=x.device)  # (N, W)
        cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
        padded = self._pad(x)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]

    def describe(self) -> dict:
        described = {"type": "CropFlip", "padding": self.padding, "flip": self.flip}
        if self.fill is not None:  # absent: zeros, as in stores made before the option existed
            described["fill"] = list(self.fill)
        return described
