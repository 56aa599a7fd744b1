"""Checkpoint files: weights hashing, atomic saving, safe loading, fitting a state into a model,
and the settings a resumed training run must keep."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import xxhash

from ..errors import CheckpointError
from .files import write_atomic

__all__ = ["weights_hash", "save_atomic", "load_checkpoint", "fit_state", "changed_settings"]


def weights_hash(model: nn.Module) -> str:
    """xxh3 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    h = xxhash.xxh3_64()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save ``obj`` to ``path`` whole or not at all (tmp + fsync + rename, as the store writes
    its files): a checkpoint is never half-written, even by a power cut."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Expected a checkpoint file at {str(path)!r}, but there is none. Train one with "
                              "`litcache train-teacher`.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not load as weights-only torch data "
                              f"({type(exc).__name__}: {_load_failure(exc)}). Is it a file written by torch.save? "
                              "litcache loads only tensors and plain containers, never code.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"Expected checkpoint {str(path)!r} to hold a dict, found {type(obj).__name__}.")
    return obj


def _load_failure(exc: Exception) -> str:
    """What went wrong in torch.load, without torch's advice to retry with weights_only=False (which
    would run whatever code the file holds): the unpickler's own reason where torch gives one."""
    text = str(exc).strip()
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = " ".join(text.split(marker, 1)[1].split("Check the documentation")[0].split())
        return reason.split(" Please use ")[0].rstrip(".") or "not a torch file"
    lines = [line for line in text.splitlines() if "weights_only" not in line]
    return lines[0] if lines else "not a torch file"


def fit_state(model: nn.Module, state: dict, what: str) -> None:
    """Load ``state`` into ``model``, or refuse it naming the missing, unexpected and misshapen tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (model has {tuple(own[k].shape)})" for k in own
             if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (e.g. {'; '.join(wrong[:3])})")
        raise CheckpointError(f"{what} does not fit the architecture: " + ", ".join(parts)
                              + ". Is it the recipe's teacher?")
    model.load_state_dict(state)


def changed_settings(saved: dict, current: dict, keys: Iterable[str], defaults: dict) -> list[str]:
    """"key old -> new" for each of ``keys`` a resumed run would change (``defaults``: what a
    checkpoint written before a key existed had)."""
    return [f"{k} {saved.get(k, defaults.get(k))!r} -> {current.get(k)!r}" for k in keys
            if saved.get(k, defaults.get(k)) != current.get(k)]
