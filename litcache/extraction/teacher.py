"""The recipe's teacher, built and loaded from its checkpoint: stage 1 runs it (the online baseline
and ``evaluate`` load it here too); nothing trains here."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..errors import CheckpointError
from ..models.hf import is_model_directory, pretrained_state
from ..recipe import Recipe
from ..runtime.checkpoint import fit_state, load_checkpoint, weights_hash

__all__ = ["load_teacher"]


def load_teacher(recipe: Recipe, checkpoint: str | Path | None = None) -> tuple[nn.Module, str, str]:
    """Build the recipe's teacher and load its weights, from a litcache checkpoint, a bare state dict or
    a Hugging Face model directory; returns (model in eval mode, weights hash, path)."""
    path = checkpoint or recipe.teacher_checkpoint
    if path is None:
        raise CheckpointError(
            f"Recipe {recipe.name!r} names no teacher checkpoint. Give one with --teacher, "
            f"or train one with `litcache train-teacher {recipe.source or 'RECIPE'} --out CKPT`."
        )
    if is_model_directory(path):  # a Hugging Face model directory, as save_pretrained writes it
        state = pretrained_state(path)
    else:
        obj = load_checkpoint(path)
        state = obj.get("state_dict", obj)  # ours, or a bare state dict from elsewhere
    model = recipe.build_teacher()
    fit_state(model, state, f"Checkpoint {str(path)!r}")
    model.eval()
    return model, weights_hash(model), str(path)
