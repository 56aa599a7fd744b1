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

from .data import batch_of, resolve_device
from .errors import CheckpointError, DivergedError
from .precision import resolve_compute
from .recipe import Recipe, TrainConfig

__all__ = ["weights_hash", "save_atomic", "load_checkpoint", "load_teacher", "changed_settings", "train_teacher"]


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


def changed_settings(saved: dict, current: dict, keys, defaults: dict) -> list[str]:
    """"key old -> new" for each of ``keys`` a resumed run would change (``defaults``: what a
    checkpoint written before a key existed had)."""
    return [f"{k} {saved.get(k, defaults.get(k))!r} -> {current.get(k)!r}" for k in keys
            if saved.get(k, defaults.get(k)) != current.get(k)]


class _Augmented(Dataset):
    """Random (not per-view) augmentation for teacher training, seeded per epoch: the fallback for
    augmentations without ``apply_batch`` (per-sample Python)."""

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


def _batches(dataset: Dataset, augment, batch_size: int, seed: int):
    """One shuffled epoch of (inputs, labels) batches with random views.

    Where the augmentation works on whole batches (``apply_batch``, e.g. CropFlip) the views are made
    per batch on tensors, and a dataset with ``get_batch(indices) -> (inputs, labels)`` gives its
    batch in one call, so no per-sample Python runs in the loop; otherwise each sample is made by a
    DataLoader."""
    batched = augment is None or (hasattr(augment, "apply_batch") and hasattr(augment, "sample_batch"))
    if not batched:
        yield from DataLoader(_Augmented(dataset, augment, seed), batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed), drop_last=False)
        return
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].tolist()
        x, y = batch_of(dataset, idx)
        if augment is not None:
            x = augment.apply_batch(x, augment.sample_batch(g, len(idx)))
        yield x, y


def train_teacher(
    recipe: Recipe,
    out: str | Path,
    *,
    config: TrainConfig | None = None,
    seed: int = 0,
    resume: bool = False,
    device: str = "auto",
    precision: str | None = None,
    eval_split: str = "test",
    student: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the recipe's teacher with cross-entropy; checkpoint atomically after every epoch.

    With ``student``, train that student variant the same way from scratch instead: the baseline
    LIT is compared with. Its checkpoint is a student checkpoint (``litcache.load_student``).
    The network computes in ``precision`` (default: the recipe's); weights, optimizer state and
    the loss stay float32.
    """
    from .evaluate import accuracy

    if recipe.task != "classification":
        raise CheckpointError(f"train-teacher trains classifiers with cross-entropy; recipe {recipe.name!r} is a {recipe.task} "
                              "task. Bring its teacher's checkpoint (see the recipe's docstring).")
    config = config or recipe.teacher_training
    dev = resolve_device(device)
    out = Path(out)
    torch.manual_seed(seed)
    model = (recipe.student_builder(student) if student else recipe.build_teacher)()
    compute = resolve_compute(precision or recipe.precision, dev, model)
    compute.model(model)
    optimizer = config.make_optimizer(model.parameters())
    scaler = compute.grad_scaler()
    config_record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    config_record["precision"] = compute.precision
    start_epoch, history = 0, []
    if out.exists():
        if not resume:
            raise CheckpointError(f"{str(out)!r} exists. Pass --resume to continue that training, or choose another --out.")
        state = load_checkpoint(out)
        if state.get("recipe") != recipe.name or "optimizer" not in state or state.get("student") != student:
            raise CheckpointError(f"{str(out)!r} is not a train-teacher checkpoint of recipe {recipe.name!r}; cannot resume from it.")
        changed = changed_settings(state.get("config", {}), config_record, _RESUME_KEYS, _RESUME_DEFAULTS)
        if changed:
            raise CheckpointError(f"Cannot resume {str(out)!r} with other settings ({'; '.join(changed)}). "
                                  "Resume with the same options (only --epochs may grow), or choose another --out.")
        _fit_state(model, state["state_dict"], f"Checkpoint {str(out)!r}")
        optimizer.load_state_dict(state["optimizer"])
        if "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, history = state["epoch"], list(state["history"])
        log(f"resuming from epoch {start_epoch} of {config.epochs}")

    train_set = recipe.load_split("train")
    test_set = recipe.load_split(eval_split)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    log(f"{'student ' + student if student else 'teacher'}: {len(train_set)} training samples, {config.epochs} epochs of "
        f"batch {config.batch_size}, {config.schedule} schedule, {compute.describe()}")
    for epoch in range(start_epoch, config.epochs):
        model.train()
        t0, seen, loss_sum, lr = time.perf_counter(), 0, torch.zeros((), device=dev), config.lr
        for step, (x, y) in enumerate(_batches(train_set, recipe.augment, config.batch_size, seed + epoch)):
            x, y = compute.input(x), y.to(dev, non_blocking=True)
            lr = config.apply_schedule(optimizer, epoch, step, steps_per_epoch)
            with compute.autocast():
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            seen += len(y)
            loss_sum += loss.detach() * len(y)  # on the device: read once per epoch, not per step
            if (step + 1) % 50 == 0 and not math.isfinite(loss_sum.item()):
                break
        if not math.isfinite(loss_sum.item()):
            raise DivergedError(f"Training diverged in epoch {epoch + 1} (loss {loss_sum.item()}); lower --lr"
                                + (" or use --precision fp32." if compute.precision != "fp32" else "."))
        elapsed = time.perf_counter() - t0
        test_accuracy = accuracy(model, test_set, compute)
        mean_loss = loss_sum.item() / seen
        history.append({"epoch": epoch + 1, "loss": mean_loss, "test_accuracy": test_accuracy, "seconds": elapsed,
                        "img_per_s": seen / elapsed})
        log(f"epoch {epoch + 1}/{config.epochs}  loss {mean_loss:.4f}  test acc {test_accuracy:.4f}  "
            f"lr {lr:.4g}  {seen / elapsed:.0f} img/s")
        extra = {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}
        if student:
            from .student import save_student

            save_student(out, model, recipe=recipe, student=student, mode="scratch",
                         sections_trained=range(1, len(recipe.sections) + 1), store={}, config={**config_record, "seed": seed},
                         history=history, epoch=epoch + 1, optimizer=optimizer.state_dict(), extra=extra)
            continue
        save_atomic({
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "recipe": recipe.name,
            "recipe_hash": recipe.source_hash,
            "config": config_record,
            "seed": seed,
            **extra,
        }, out)
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return {"checkpoint": str(out), "weights_hash": weights_hash(model), "history": history}


#: Settings a resumed train-teacher run must share with the run it continues (--epochs may grow).
_RESUME_KEYS = ("batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "optimizer", "schedule", "warmup",
                "nesterov", "precision")
_RESUME_DEFAULTS = {"schedule": "multistep", "warmup": 0.0, "nesterov": False, "precision": "fp32"}
