"""`litcache train-teacher`: train the recipe's teacher (or a student variant from scratch, the
baseline LIT is compared with) with cross-entropy, checkpointing atomically after every epoch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import CheckpointError, NotAClassifierError
from ..extraction.rows import batch_of
from ..recipe import Recipe, TrainConfig
from ..runtime.checkpoint import fit_state, load_checkpoint, save_atomic, weights_hash
from ..runtime.devices import resolve_device
from ..runtime.precision import resolve_compute
from ..runtime.seeds import check_seed
from .loop import EPOCH_SEEDS, LossSums, epoch_seed, optimizer_step, reestimate_batchnorm, resume_or_start
from .losses import supervised_loss
from .metrics import test_score
from .outputs import claim_output
from .student import save_student

__all__ = ["train_teacher"]

#: Settings a resumed train-teacher run must share with the run it continues (--epochs may grow).
_RESUME_KEYS = ["batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "optimizer", "schedule",
                "warmup", "nesterov", "precise_bn", "precision"]
#: What a checkpoint written before a setting was recorded had instead.
_BEFORE_THE_KEY = {"schedule": "multistep", "warmup": 0.0, "nesterov": False, "precise_bn": False, "precision": "fp32"}


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
    if recipe.task == "generation":
        raise NotAClassifierError(f"train-teacher trains classifiers and language models with cross-entropy; recipe "
                                  f"{recipe.name!r} is a {recipe.task} task. Bring its teacher's checkpoint (see the "
                                  "recipe's docstring).")
    check_seed(seed)
    dev = resolve_device(device)
    with claim_output(out, folder=False):
        return _train(recipe, Path(out), config or recipe.teacher_training, seed, resume, dev, precision, eval_split,
                      student, log)


def _train(recipe: Recipe, out: Path, config: TrainConfig, seed: int, resume: bool, dev: torch.device,
           precision: str | None, eval_split: str, student: str | None, log: Callable[[str], None]) -> dict:
    torch.manual_seed(seed)
    model = (recipe.student_builder(student) if student else recipe.build_teacher)()
    compute = resolve_compute(precision or recipe.precision, dev, model)
    compute.model(model)
    optimizer = config.make_optimizer(model.parameters())
    scaler = compute.grad_scaler()
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()}
    record.update(precision=compute.precision, epoch_seeds=EPOCH_SEEDS)

    def check(state: dict) -> None:
        if state.get("recipe") != recipe.name or "optimizer" not in state or state.get("student") != student:
            raise CheckpointError(f"{str(out)!r} is not a train-teacher checkpoint of recipe {recipe.name!r}; cannot "
                                  "resume from it.")
        if state["epoch"] < config.epochs:  # a finished run trains nothing more, so no stream can mix
            _check_resumed_seed(state, seed, out)

    resumed = resume_or_start(out, resume, read=load_checkpoint, check=check, record=record, keys=_RESUME_KEYS,
                              saved_record=lambda state: {**_BEFORE_THE_KEY, **state.get("config", {})},
                              model=model, optimizer=optimizer, scaler=scaler,
                              load_weights=lambda m, state: fit_state(m, state, f"Checkpoint {str(out)!r}"))
    history = resumed.history
    if resumed.state is not None:
        log(f"resuming from epoch {resumed.epoch} of {config.epochs}")

    train_set = recipe.load_split("train")
    test_set = recipe.load_split(eval_split)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    who = f"student {student}" if student else "teacher"
    log(f"{who}: {len(train_set)} training samples, {config.epochs} epochs of batch {config.batch_size}, "
        f"{config.schedule} schedule, {compute.describe()}")
    for epoch in range(resumed.epoch, config.epochs):
        model.train()
        sums, t0, lr = LossSums(who, epoch), time.perf_counter(), config.lr
        for step, (x, y) in enumerate(_batches(train_set, recipe.augment, config.batch_size, epoch_seed(seed, epoch))):
            x, y = compute.input(x), y.to(dev, non_blocking=True)
            lr = config.apply_schedule(optimizer, epoch, step, steps_per_epoch)
            with compute.autocast():
                loss = supervised_loss(model(x).float(), y)
            optimizer_step(loss, optimizer, scaler)
            sums.add({"loss": loss.detach()}, len(y))
        elapsed = time.perf_counter() - t0
        mean_loss = sums.means()["loss"]
        extra_record = {}
        if config.precise_bn:
            t1 = time.perf_counter()
            inputs = (x for x, _ in _batches(train_set, recipe.augment, config.batch_size, epoch_seed(seed, epoch)))
            with compute.autocast():
                reestimate_batchnorm(model, inputs, lambda x: model(compute.input(x)))
            extra_record["precise_bn_seconds"] = time.perf_counter() - t1
        score = test_score(model, test_set, compute, recipe.task)
        history.append({"epoch": epoch + 1, "loss": mean_loss, **score, "seconds": elapsed,
                        "img_per_s": sums.rows / elapsed, **extra_record})
        shown = (f"test acc {score['test_accuracy']:.4f}" if "test_accuracy" in score
                 else f"test perplexity {score['test_perplexity']:.3f}")
        log(f"epoch {epoch + 1}/{config.epochs}  loss {mean_loss:.4f}  {shown}  "
            f"lr {lr:.4g}  {sums.rows / elapsed:.0f} {'rows' if recipe.task == 'language_model' else 'img'}/s")
        extra = {"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {}
        if student:
            save_student(out, model, recipe=recipe, student=student, mode="scratch",
                         sections_trained=range(1, len(recipe.sections) + 1), store={}, config={**record, "seed": seed},
                         history=history, epoch=epoch + 1, optimizer=optimizer.state_dict(), extra=extra)
            continue
        save_atomic({
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": history,
            "recipe": recipe.name,
            "recipe_hash": recipe.source_hash,
            "config": record,
            "seed": seed,
            **extra,
        }, out)
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    return {"checkpoint": str(out), "weights_hash": weights_hash(model), "history": history}


def _check_resumed_seed(state: dict, seed: int, out: Path) -> None:
    """A resumed run draws the rest of its own stream: the same --seed, seeded the same way."""
    saved = state.get("config", {})
    saved_seed = saved.get("seed", state.get("seed", seed))
    if saved_seed != seed:
        raise CheckpointError(f"Cannot resume {str(out)!r} with --seed {seed}: it was trained with --seed "
                              f"{saved_seed}. Resume with that seed, or choose another --out.")
    if saved.get("epoch_seeds", "seed+epoch") != EPOCH_SEEDS and seed != 0:
        raise CheckpointError(f"Cannot resume {str(out)!r}: it was started before litcache seeded each --seed's epochs "
                              f"on a stream of their own (seed + epoch, now {EPOCH_SEEDS}), so its remaining epochs "
                              "would draw another seed's data. Train it again in another --out (seed 0 runs resume: "
                              "it is unchanged).")
