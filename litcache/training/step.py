"""One training step of `litcache train-blocks`: the loss of each mode, which parts train, and the
optimizer step. ``litcache.bench`` times this same step, so it measures what train-blocks runs."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..runtime.precision import Compute
from ..sections import SectionedModel
from ..store.layout import token_mask
from .config import LossWeights, Phase
from .loop import optimizer_step
from .losses import ir_loss, kd_loss, lit_loss

__all__ = ["TOPK_FIELDS", "store_fields", "step_losses", "train_step", "trainable_parameters", "set_train_mode"]

#: Arrays a store of top-k logits holds instead of ``logits``: the k largest values per position, and their
#: vocabulary indices.
TOPK_FIELDS = ("topk_values", "topk_indices")


def store_fields(fields: list[str], arrays) -> list[str]:
    """``fields`` as a store with ``arrays`` holds them: its top-k pair for ``logits`` where it keeps
    top-k logits, and ``lengths`` beside any boundary where its rows are padded tokens."""
    out = []
    for name in fields:
        out.extend(TOPK_FIELDS if name == "logits" and "logits" not in arrays and TOPK_FIELDS[0] in arrays else [name])
    if "lengths" in arrays and "lengths" not in out and any(n.startswith("boundaries/") for n in out):
        out.append("lengths")
    return out


def step_losses(sectioned: SectionedModel, batch: dict[str, torch.Tensor], phase: Phase, losses: LossWeights, *,
                hint: int = 1, hint_phase: bool = False) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch (tensors keyed by store array name) and its logged parts.

    Run it under the run's autocast: the network computes in that precision, every loss in float32.
    The parts are detached tensors on the batch's device, not Python floats: reading them would
    stall a GPU every step, so the caller sums them on the device and reads once per log line.
    """
    t0 = batch.get("boundaries/0")  # absent when one section of ir is trained alone
    parts: dict[str, torch.Tensor] = {}
    # Rows of padded tokens: the losses count the valid positions only.
    lengths = batch.get("lengths")
    mask = None
    if lengths is not None:
        tokens = next(v for k, v in batch.items() if k.startswith("boundaries/")).shape[1]
        mask = token_mask(lengths, tokens)

    def ir(student_out: torch.Tensor, boundary: int) -> torch.Tensor:
        return ir_loss(student_out.float(), batch[f"boundaries/{boundary}"].float(), losses.ir_loss, mask,
                       losses.ir_feature_axis)

    def kd(student_logits: torch.Tensor) -> torch.Tensor:
        if "topk_values" in batch:
            return kd_loss(student_logits.float(), batch["topk_values"].float(), batch["labels"], losses.alpha,
                           losses.tau, teacher_indices=batch["topk_indices"])
        return kd_loss(student_logits.float(), batch["logits"].float(), batch["labels"], losses.alpha, losses.tau)

    if phase.mode in ("lit", "ir"):
        trained = phase.sections_trained(len(sectioned.sections))
        irs = [ir(sectioned.sections[i - 1](batch[f"boundaries/{i - 1}"]), i) for i in trained]
        for i, value in zip(trained, irs):
            parts[f"ir{i}"] = value.detach()
        kd_part = None
        if phase.mode == "lit" and losses.beta > 0:
            kd_part = kd(sectioned.head(sectioned.run_sections(t0)[-1]))
            parts["kd"] = kd_part.detach()
        loss = losses.loss_scale * lit_loss(kd_part, irs, losses.beta)
    elif phase.mode == "hints" and hint_phase:
        z = t0
        for section in sectioned.sections[:hint]:
            z = section(z)
        loss = ir(z, hint)
        parts["hint"] = loss.detach()
    else:  # kd, finetune, and the second phase of hints
        loss = kd(sectioned.head(sectioned.run_sections(t0)[-1]))
        parts["kd"] = loss.detach()
    parts["loss"] = loss.detach()
    return loss, parts


def train_step(sectioned: SectionedModel, batch: dict[str, torch.Tensor], phase: Phase, losses: LossWeights,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, compute: Compute, *,
               hint: int = 1, hint_phase: bool = False) -> dict:
    """One optimizer step on ``batch`` (already on the device): the phase's loss under the run's
    autocast, backward (scaled for fp16), step. Returns the detached loss parts."""
    with compute.autocast():
        # step_losses is looked up here at call time: the seam that
        # test_faults.py::test_training_killed_mid_epoch_resumes_from_last_checkpoint replaces to kill a run mid-epoch.
        loss, parts = step_losses(sectioned, batch, phase, losses, hint=hint, hint_phase=hint_phase)
    optimizer_step(loss, optimizer, scaler)
    return parts


def trainable_parameters(sectioned: SectionedModel, phase: Phase) -> list[nn.Parameter]:
    """Freeze the sectioned model, then unfreeze (and return) the parameters ``phase`` trains."""
    for p in sectioned.parameters():
        p.requires_grad_(False)
    params = [p for m in phase.trained_modules(sectioned) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def set_train_mode(sectioned: SectionedModel, phase: Phase) -> None:
    sectioned.eval()  # frozen parts (the stem, and a frozen head) keep their BatchNorm statistics
    for module in phase.trained_modules(sectioned):
        module.train()
