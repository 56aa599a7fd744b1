"""`litcache train-blocks`: train LIT students from a store; the teacher never runs.

Every mode starts from the stored stem output T_0 (the stem is the teacher's, frozen):

    lit       beta * KD(S(T_0)) + (1 - beta) * sum_i MSE(S_i(T_{i-1}), T_i)   (head frozen)
    ir        beta = 0: each section alone; --block I trains section I only      (head frozen)
    finetune  KD(S(T_0)) alone, from an assembled student (--init)              (sections + head)
    kd        KD(S(T_0)) alone, from a fresh student: the KD baseline           (sections + head)
    hints     FitNets: first half of the epochs MSE(S_1..m(T_0), T_m), then KD  (sections + head)

``online_teacher`` is the baseline for comparisons: the same run with the teacher's boundaries
computed on every batch (``litcache.online``) instead of read from the store.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .audit import require_intact
from .data import resolve_device
from .dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset, make_loader
from .errors import CheckpointError, OptionError, StoreMismatchError
from .losses import ir_loss, kd_loss, lit_loss
from .recipe import Recipe, TrainConfig
from .sections import SplitModel
from .store import Store, open_store
from .student import adopt_teacher_parts, build_student, read_student, save_student

__all__ = ["MODES", "BlockTrainOptions", "train_blocks", "step_losses", "check_student_fits"]

MODES = ("lit", "ir", "finetune", "kd", "hints")
#: Settings a resumed run must share with the run it continues (--epochs may grow; device,
#: workers, where the stored rows are read from and logging may change). ``online``: an online
#: and a cached run are different runs, even with the same teacher.
RESUME_KEYS = ("mode", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "optimizer", "betas",
               "alpha", "tau", "beta", "block", "hint_boundary", "init", "seed", "buffer_chunks", "online")
#: What a checkpoint written before a resume key existed had instead.
_RESUME_DEFAULTS = {"online": False}
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
    alpha: float | None = None
    tau: float | None = None
    beta: float | None = None
    block: int | None = None
    hint_boundary: int | None = None
    init: str | None = None
    seed: int = 0
    buffer_chunks: int = 4
    loader_workers: int = 0
    device: str = "auto"
    amp: bool = False
    verify: bool = True
    evaluate: bool = True
    #: A teacher checkpoint: run it on every batch instead of reading the store's boundaries (the
    #: online baseline; the store gives its layout and view seeds only).
    online_teacher: str | None = None
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
        if self.buffer_chunks < 1 or self.loader_workers < 0:
            raise OptionError("Expected --buffer-chunks >= 1 and --loader-workers >= 0.")
        if self.online_teacher is not None and self.in_memory:
            raise OptionError("--online-teacher computes every batch with the teacher; it cannot also read the store into memory.")


def resolve_config(recipe: Recipe, options: BlockTrainOptions) -> dict:
    """defaults < recipe < flags, flattened into one JSON-able dict recorded with every checkpoint."""
    phase: TrainConfig = recipe.distill.finetune if options.mode == "finetune" else recipe.distill.lit
    overrides = {k: getattr(options, k) for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones")
                 if getattr(options, k) is not None}
    phase = replace(phase, **overrides)
    beta = 0.0 if options.mode == "ir" else (options.beta if options.beta is not None else recipe.distill.beta)
    config = {**asdict(phase), "milestones": list(phase.milestones), "betas": list(phase.betas),
              "alpha": options.alpha if options.alpha is not None else recipe.distill.alpha,
              "tau": options.tau if options.tau is not None else recipe.distill.tau,
              "beta": beta}
    config.update({k: v for k, v in asdict(options).items() if k not in config})
    config["milestones"] = list(config["milestones"])
    config["online"] = options.online_teacher is not None
    return config


def _hint_boundary(options: BlockTrainOptions, sections: int) -> int:
    return options.hint_boundary or max(1, math.ceil(sections / 2))


def _wanted_fields(recipe: Recipe, store: Store, options: BlockTrainOptions) -> list[str]:
    """The store arrays a run of ``options`` reads (the same for every student of the run)."""
    sections = len(store.boundary_names) - 1
    beta = resolve_config(recipe, options)["beta"]
    return _fields(options.mode, sections, options.block, _hint_boundary(options, sections), beta)


def _fields(mode: str, sections: int, block: int | None, hint: int, beta: float) -> list[str]:
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


def step_losses(split: SplitModel, batch: dict[str, torch.Tensor], mode: str, config: dict, *,
                block: int | None = None, hint: int = 1, hint_phase: bool = False) -> tuple[torch.Tensor, dict]:
    """The training loss of one batch (float32 tensors keyed by store array name) and its parts."""
    sections = len(split.sections)
    t0 = batch.get("boundaries/0")  # absent when one --block of ir is trained
    parts: dict[str, float] = {}
    if mode in ("lit", "ir"):
        trained = [block] if block is not None else list(range(1, sections + 1))
        irs = [ir_loss(split.sections[i - 1](batch[f"boundaries/{i - 1}"]), batch[f"boundaries/{i}"]) for i in trained]
        for i, value in zip(trained, irs):
            parts[f"ir{i}"] = value.item()
        kd = None
        if mode == "lit" and config["beta"] > 0:
            kd = kd_loss(split.head(split.run_sections(t0)[-1]), batch["logits"], batch["labels"], config["alpha"], config["tau"])
            parts["kd"] = kd.item()
        loss = lit_loss(kd, irs, config["beta"])
    elif mode == "hints" and hint_phase:
        z = t0
        for section in split.sections[:hint]:
            z = section(z)
        loss = ir_loss(z, batch[f"boundaries/{hint}"])
        parts["hint"] = loss.item()
    else:  # kd, finetune, and the second phase of hints
        loss = kd_loss(split.head(split.run_sections(t0)[-1]), batch["logits"], batch["labels"], config["alpha"], config["tau"])
        parts["kd"] = loss.item()
    parts["loss"] = loss.item()
    return loss, parts


def check_student_fits(split: SplitModel, store: Store, student: str) -> None:
    """Refuse a student whose sections do not map the store's boundaries onto each other."""
    arrays = store.manifest["arrays"]
    shapes = [tuple(arrays[name]["shape"][1:]) for name in store.boundary_names]
    with torch.no_grad():
        was = split.training
        split.eval()
        try:
            for i, section in enumerate(split.sections, start=1):
                try:
                    got = tuple(section(torch.zeros(1, *shapes[i - 1])).shape[1:])
                except RuntimeError as exc:
                    raise StoreMismatchError(f"Student {student!r} section {i} cannot take the store's boundary {i - 1} "
                                             f"of shape {shapes[i - 1]}: {str(exc).splitlines()[0]}") from None
                if got != shapes[i]:
                    raise StoreMismatchError(f"Student {student!r} section {i} maps {shapes[i - 1]} to {got}, "
                                             f"but the store's boundary {i} is {shapes[i]}.")
        finally:
            split.train(was)
    if len(split.sections) != len(shapes) - 1:
        raise StoreMismatchError(f"Student {student!r} has {len(split.sections)} sections; the store has {len(shapes) - 1}.")


def _trainable(split: SplitModel, mode: str, block: int | None) -> list[nn.Parameter]:
    for p in split.parameters():
        p.requires_grad_(False)
    if mode in ("lit", "ir"):
        modules = [split.sections[block - 1]] if block is not None else list(split.sections)
    else:
        modules = [*split.sections, split.head]
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def _set_train_mode(split: SplitModel, mode: str, block: int | None) -> None:
    split.eval()  # frozen parts (stem, and the head in lit/ir) keep their BatchNorm statistics
    if mode in ("lit", "ir"):
        for i, section in enumerate(split.sections, start=1):
            section.train(block is None or i == block)
    else:
        split.sections.train()
        split.head.train()


def train_blocks(recipe: Recipe, store_path: str | Path, students: Sequence[str], out_dir: str | Path,
                 options: BlockTrainOptions = BlockTrainOptions(), *, resume: bool = False,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Train each named student from the store; returns one result dict per student."""
    store = open_store(store_path)
    ir_only = options.mode == "ir" or (options.mode == "lit" and resolve_config(recipe, options)["beta"] == 0)
    if recipe.task != "classification" and not ir_only:
        raise OptionError(f"Recipe {recipe.name!r} is a {recipe.task} task: its students train with the IR losses only "
                          "(--mode ir, or --mode lit with --beta 0); KD needs class logits.")
    if store.manifest["identity"]["recipe"] != recipe.name:
        raise StoreMismatchError(f"Store {str(store_path)!r} was extracted for recipe {store.manifest['identity']['recipe']!r}, "
                                 f"not {recipe.name!r}.")
    if options.block is not None and not 1 <= options.block <= len(store.boundary_names) - 1:
        raise OptionError(f"Expected --block between 1 and {len(store.boundary_names) - 1}, got {options.block} instead.")
    if options.verify and options.online_teacher is None:  # an online run reads no stored activations
        require_intact(store)
    for name in students:
        recipe.student_builder(name)  # refuse an unknown student before any training
    online = None
    if options.online_teacher is not None:  # loaded once, and a wrong teacher refused before any training
        from .online import OnlineTeacherDataset

        device = resolve_device(options.device)
        if device.type == "cuda" and options.loader_workers:
            raise OptionError("--online-teacher runs the teacher on the GPU in the training process: use --loader-workers 0.")
        online = OnlineTeacherDataset(recipe, store, options.online_teacher, _wanted_fields(recipe, store, options), device)
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
    if options.init:
        init = read_student(options.init)
        if init["recipe"] != recipe.name or init["student"] != student:
            raise CheckpointError(f"--init {options.init!r} is a {init['recipe']}/{init['student']} student, not {recipe.name}/{student}.")
        model.load_state_dict(init["state_dict"])
    model.to(device)
    params = _trainable(split, options.mode, options.block)
    optimizer = TrainConfig(**{k: config[k] for k in _TRAIN_CONFIG_FIELDS}).make_optimizer(params)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config["milestones"], config["gamma"])

    last, final = out / "last.pt", out / "student.pt"
    start_epoch, history = 0, []
    if last.exists():
        if not resume:
            raise CheckpointError(f"{str(out)!r} already holds a training run. Pass --resume to continue it, or choose another --out.")
        state = read_student(last)
        if state["store"]["identity"] != store.manifest["identity"]:
            raise CheckpointError(f"Cannot resume {str(last)!r}: it was trained from another store.")
        saved = {k: state["config"].get(k, _RESUME_DEFAULTS.get(k)) for k in RESUME_KEYS}
        changed = [f"{k} {saved[k]!r} -> {config.get(k)!r}" for k in RESUME_KEYS if saved[k] != config.get(k)]
        if changed:
            raise CheckpointError(f"Cannot resume {str(last)!r} with other settings ({'; '.join(changed)}). "
                                  "Resume with the same options (only --epochs may grow), or choose another --out.")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], list(state["history"])
        scheduler.last_epoch = start_epoch
        log(f"{student}: resuming at epoch {start_epoch + 1} of {config['epochs']}")
    out.mkdir(parents=True, exist_ok=True)

    wanted = _fields(options.mode, sections, options.block, hint, config["beta"])
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
                                            num_workers=options.loader_workers, seed=options.seed)
    loader = make_loader(dataset, sampler, num_workers=options.loader_workers,
                         pin_memory=device.type == "cuda" and online is None)  # online batches are on the device already
    store_record = {"path": str(store.path), "identity": store.manifest["identity"]}
    # Per-epoch test accuracy: classification only, and only for a whole student.
    wants_eval = options.evaluate and options.block is None and recipe.task == "classification"
    eval_set = recipe.load_split("test") if wants_eval and "test" in recipe.splits else None
    hint_epochs = config["epochs"] // 2 if options.mode == "hints" else 0

    for epoch in range(start_epoch, config["epochs"]):
        sampler.set_epoch(epoch)
        torch.manual_seed(options.seed * 100_003 + epoch)
        _set_train_mode(split, options.mode, options.block)
        sums: dict[str, float] = {}
        rows, t0 = 0, time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.amp):
                loss, parts = step_losses(split, batch, options.mode, config, block=options.block, hint=hint,
                                          hint_phase=epoch < hint_epochs)
            if not math.isfinite(parts["loss"]):
                raise CheckpointError(f"{student}: the loss became {parts['loss']} at epoch {epoch + 1}; lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = len(next(iter(batch.values())))
            rows += n
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * n
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch used
        scheduler.step()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **{k: v / rows for k, v in sums.items()}, "lr": lr,
                  "rows_per_s": rows / seconds, "seconds": seconds}
        if eval_set is not None:
            from .evaluate import accuracy

            record["test_accuracy"] = accuracy(model, eval_set, device)
        history.append(record)
        log(_log_line(student, options.mode + (" online" if config["online"] else ""), record, config["epochs"]))
        save_student(last, model, recipe=recipe, student=student, mode=options.mode, sections_trained=_sections_trained(options, sections),
                     store=store_record, config=config, history=history, epoch=epoch + 1, optimizer=optimizer.state_dict())
        (out / "metrics.json").write_text(json.dumps({"student": student, "mode": options.mode, "online": config["online"],
                                                      "config": config, "history": history}, indent=2))

    save_student(final, model, recipe=recipe, student=student, mode=options.mode, sections_trained=_sections_trained(options, sections),
                 store=store_record, config=config, history=history, epoch=config["epochs"])
    return {"student": student, "checkpoint": str(final), "history": history, "config": config}


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
    return "  ".join(parts)
