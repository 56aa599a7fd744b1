"""Teacher checkpoints: hashing, atomic saving, safe loading, and `litcache train-teacher`."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
import xxhash
from torch.utils.data import DataLoader, Dataset

from .data import resolve_device
from .errors import CheckpointError
from .recipe import Recipe, TrainConfig

__all__ = ["weights_hash", "save_atomic", "load_checkpoint", "load_teacher", "train_teacher"]


def weights_hash(model: nn.Module) -> str:
    """xxh3 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    h = xxhash.xxh3_64()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save to a temporary file, then rename: a checkpoint is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Expected a checkpoint file at {str(path)!r}, but there is none. Train one with `litcache train-teacher`.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Checkpoint {str(path)!r} does not load as weights-only torch data: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"Expected checkpoint {str(path)!r} to hold a dict, found {type(obj).__name__}.")
    return obj


def _fit_state(model: nn.Module, state: dict, what: str) -> None:
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
        raise CheckpointError(f"{what} does not fit the architecture: " + ", ".join(parts) + ". Is it the recipe's teacher?")
    model.load_state_dict(state)


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
    _fit_state(model, state, f"Checkpoint {str(path)!r}")
    model.eval()
    return model, weights_hash(model), str(path)


class _Augmented(Dataset):
    """Random (not per-view) augmentation for teacher training, seeded per epoch."""

    def __init__(self, dataset: Dataset, augment, seed: int) -> None:
        self.dataset, self.augment, self.seed = dataset, augment, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i][:2]
        if self.augment is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            x = self.augment.apply(x, self.augment.sample(g, x.shape))
        return x, int(y)


def train_teacher(
    recipe: Recipe,
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    resume: bool = False,
    device: str = "auto",
    eval_split: str = "test",
    student: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the recipe's teacher with cross-entropy; checkpoint atomically after every epoch.

    With ``student``, train that student variant the same way from scratch instead: the baseline
    LIT is compared with. Its checkpoint is a student checkpoint (``litcache.load_student``).
    """
    from .evaluate import accuracy

    if recipe.task != "classification":
        raise CheckpointError(f"train-teacher trains classifiers with cross-entropy; recipe {recipe.name!r} is a {recipe.task} "
                              "task. Bring its teacher's checkpoint (see the recipe's docstring).")
    config = config or recipe.teacher_training
    dev = resolve_device(device)
    out = Path(out)
    torch.manual_seed(seed)
    model = (recipe.student_builder(student) if student else recipe.build_teacher)().to(dev)
    optimizer = config.make_optimizer(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    start_epoch, history = 0, []
    if out.exists():
        if not resume:
            raise CheckpointError(f"{str(out)!r} exists. Pass --resume to continue that training, or choose another --out.")
        state = load_checkpoint(out)
        if state.get("recipe") != recipe.name or "optimizer" not in state or state.get("student") != student:
            raise CheckpointError(f"{str(out)!r} is not a train-teacher checkpoint of recipe {recipe.name!r}; cannot resume from it.")
        _fit_state(model, state["state_dict"], f"Checkpoint {str(out)!r}")
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], list(state["history"])
        scheduler.last_epoch = start_epoch  # the optimizer state already holds the decayed lr
        log(f"resuming from epoch {start_epoch} of {config.epochs}")

    train_set = recipe.load_split("train")
    test_set = recipe.load_split(eval_split)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        loader = DataLoader(_Augmented(train_set, recipe.augment, seed + epoch), batch_size=config.batch_size,
                            shuffle=True, generator=torch.Generator().manual_seed(seed + epoch), drop_last=False)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            if not math.isfinite(loss.item()):
                raise CheckpointError(f"Teacher training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch used
        scheduler.step()
        elapsed = time.perf_counter() - t0
        test_accuracy = accuracy(model, test_set, dev)
        history.append({"epoch": epoch + 1, "loss": loss_sum / seen, "test_accuracy": test_accuracy, "seconds": elapsed})
        log(f"epoch {epoch + 1}/{config.epochs}  loss {loss_sum / seen:.4f}  test acc {test_accuracy:.4f}  "
            f"lr {lr:.4g}  {seen / elapsed:.0f} img/s")
        config_record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
        if student:
            from .student import save_student

            save_student(out, model, recipe=recipe, student=student, mode="scratch",
                         sections_trained=range(1, len(recipe.sections) + 1), store={}, config={**config_record, "seed": seed},
                         history=history, epoch=epoch + 1, optimizer=optimizer.state_dict())
            continue
        save_atomic({
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "recipe": recipe.name,
            "recipe_hash": recipe.source_hash,
            "config": config_record,
            "seed": seed,
        }, out)
    model.eval()
    return {"checkpoint": str(out), "weights_hash": weights_hash(model), "history": history}
