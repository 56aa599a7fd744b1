"""The recipe's teacher, built and loaded from its checkpoint (stage 1 reads it; nothing trains here)."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .checkpoint import fit_state, load_checkpoint, weights_hash
from .errors import CheckpointError
from .recipe import Recipe

__all__ = ["load_teacher"]


def load_teacher(recipe: Recipe, checkpoint: str | Path | None = None) -> tuple[nn.Module, str, str]:
    """Build the recipe's teacher and load its weights; returns (model in eval mode, weights hash, path)."""
    path = checkpoint or recipe.teacher_checkpoint
    if path is None:
        raise CheckpointError(
            f"Recipe {recipe.name!r} names no teacher checkpoint. Give one with --teacher, "
            f"or train one with `litcache train-teacher {recipe.source or 'RECIPE'} --out CKPT`."
        )
    obj = load_checkpoint(path)
    state = obj.get("state_dict", obj)  # ours, or a bare state dict from elsewhere
    model = recipe.build_teacher()
    fit_state(model, state, f"Checkpoint {str(path)!r}")
    model.eval()
    return model, weights_hash(model), str(path)


#: Names this module held before checkpoint I/O and teacher training got modules of their own;
#: still importable from here so that user code written against earlier releases keeps working.
_MOVED = {"weights_hash": "checkpoint", "save_atomic": "checkpoint", "load_checkpoint": "checkpoint",
          "changed_settings": "checkpoint", "train_teacher": "teacher_training"}


def __getattr__(name: str):
    if name in _MOVED:  # imported on first use: teacher_training builds on modules that build on this one
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
