"""`litcache train-blocks`: train LIT students from a store; the teacher never runs.

Every mode starts from the stored stem output T_0 (the stem is the teacher's, frozen):

    lit       s * (beta * KD(S(T_0)) + (1 - beta) * sum_i MSE(S_i(T_{i-1}), T_i))  (head frozen)
    ir        beta = 0: each section alone; --block I trains section I only         (head frozen)
    finetune  KD(S(T_0)) alone, from an assembled student (--init)                 (sections only)
    kd        KD(S(T_0)) alone, from a fresh student: the KD baseline              (sections + head)
    hints     FitNets: first half of the epochs MSE(S_1..m(T_0), T_m), then KD     (sections + head)

(s is ``DistillConfig.loss_scale``: the released CIFAR code halves the LIT loss.) The fine-tune
keeps the teacher's head frozen, as the released code does: it never turns requires_grad back on.
``train_head`` (--train-head/--freeze-head) overrides the head of lit, finetune, kd and hints.

``online_teacher`` is the baseline for comparisons: the same run with the teacher's boundaries
computed on every batch (``litcache.online``) instead of read from the store; with
``fresh_views`` it also draws a fresh augmentation of every sample each epoch, as the original
LIT code trains, instead of replaying the store's K views.

Networks compute in the run's ``--precision`` (``litcache.precision``); weights, optimizer state
and losses stay float32.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .audit import require_intact
from .block_step import (MODES, check_finite_loss, fields_read, head_trains_by_default, set_train_mode, store_fields, train_step,
                         trainable_parameters)
# Re-exported: train-blocks' step and losses were this module's before block_step.py held them.
from .block_step import step_losses  # noqa: F401
from .losses import ir_loss, kd_loss, lit_loss  # noqa: F401
from .checkpoint import changed_settings
from .data import resolve_device
from .dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset, make_loader
from .errors import CheckpointError, OptionError, RecipeError, StoreMismatchError
from .eval_mode import evaluating
from .metrics import test_score
from .online import OnlineTeacherDataset
from .precision import Compute, resolve_compute
from .recipe import IR_LOSSES, STUDENT_INITS, Recipe, TrainConfig
from .sections import SplitModel, split_model
from .store import Store, open_store
from .student import adopt_teacher_blocks, adopt_teacher_parts, build_student, read_student, save_student

__all__ = ["MODES", "BlockTrainOptions", "train_blocks", "resolve_config", "check_student_fits", "recalibrate_batchnorm",
           "training_differences"]

#: Settings a resumed run must share with the run it continues (--epochs may grow; device,
#: workers, where the stored rows are read from and logging may change). ``online``: an online
#: and a cached run are different runs, even with the same teacher.
RESUME_KEYS = ("mode", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "optimizer", "betas",
               "schedule", "warmup", "nesterov", "alpha", "tau", "beta", "loss_scale", "block", "hint_boundary", "init",
               "seed", "views", "buffer_chunks", "online", "fresh_views", "precision", "ir_loss", "ir_feature_axis", "student_init",
               "train_head")
#: What a checkpoint written before a resume key existed had instead.
_RESUME_DEFAULTS = {"views": None, "online": False, "fresh_views": False, "precision": "fp32", "schedule": "multistep", "warmup": 0.0,
                    "nesterov": False, "loss_scale": 1.0, "recalibrate_bn": False, "online_teacher": None,
                    "ir_loss": "mse", "ir_feature_axis": 1, "student_init": "scratch"}
#: Config keys of earlier releases that a later key now holds (``amp`` became ``precision``).
_RETIRED_KEYS = ("amp",)
#: Config keys that say where and how a run executes, not what it trains: a finished student is the
#: same result whatever these were (``channels_last`` follows from the student and the device).
RUN_ONLY_KEYS = ("device", "loader_workers", "verify", "evaluate", "in_memory", "channels_last")
#: train-blocks warns when the epochs exceed the views by more than this factor.
VIEW_REUSE_WARNING = 4
#: Training steps between two reads of the accumulated losses (the only host syncs of an epoch).
CHECK_EVERY = 50
_TRAIN_CONFIG_FIELDS = [f.name for f in fields(TrainConfig)]


@dataclass(frozen=True)
class BlockTrainOptions:
    """Flags of train-blocks; ``None`` takes the recipe's value (lit or finetune phase)."""

    mode: str = "lit"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    schedule: str | None = None
    warmup: float | None = None
    nesterov: bool | None = None
    alpha: float | None = None
    tau: float | None = None
    beta: float | None = None
    loss_scale: float | None = None
    #: --ir-loss: "mse" or "cosine" (None: the recipe's DistillConfig.ir_loss).
    ir_loss: str | None = None
    #: --student-init: "scratch" or "teacher-blocks" (None: the recipe's student_init); --init replaces either.
    student_init: str | None = None
    #: --train-head/--freeze-head: train the head too, or keep it frozen (None: the mode's default, see above).
    train_head: bool | None = None
    block: int | None = None
    hint_boundary: int | None = None
    init: str | None = None
    seed: int = 0
    #: Use only the first K of the store's views (None: all of them).
    views: int | None = None
    buffer_chunks: int = 4
    loader_workers: int = 0
    device: str = "auto"
    #: --precision (None: the recipe's); ``amp`` is the old spelling of "bf16".
    precision: str | None = None
    amp: bool = False
    verify: bool = True
    evaluate: bool = True
    #: A teacher checkpoint: run it on every batch instead of reading the store's boundaries (the
    #: online baseline; the store gives its layout and view seeds only).
    online_teacher: str | None = None
    #: With ``online_teacher``: a fresh augmentation of every sample each epoch (the original LIT
    #: regime), not the store's K views.
    fresh_views: bool = False
    #: Before the first fine-tune epoch, re-estimate the sections' BatchNorm statistics along the
    #: student's own path (train-mode forward, no gradient, over one epoch of rows).
    recalibrate_bn: bool = False
    #: Read the needed arrays into memory before the first epoch (not timed): for benchmarks, the
    #: same steps with no store reads. Results are identical to reading the store.
    in_memory: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise OptionError(f"Expected --mode in {MODES}, got {self.mode!r} instead.")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"Expected --{name.replace('_', '-')} >= 1, got {value} instead.")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise OptionError(f"Expected --{name} in [0, 1], got {value} instead.")
        if self.block is not None and self.mode != "ir":
            raise OptionError("--block trains one section alone, which only --mode ir does.")
        if self.mode == "finetune" and not self.init:
            raise OptionError("--mode finetune continues a trained student: give its checkpoint with --init.")
        if self.views is not None and self.views < 1:
            raise OptionError(f"Expected --views >= 1 (the first K stored views), got {self.views} instead.")
        if self.buffer_chunks < 1 or self.loader_workers < 0:
            raise OptionError("Expected --buffer-chunks >= 1 and --loader-workers >= 0.")
        if self.fresh_views and self.online_teacher is None:
            raise OptionError("--fresh-views draws new views for the teacher to compute: it needs --online-teacher.")
        if self.amp and self.precision not in (None, "bf16"):
            raise OptionError(f"--amp is the old spelling of --precision bf16; it contradicts --precision {self.precision}.")
        if self.recalibrate_bn and self.mode != "finetune":
            raise OptionError("--recalibrate-bn re-estimates an assembled student's BatchNorm statistics before fine-tuning: "
                              "use it with --mode finetune.")
        if self.ir_loss is not None and self.ir_loss not in IR_LOSSES:
            raise OptionError(f"Expected --ir-loss in {IR_LOSSES}, got {self.ir_loss!r} instead.")
        if self.train_head and self.mode == "ir":
            raise OptionError("--mode ir trains each section on its boundaries alone and never runs the head: drop --train-head.")
        if self.student_init is not None and self.student_init not in STUDENT_INITS:
            raise OptionError(f"Expected --student-init in {STUDENT_INITS}, got {self.student_init!r} instead.")
        if self.online_teacher is not None and self.in_memory:
            raise OptionError("--online-teacher computes every batch with the teacher; it cannot also read the store into memory.")


def resolve_config(recipe: Recipe, options: BlockTrainOptions) -> dict:
    """defaults < recipe < flags, flattened into one JSON-able dict recorded with every checkpoint."""
    phase: TrainConfig = recipe.distill.finetune if options.mode == "finetune" else recipe.distill.lit
    phase = phase.with_flags(**{k: getattr(options, k) for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay",
                                                                 "milestones", "schedule", "warmup", "nesterov")})
    beta = 0.0 if options.mode == "ir" else (options.beta if options.beta is not None else recipe.distill.beta)
    lit_phase = options.mode in ("lit", "ir")
    config = {**asdict(phase), "milestones": list(phase.milestones), "betas": list(phase.betas),
              "alpha": options.alpha if options.alpha is not None else recipe.distill.alpha,
              "tau": options.tau if options.tau is not None else recipe.distill.tau,
              "beta": beta,
              # The scale belongs to the LIT phase's loss; other modes train on KD or a hint alone.
              "loss_scale": (options.loss_scale if options.loss_scale is not None else recipe.distill.loss_scale)
              if lit_phase else 1.0,
              "ir_loss": options.ir_loss or recipe.distill.ir_loss,
              "ir_feature_axis": recipe.distill.ir_feature_axis,
              "student_init": options.student_init or recipe.student_init,
              "train_head": head_trains_by_default(options.mode) if options.train_head is None else options.train_head}
    config.update({k: v for k, v in asdict(options).items() if k not in config})
    config["milestones"] = list(config["milestones"])
    config["online"] = options.online_teacher is not None
    config["precision"] = requested_precision(recipe, options)
    config["data_epoch_offset"] = 0  # an --init student's epochs of data, set when it is read
    del config["amp"]
    return config


def requested_precision(recipe: Recipe, options: BlockTrainOptions) -> str:
    """--precision, else --amp (bf16), else the recipe's default."""
    if options.precision is not None:
        return options.precision
    return "bf16" if options.amp else recipe.precision


def training_differences(saved: dict, expected: dict, ignore: Sequence[str] = ()) -> list[str]:
    """"key saved -> expected" for every setting of a finished run's config that ``expected`` (a
    ``resolve_config`` with its precision resolved) trains differently; run-only keys and ``ignore``
    are left out."""
    # data_epoch_offset follows from the --init checkpoint, compared as "init" (its path): a freshly
    # resolved config always says 0, so comparing the key would flag every fine-tune.
    skip = {*RUN_ONLY_KEYS, *_RETIRED_KEYS, "data_epoch_offset", *ignore}
    saved = _saved_config(saved)
    keys = [k for k in dict.fromkeys([*expected, *saved]) if k not in skip]
    return changed_settings(saved, expected, keys, _RESUME_DEFAULTS)


def _saved_config(saved: dict) -> dict:
    """A checkpoint's config with the keys its mode implied before they were recorded: a checkpoint
    from before --train-head trained the head exactly where its mode does by default, and one from
    before data_epoch_offset drew its data from epoch 0."""
    return {"train_head": head_trains_by_default(saved.get("mode", "lit")), "data_epoch_offset": 0, **saved}


def _hint_boundary(options: BlockTrainOptions, sections: int) -> int:
    return options.hint_boundary or max(1, math.ceil(sections / 2))


def _wanted_fields(recipe: Recipe, store: Store, options: BlockTrainOptions) -> list[str]:
    """The store arrays a run of ``options`` reads (the same for every student of the run)."""
    sections = len(store.boundary_names) - 1
    beta = resolve_config(recipe, options)["beta"]
    return store_fields(fields_read(options.mode, sections, options.block, _hint_boundary(options, sections), beta),
                        store.manifest.arrays)


def check_student_fits(split: SplitModel, store: Store, student: str) -> None:
    """Refuse a student whose sections do not map the store's boundaries onto each other."""
    arrays = store.manifest.arrays
    shapes = [arrays[name].row_shape for name in store.boundary_names]
    if len(split.sections) != len(shapes) - 1:  # first: the shape checks below index one boundary per section
        raise StoreMismatchError(
            f"Expected student {student!r} to have one section per stored boundary pair, i.e. the store's "
            f"{len(shapes) - 1} sections, but it has {len(split.sections)}: the recipe's sections changed since "
            f"store {str(store.path)!r} was extracted. Extract a new store with this recipe, or train with the recipe "
            "the store was made with.")
    with torch.no_grad(), evaluating(split):
        for i, section in enumerate(split.sections, start=1):
            try:
                got = tuple(section(torch.zeros(1, *shapes[i - 1])).shape[1:])
            except RuntimeError as exc:
                raise StoreMismatchError(f"Student {student!r} section {i} cannot take the store's boundary {i - 1} "
                                         f"of shape {shapes[i - 1]}: {str(exc).splitlines()[0]}") from None
            if got != shapes[i]:
                raise StoreMismatchError(f"Student {student!r} section {i} maps {shapes[i - 1]} to {got}, "
                                         f"but the store's boundary {i} is {shapes[i]}.")


@torch.no_grad()
def recalibrate_batchnorm(split: SplitModel, loader, compute: Compute) -> int:
    """Re-estimate the sections' BatchNorm running statistics along the student's own path
    S_i(S_{i-1}(...S_1(T_0))) with train-mode forwards and no gradient (a cumulative average over
    the loader's batches). After the LIT phase, a section's statistics come from the teacher's
    boundaries, not from the previous student section's outputs that it sees when assembled.
    Returns the rows seen."""
    norms = [m for m in split.sections.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    split.eval()
    split.sections.train()
    rows = 0
    try:
        for batch in loader:
            with compute.autocast():
                split.run_sections(compute.input(batch["boundaries/0"]).float())
            rows += len(batch["boundaries/0"])
    finally:
        for m, momentum in saved:
            m.momentum = momentum
    return rows


def train_blocks(recipe: Recipe, store_path: str | Path, students: Sequence[str], out_dir: str | Path,
                 options: BlockTrainOptions = BlockTrainOptions(), *, resume: bool = False,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Train each named student from the store; returns one result dict per student."""
    store = open_store(store_path)
    ir_only = options.mode == "ir" or (options.mode == "lit" and resolve_config(recipe, options)["beta"] == 0)
    if recipe.task == "generation" and not ir_only:
        raise OptionError(f"Recipe {recipe.name!r} is a {recipe.task} task: its students train with the IR losses only "
                          "(--mode ir, or --mode lit with --beta 0); KD needs class logits.")
    if store.manifest.identity.recipe != recipe.name:
        raise StoreMismatchError(f"Store {str(store_path)!r} was extracted for recipe {store.manifest.identity.recipe!r}, "
                                 f"not {recipe.name!r}.")
    if options.views is not None and options.views > store.manifest.layout.views:
        raise OptionError(f"Expected --views at most the store's {store.manifest.layout.views} views, "
                          f"got {options.views} instead.")
    if options.block is not None and not 1 <= options.block <= len(store.boundary_names) - 1:
        raise OptionError(f"Expected --block between 1 and {len(store.boundary_names) - 1}, got {options.block} instead.")
    if options.verify and options.online_teacher is None:  # an online run reads no stored activations
        require_intact(store)
    for name in students:  # refuse an unknown or unsplittable student before any training
        build = recipe.student_builder(name)
        try:
            split_model(build(), recipe)
        except RecipeError as exc:
            raise RecipeError(f"Student {name!r} does not fit recipe {recipe.name!r}: {exc}") from None
    online = None
    if options.online_teacher is not None:  # loaded once, and a wrong teacher refused before any training
        device = resolve_device(options.device)
        if device.type == "cuda" and options.loader_workers:
            raise OptionError("--online-teacher runs the teacher on the GPU in the training process: use --loader-workers 0.")
        if options.fresh_views and options.loader_workers:
            raise OptionError("--fresh-views draws each epoch's views in the training process: use --loader-workers 0.")
        online = OnlineTeacherDataset(recipe, store, options.online_teacher, _wanted_fields(recipe, store, options), device,
                                      precision=requested_precision(recipe, options), fresh_views=options.fresh_views)
    return [_train_one(recipe, store, name, Path(out_dir) / name, options, resume, log, online) for name in students]


def _train_one(recipe: Recipe, store: Store, student: str, out: Path, options: BlockTrainOptions,
               resume: bool, log: Callable[[str], None], online=None) -> dict:
    config = resolve_config(recipe, options)
    device = resolve_device(options.device)
    sections = len(store.boundary_names) - 1
    hint = _hint_boundary(options, sections)
    torch.manual_seed(options.seed)  # the student's initial weights depend on --seed alone
    model, split = build_student(recipe, student)
    check_student_fits(split, store, student)  # before the head: a misfit section is the clearer message
    adopt_teacher_parts(split, student, store.module_state("stem"), store.module_state("head"))
    if config["student_init"] == "teacher-blocks" and not options.init:
        picks = adopt_teacher_blocks(split, student, _teacher_sections(store))
        log(f"{student}: sections start from the teacher's blocks {picks} (--student-init teacher-blocks)")
    if options.init:
        init = read_student(options.init)
        if init["recipe"] != recipe.name or init["student"] != student:
            raise CheckpointError(f"--init {options.init!r} is a {init['recipe']}/{init['student']} student, not {recipe.name}/{student}.")
        model.load_state_dict(init["state_dict"])
        # The epochs of data the --init student has drawn: a fine-tune continues that stream of row
        # orders and fresh views instead of replaying the LIT phase's first epochs.
        config["data_epoch_offset"] = init["epoch"] + init["config"].get("data_epoch_offset", 0)
    compute = resolve_compute(config["precision"], device, model)
    config["precision"], config["channels_last"] = compute.precision, compute.channels_last
    compute.model(model)
    params = trainable_parameters(split, options.mode, options.block, config["train_head"])
    schedule = TrainConfig(**{k: config[k] for k in _TRAIN_CONFIG_FIELDS})
    optimizer = schedule.make_optimizer(params)
    scaler = compute.grad_scaler()

    last, final = out / "last.pt", out / "student.pt"
    start_epoch, history = 0, []
    if last.exists():
        if not resume:
            raise CheckpointError(f"{str(out)!r} already holds a training run. Pass --resume to continue it, or choose another --out.")
        state = read_student(last)
        if state["store"]["identity"] != store.manifest.identity:
            raise CheckpointError(f"Cannot resume {str(last)!r}: it was trained from another store.")
        changed = changed_settings(_saved_config(state["config"]), config, RESUME_KEYS, _RESUME_DEFAULTS)
        if changed:
            raise CheckpointError(f"Cannot resume {str(last)!r} with other settings ({'; '.join(changed)}). "
                                  "Resume with the same options (only --epochs may grow), or choose another --out.")
        # A run resumes its own data stream (a checkpoint from before the offset existed had none).
        config["data_epoch_offset"] = _saved_config(state["config"])["data_epoch_offset"]
        if options.init and "data_epoch_offset" not in state["config"]:
            log(f"warning: {str(last)!r} was started before litcache recorded data_epoch_offset: it replays the "
                "--init run's first epochs of data (row orders, fresh views) and resumes on that stream. "
                "Delete its folder to fine-tune on the continued stream.")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if "grad_scaler" in state:
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, history = state["epoch"], list(state["history"])
        log(f"{student}: all {config['epochs']} epochs already trained" if start_epoch >= config["epochs"] else
            f"{student}: resuming at epoch {start_epoch + 1} of {config['epochs']}")
    out.mkdir(parents=True, exist_ok=True)

    wanted = store_fields(fields_read(options.mode, sections, options.block, hint, config["beta"]), store.manifest.arrays)
    if online is not None:
        dataset = online
    else:
        dataset = StoreDataset(store, wanted, cache_chunks=2 * options.buffer_chunks + 2)
        if options.in_memory:
            t = time.perf_counter()
            dataset = MemoryDataset.from_store(dataset)
            log(f"{student}: read {len(dataset)} rows of {', '.join(wanted)} into memory in {time.perf_counter() - t:.1f} s "
                "(not counted in the epochs' seconds)")
    # The same sampler in every case: cached, in-memory and online runs visit the same rows in the same order.
    sampler = ChunkShuffleSampler.for_store(store, config["batch_size"], buffer_chunks=options.buffer_chunks,
                                            num_workers=options.loader_workers, seed=options.seed, views=options.views)
    loader = make_loader(dataset, sampler, num_workers=options.loader_workers,
                         pin_memory=device.type == "cuda" and online is None)  # online batches are on the device already
    store_record = {"path": str(store.path), "identity": store.manifest.identity.to_dict()}  # a dict: weights_only loads
    # Per-epoch test accuracy (a language model's perplexity): not for generators, and only for a whole student.
    wants_eval = options.evaluate and options.block is None and recipe.task != "generation"
    eval_set = recipe.load_split("test") if wants_eval and "test" in recipe.splits else None
    hint_epochs = config["epochs"] // 2 if options.mode == "hints" else 0
    what = options.mode + (" online" if config["online"] else "") + (" fresh views" if options.fresh_views else "")
    log(f"{student}: {what}, {compute.describe()}")
    views = options.views or store.manifest.layout.views
    if not options.fresh_views and config["epochs"] > VIEW_REUSE_WARNING * views:
        log(f"warning: {config['epochs']} epochs over {views} stored views: every view is seen about "
            f"{config['epochs'] / views:.0f} times, where the original LIT code draws a fresh crop every epoch. Fixed views "
            "cost accuracy on long schedules (see benchmarks/README.md, fidelity); extract more --views.")

    offset = config["data_epoch_offset"]
    if options.recalibrate_bn and start_epoch == 0:
        _set_data_epoch(sampler, dataset, offset)
        _recalibrate(split, dataset, sampler, compute, options, eval_set, model, log, student, recipe.task)
    steps_per_epoch = len(sampler)
    for epoch in range(start_epoch, config["epochs"]):
        _set_data_epoch(sampler, dataset, offset + epoch)
        torch.manual_seed(options.seed * 100_003 + offset + epoch)
        set_train_mode(split, options.mode, options.block, config["train_head"])
        sums: dict[str, torch.Tensor] = {}
        rows, t0, lr = 0, time.perf_counter(), config["lr"]
        for step, batch in enumerate(loader):
            batch = {k: compute.input(v) for k, v in batch.items()}
            lr = schedule.apply_schedule(optimizer, epoch, step, steps_per_epoch)
            parts = train_step(split, batch, options.mode, config, optimizer, scaler, compute, block=options.block,
                               hint=hint, hint_phase=epoch < hint_epochs)
            n = len(next(iter(batch.values())))
            rows += n
            for k, v in parts.items():  # summed on the device: no host sync per step
                sums[k] = sums[k] + v * n if k in sums else v * n
            if (step + 1) % CHECK_EVERY == 0:
                check_finite_loss(sums["loss"], student, epoch)
        check_finite_loss(sums["loss"], student, epoch)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **{k: v.item() / rows for k, v in sums.items()}, "lr": lr,
                  "rows_per_s": rows / seconds, "seconds": seconds}
        if eval_set is not None:
            record.update(test_score(model, eval_set, compute, recipe.task))
        history.append(record)
        log(_log_line(student, what, record, config["epochs"]))
        save_student(last, model, recipe=recipe, student=student, mode=options.mode, sections_trained=_sections_trained(options, sections),
                     store=store_record, config=config, history=history, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                     extra={"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else None)
        (out / "metrics.json").write_text(json.dumps({"student": student, "mode": options.mode, "online": config["online"],
                                                      "config": config, "history": history}, indent=2))

    save_student(final, model, recipe=recipe, student=student, mode=options.mode, sections_trained=_sections_trained(options, sections),
                 store=store_record, config=config, history=history, epoch=config["epochs"])
    return {"student": student, "checkpoint": str(final), "history": history, "config": config}


def _set_data_epoch(sampler: ChunkShuffleSampler, dataset, epoch: int) -> None:
    sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):  # fresh views: a new augmentation of every sample each epoch
        dataset.set_epoch(epoch)


def _recalibrate(split: SplitModel, dataset, sampler, compute: Compute, options: BlockTrainOptions,
                 eval_set, model: nn.Module, log: Callable[[str], None], student: str, task: str) -> None:
    """BatchNorm recalibration before fine-tuning, logged with the test accuracy (or perplexity) before and after."""
    before = test_score(model, eval_set, compute, task) if eval_set is not None else None
    loader = make_loader(dataset, sampler, num_workers=options.loader_workers)
    t = time.perf_counter()
    rows = recalibrate_batchnorm(split, loader, compute)
    line = f"{student}: BatchNorm statistics recalibrated along the student's path over {rows} rows in {time.perf_counter() - t:.1f} s"
    if eval_set is not None:
        after = test_score(model, eval_set, compute, task)
        (key, a), b = next(iter(before.items())), after[next(iter(before))]
        line += f"; {key.replace('_', ' ')} {a:.4f} -> {b:.4f}"
    log(line)


def _teacher_sections(store: Store) -> list[dict]:
    """The teacher's section weights kept in the store (stores extracted before they were kept have none)."""
    sections = len(store.boundary_names) - 1
    parts = store.manifest.teacher_modules or {}
    if any(f"section{i}" not in parts for i in range(1, sections + 1)):
        raise StoreMismatchError(f"Store {str(store.path)!r} holds no weights of the teacher's sections (stores keep them "
                                 "for recipes with student_init='teacher-blocks', and only since litcache kept them), so "
                                 "--student-init teacher-blocks has nothing to copy. Train with --student-init scratch, or "
                                 "set the recipe's student_init and extract the store again.")
    return [store.module_state(f"section{i}") for i in range(1, sections + 1)]


def _sections_trained(options: BlockTrainOptions, sections: int) -> list[int]:
    return [options.block] if options.block is not None else list(range(1, sections + 1))


def _log_line(student: str, mode: str, record: dict, epochs: int) -> str:
    irs = [f"{record[k]:.4g}" for k in sorted(k for k in record if k.startswith("ir"))]
    parts = [f"{student} {mode} epoch {record['epoch']}/{epochs}"]
    if irs:
        parts.append("ir [" + " ".join(irs) + "]")
    for key in ("hint", "kd"):
        if key in record:
            parts.append(f"{key} {record[key]:.4g}")
    parts.append(f"loss {record['loss']:.4g}  lr {record['lr']:.3g}  {record['rows_per_s']:.0f} rows/s")
    if "test_accuracy" in record:
        parts.append(f"test acc {record['test_accuracy']:.4f}")
    if "test_perplexity" in record:
        parts.append(f"test perplexity {record['test_perplexity']:.3f}")
    return "  ".join(parts)
