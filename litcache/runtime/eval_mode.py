"""Eval mode for a measurement, and each module's own mode back afterwards."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn as nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(*models: nn.Module) -> Iterator[None]:
    """Run the block with ``models`` in eval mode, then give every submodule back its own mode.

    ``model.train(was)`` would put a whole student back in train mode, its frozen stem and head
    included, whose BatchNorm statistics must stay the teacher's while the sections train."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
