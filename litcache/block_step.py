"""One training step of `litcache train-blocks`: the loss of each mode, which parts train, and the
optimizer step. ``litcache.bench`` times this same step, so it measures what train-blocks runs."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import DivergedError
from .losses import ir_loss, kd_loss, lit_loss, token_mask
from .precision import Compute
from .sections import SplitModel

__all__ = ["MODES", "TOPK_FIELDS", "fields_read", "head_trains_by_default", "store_fields", "step_losses", "train_step", "trainable_parameters",
           "set_train_mode", "check_finite_loss"]

MODES = ("lit", "ir", "finetune", "kd", "hints")


def fields_read(mode: str, sections: int, block: int | None, hint: int, beta: float) -> list[str]:
    """The store arrays a step of ``mode`` reads."""
    if mode == "lit" and beta == 0:  # IR only: the logits are never read
        return [f"boundaries/{i}" for i in range(sections + 1)]
    if mode == "lit":
        return [f"boundaries/{i}" for i in range(sections + 1)] + ["logits", "labels"]
    if mode == "ir":
        wanted = range(sections + 1) if block is None else (block - 1, block)
        return [f"boundaries/{i}" for i in wanted]
    if mode == "hints":
        return ["boundaries/0", f"boundaries/{hint}", "logits", "labels"]
    return ["boundaries/0", "logits", "labels"]


#: Arrays a store of top-k logits holds instead of ``logits``: the k largest values per position, and their vocabulary indices.
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


def step_losses(split: SplitModel, batch: dict[str, torch.Tensor], mode: str, config: dict, *,
                block: int | None = None, hint: int = 1, hint_phase: bool = False) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch (tensors keyed by store array name) and its logged parts.

    Run it under the run's autocast: the network computes in that precision, every loss in float32.
    The parts are detached tensors on the batch's device, not Python floats: reading them would
    stall a GPU every step, so the caller sums them on the device and reads once per log line.
    """
    sections = len(split.sections)
    t0 = batch.get("boundaries/0")  # absent when one --block of ir is trained
    parts: dict[str, torch.Tensor] = {}
    kind, axis = config.get("ir_loss", "mse"), config.get("ir_feature_axis", 1)
    # Rows of padded tokens: the losses count the valid positions only.
    lengths = batch.get("lengths")
    mask = None
    if lengths is not None:
        tokens = next(v for k, v in batch.items() if k.startswith("boundaries/")).shape[1]
        mask = token_mask(lengths, tokens)

    def kd(student_logits: torch.Tensor) -> torch.Tensor:
        if "topk_values" in batch:
            return kd_loss(student_logits.float(), batch["topk_values"].float(), batch["labels"], config["alpha"],
                           config["tau"], teacher_indices=batch["topk_indices"])
        return kd_loss(student_logits.float(), batch["logits"].float(), batch["labels"], config["alpha"], config["tau"])

    if mode in ("lit", "ir"):
        trained = [block] if block is not None else list(range(1, sections + 1))
        irs = [ir_loss(split.sections[i - 1](batch[f"boundaries/{i - 1}"]).float(), batch[f"boundaries/{i}"].float(), kind, mask,
                       axis) for i in trained]
        for i, value in zip(trained, irs):
            parts[f"ir{i}"] = value.detach()
        kd_part = None
        if mode == "lit" and config["beta"] > 0:
            kd_part = kd(split.head(split.run_sections(t0)[-1]))
            parts["kd"] = kd_part.detach()
        loss = config.get("loss_scale", 1.0) * lit_loss(kd_part, irs, config["beta"])
    elif mode == "hints" and hint_phase:
        z = t0
        for section in split.sections[:hint]:
            z = section(z)
        loss = ir_loss(z.float(), batch[f"boundaries/{hint}"].float(), kind, mask, axis)
        parts["hint"] = loss.detach()
    else:  # kd, finetune, and the second phase of hints
        loss = kd(split.head(split.run_sections(t0)[-1]))
        parts["kd"] = loss.detach()
    parts["loss"] = loss.detach()
    return loss, parts


def train_step(split: SplitModel, batch: dict[str, torch.Tensor], mode: str, config: dict,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, compute: Compute, *,
               block: int | None = None, hint: int = 1, hint_phase: bool = False) -> dict:
    """One optimizer step on ``batch`` (already on the device): the mode's loss under the run's
    autocast, backward (scaled for fp16), step. Returns the detached loss parts."""
    with compute.autocast():
        # step_losses is looked up here at call time: the seam that
        # test_faults.py::test_training_killed_mid_epoch_resumes_from_last_checkpoint replaces to kill a run mid-epoch.
        loss, parts = step_losses(split, batch, mode, config, block=block, hint=hint, hint_phase=hint_phase)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return parts


def head_trains_by_default(mode: str) -> bool:
    """kd and hints train the (adopted) head; lit, ir and finetune keep the teacher's frozen, as the
    released LIT code does. ``--train-head``/``--freeze-head`` override it."""
    return mode in ("kd", "hints")


def trained_modules(split: SplitModel, mode: str, block: int | None, train_head: bool | None = None) -> list[nn.Module]:
    if block is not None:  # --mode ir --block I
        return [split.sections[block - 1]]
    if mode == "ir":
        return list(split.sections)
    head = head_trains_by_default(mode) if train_head is None else train_head
    return [*split.sections, split.head] if head else list(split.sections)


def trainable_parameters(split: SplitModel, mode: str, block: int | None, train_head: bool | None = None) -> list[nn.Parameter]:
    """Freeze the split, then unfreeze (and return) the parameters ``mode`` trains."""
    for p in split.parameters():
        p.requires_grad_(False)
    params = [p for m in trained_modules(split, mode, block, train_head) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def set_train_mode(split: SplitModel, mode: str, block: int | None, train_head: bool | None = None) -> None:
    split.eval()  # frozen parts (the stem, and a frozen head) keep their BatchNorm statistics
    for module in trained_modules(split, mode, block, train_head):
        module.train()


def check_finite_loss(loss_sum: torch.Tensor, student: str, epoch: int) -> None:
    """One host sync: refuse a run whose summed loss is no longer finite."""
    if not math.isfinite(loss_sum.item()):
        raise DivergedError(f"{student}: the loss became {loss_sum.item()} in epoch {epoch + 1}; lower --lr "
                            "(or use --precision fp32 if it diverged in reduced precision).")
