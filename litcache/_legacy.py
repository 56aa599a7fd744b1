"""Functions of litcache 0.1 whose signature changed in 0.2, with their old signature, for code that
still imports them from their old modules (``litcache.train``, ``litcache.block_step``; see
``litcache._compat`` and CHANGELOG.md). Each adapts its arguments and calls today's function.

0.1 passed ``mode, block, train_head`` and a config dict where 0.2 passes a ``Phase`` and
``LossWeights``; ``resolve_config`` returned the dict that 0.2's ``RunConfig.record()`` gives.
"""

from __future__ import annotations

import torch

from .training import config as _config
from .training import loop as _loop
from .training import step as _step

__all__ = ["step_losses", "train_step", "trainable_parameters", "set_train_mode", "fields_read",
           "check_finite_loss", "resolve_config", "requested_precision", "RESUME_KEYS"]

#: The settings a resumed train-blocks run had to keep in 0.1 (0.2 derives them: ``resume_keys``).
RESUME_KEYS = ("mode", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "optimizer", "betas",
               "schedule", "warmup", "nesterov", "alpha", "tau", "beta", "loss_scale", "block", "hint_boundary", "init",
               "seed", "views", "buffer_chunks", "online", "fresh_views", "precision", "ir_loss", "ir_feature_axis",
               "student_init", "train_head", "precise_bn")


def _phase(mode, block=None, train_head=None) -> _config.Phase:
    if isinstance(mode, _config.Phase):
        return mode
    return _config.Phase(mode, block, _config.head_trains_by_default(mode) if train_head is None else train_head)


def _losses(config) -> _config.LossWeights:
    return config if isinstance(config, _config.LossWeights) else _config.LossWeights.from_record(config)


def step_losses(split, batch, mode, config, *, block=None, hint=1, hint_phase=False):
    return _step.step_losses(split, batch, _phase(mode, block), _losses(config), hint=hint, hint_phase=hint_phase)


def train_step(split, batch, mode, config, optimizer, scaler, compute, *, block=None, hint=1, hint_phase=False):
    return _step.train_step(split, batch, _phase(mode, block), _losses(config), optimizer, scaler, compute, hint=hint,
                            hint_phase=hint_phase)


def trainable_parameters(split, mode, block, train_head=None):
    return _step.trainable_parameters(split, _phase(mode, block, train_head))


def set_train_mode(split, mode, block, train_head=None) -> None:
    _step.set_train_mode(split, _phase(mode, block, train_head))


def fields_read(mode, sections, block, hint, beta) -> list[str]:
    return _phase(mode, block).fields_read(sections, hint, beta)


def check_finite_loss(loss_sum: torch.Tensor, student: str, epoch: int) -> None:
    _loop.refuse_if_diverged(loss_sum.item(), student, epoch)


def resolve_config(recipe, options) -> dict:
    return _config.resolve_config(recipe, options).record()


def requested_precision(recipe, options) -> str:
    return _config.resolve_config(recipe, options).precision
