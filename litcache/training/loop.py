"""The pieces every training loop of litcache shares (train-teacher, train-blocks, and bench, which
times train-blocks' step), each written once: resume-or-start, the epoch seed, the optimizer and
gradient-scaler step, and the sums of the losses with their finite check."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from ..errors import CheckpointError, DivergedError
from ..runtime.checkpoint import changed_settings

__all__ = ["CHECK_EVERY", "EPOCH_SEEDS", "epoch_seed", "optimizer_step", "refuse_if_diverged", "LossSums", "Resumed",
           "resume_or_start", "cumulative_batchnorm", "reestimate_batchnorm"]

#: Training steps between two reads of the summed losses (the only host syncs of an epoch).
CHECK_EVERY = 50
#: How epoch e of seed s is seeded, as recorded in train-teacher checkpoints. Until 2 December 2026
#: train-teacher used s + e (CHANGELOG.md), so seed 1's epochs were seed 0's shifted by one.
EPOCH_SEEDS = "seed*100003+epoch"


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (from 0, counting any --init run's epochs) of a run with ``seed``."""
    return seed * 100_003 + epoch


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward (scaled for fp16; the scaler is a no-op otherwise) and one optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def refuse_if_diverged(total: float, who: str, epoch: int) -> None:
    """Stop a run whose summed loss is no longer finite (``epoch`` from 0)."""
    if not math.isfinite(total):
        raise DivergedError(f"{who}: the loss became {total} in epoch {epoch + 1}; lower --lr "
                            "(or use --precision fp32 if it diverged in reduced precision).")


class LossSums:
    """An epoch's losses, summed on the device weighted by batch size: reading them would stall a GPU
    every step, so they are read every ``CHECK_EVERY`` steps, to stop a run whose loss is no longer
    finite, and once at the end of the epoch."""

    def __init__(self, who: str, epoch: int) -> None:
        self.who, self.epoch, self.rows, self.steps = who, epoch, 0, 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, parts: dict[str, torch.Tensor], rows: int) -> None:
        for key, value in parts.items():
            self.sums[key] = self.sums[key] + value * rows if key in self.sums else value * rows
        self.rows += rows
        self.steps += 1
        if self.steps % CHECK_EVERY == 0:
            self.check_finite()

    def check_finite(self) -> None:
        refuse_if_diverged(self.sums["loss"].item(), self.who, self.epoch)

    def means(self) -> dict[str, float]:
        """The epoch's mean of every part (after the finite check)."""
        self.check_finite()
        return {key: value.item() / self.rows for key, value in self.sums.items()}


@dataclass
class Resumed:
    """Where a run starts: epoch 0 with no history, or a checkpoint's epoch, history and whole state."""

    epoch: int = 0
    history: list = field(default_factory=list)
    state: dict | None = None


def resume_or_start(path: Path, resume: bool, *, read: Callable[[Path], dict], saved_record: Callable[[dict], dict],
                    record: dict, keys: list[str], model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, load_weights: Callable[[nn.Module, dict], None],
                    check: Callable[[dict], None] = lambda state: None, where: Path | None = None) -> Resumed:
    """Start afresh where ``path`` holds no checkpoint. Otherwise refuse it without ``resume``; refuse
    one that ``check`` rejects (another run's) or whose ``saved_record`` differs from ``record`` in any
    of ``keys``; else load its weights, optimizer and gradient-scaler state and continue it. Errors name
    ``where`` (default ``path``): a run's folder, say, where ``path`` is its last checkpoint."""
    if not path.exists():
        return Resumed()
    if not resume:
        raise CheckpointError(f"{str(where or path)!r} already holds a training run. Pass --resume to continue it, or "
                              "choose another --out.")
    state = read(path)
    check(state)
    changed = changed_settings(saved_record(state), record, keys, {})
    if changed:
        raise CheckpointError(f"Cannot resume {str(path)!r} with other settings ({'; '.join(changed)}). "
                              "Resume with the same options (only --epochs may grow), or choose another --out.")
    load_weights(model, state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    if "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    return Resumed(state["epoch"], list(state["history"]), state)


@contextmanager
def cumulative_batchnorm(module: nn.Module) -> Iterator[list[nn.Module]]:
    """Reset the running statistics of ``module``'s BatchNorm layers and, until the block ends, let
    every train-mode batch weigh the same in them (momentum None: a cumulative average); the momenta
    come back after. Yields the layers."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield norms
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor], forward: Callable[[torch.Tensor], object]
                         ) -> int:
    """Precise BatchNorm: the population statistics of ``model``'s current weights over ``inputs``
    (train-mode ``forward`` of each batch, no gradient; every batch weighs the same, as in torch's
    cumulative average) replace the running averages that training left. Returns the rows seen; the
    model is left in eval mode."""
    rows = 0
    with cumulative_batchnorm(model) as norms:
        if norms:
            model.train()
            for x in inputs:
                forward(x)
                rows += len(x)
    model.eval()
    return rows
