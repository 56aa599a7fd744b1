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
computed on every batch (``litcache.training.online``) instead of read from the store; with
``fresh_views`` it also draws a fresh augmentation of every sample each epoch, as the original
LIT code trains, instead of replaying the store's K views.

Networks compute in the run's ``--precision`` (``litcache.runtime.precision``); weights, optimizer
state and losses stay float32.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from ..errors import CheckpointError, OptionError, RecipeError, StoreMismatchError
from ..recipe import Recipe
from ..runtime.devices import resolve_device
from ..runtime.eval_mode import evaluating
from ..runtime.precision import Compute, resolve_compute
from ..sections import SectionedModel, cut_sections
from ..store import Store, open_store
from ..store.verify import require_intact
from .config import BlockTrainOptions, RunConfig, resolve_config, resume_keys, upgrade_record
from .dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset, make_loader
from .loop import LossSums, cumulative_batchnorm, epoch_seed, resume_or_start
from .metrics import test_score
from .online import OnlineTeacherDataset
from .outputs import check_output, claim_output
from .step import set_train_mode, store_fields, train_step, trainable_parameters
from .student import adopt_teacher_blocks, adopt_teacher_parts, build_student, read_student, save_student

__all__ = ["BlockTrainOptions", "train_blocks", "prepare_student", "StudentRun", "wanted_fields", "check_student_fits",
           "recalibrate_batchnorm", "teacher_section_states"]

#: train-blocks warns when the epochs exceed the views by more than this factor.
VIEW_REUSE_WARNING = 4


def train_blocks(recipe: Recipe, store_path: str | Path, students: Sequence[str], out_dir: str | Path,
                 options: BlockTrainOptions = BlockTrainOptions(), *, resume: bool = False,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Train each named student from the store; returns one result dict per student."""
    store = open_store(store_path)
    config = resolve_config(recipe, options)
    _refuse_before_training(recipe, store, students, config)
    check_output(out_dir, folder=True)
    online = _online_teacher(recipe, store, config) if config.online else None
    results = []
    for name in students:
        with claim_output(Path(out_dir) / name):  # one run at a time writes a student's folder
            results.append(_train_one(recipe, store, name, Path(out_dir) / name, config, resume, log, online))
    return results


def _train_one(recipe: Recipe, store: Store, student: str, out: Path, config: RunConfig, resume: bool,
               log: Callable[[str], None], online: OnlineTeacherDataset | None) -> dict:
    """One student: its set-up, then the epoch loop."""
    run = prepare_student(recipe, store, student, config, log)
    model, sectioned, compute, optimizer, scaler = run.model, run.sectioned, run.compute, run.optimizer, run.scaler
    last, final = out / "last.pt", out / "student.pt"
    resumed = resume_or_start(last, resume, read=read_student, check=lambda state: _same_store(state, store, last),
                              saved_record=lambda state: upgrade_record(state["config"]), record=run.config.record(),
                              keys=resume_keys(run.config.record()), model=model, optimizer=optimizer, scaler=scaler,
                              load_weights=lambda m, state: m.load_state_dict(state), where=out)
    config = _resumed_config(run.config, resumed.state, last, log, student)
    history = resumed.history
    out.mkdir(parents=True, exist_ok=True)

    data = _run_data(store, config, wanted_fields(store, config), online, log, student)
    sections = len(sectioned.sections)
    eval_set = _eval_set(recipe, config)
    hint = config.hint(sections)
    hint_epochs = config.epochs // 2 if config.mode == "hints" else 0  # hints regress a boundary first, then KD
    steps_per_epoch = len(data.sampler)
    what = config.mode + (" online" if config.online else "") + (" fresh views" if config.fresh_views else "")
    log(f"{student}: {what}, {compute.describe()}")
    _warn_on_view_reuse(config, store, log)
    if config.recalibrate_bn and resumed.epoch == 0:
        data.set_epoch(config.data_epoch_offset)
        _recalibrate(sectioned, data, compute, eval_set, model, log, student, recipe.task)

    def save(path: Path, epoch: int, resume_point: bool) -> None:
        save_student(path, model, recipe=recipe, student=student, mode=config.mode,
                     sections_trained=config.phase.sections_trained(sections), store=_store_record(store),
                     config=config.record(), history=history, epoch=epoch,
                     optimizer=optimizer.state_dict() if resume_point else None,
                     extra={"grad_scaler": scaler.state_dict()} if resume_point and scaler.is_enabled() else None)

    for epoch in range(resumed.epoch, config.epochs):
        data.set_epoch(config.data_epoch_offset + epoch)
        torch.manual_seed(epoch_seed(config.seed, config.data_epoch_offset + epoch))
        set_train_mode(sectioned, config.phase)
        sums, t0, lr = LossSums(student, epoch), time.perf_counter(), config.optim.lr
        for step, batch in enumerate(data.loader):
            batch = {k: compute.input(v) for k, v in batch.items()}
            lr = config.optim.apply_schedule(optimizer, epoch, step, steps_per_epoch)
            parts = train_step(sectioned, batch, config.phase, config.losses, optimizer, scaler, compute, hint=hint,
                               hint_phase=epoch < hint_epochs)
            sums.add(parts, len(next(iter(batch.values()))))
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **sums.means(), "lr": lr, "rows_per_s": sums.rows / seconds, "seconds": seconds}
        if config.optim.precise_bn and config.phase.section is None:  # a section trained alone has no path yet
            t1 = time.perf_counter()
            recalibrate_batchnorm(sectioned, data.boundary0_loader(), compute)
            record["precise_bn_seconds"] = time.perf_counter() - t1
        if eval_set is not None:
            record.update(test_score(model, eval_set, compute, recipe.task))
        history.append(record)
        log(_log_line(student, what, record, config.epochs))
        save(last, epoch + 1, resume_point=True)
        (out / "metrics.json").write_text(json.dumps({"student": student, "mode": config.mode, "online": config.online,
                                                      "config": config.record(), "history": history}, indent=2))

    save(final, config.epochs, resume_point=False)
    return {"student": student, "checkpoint": str(final), "history": history, "config": config.record()}


@dataclass
class StudentRun:
    """A student ready to train: its model and sections on the device, optimizer, gradient scaler,
    and the run's config with what the student adds (the --init data offset, the precision it
    computes in)."""

    model: nn.Module
    sectioned: SectionedModel
    compute: Compute
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    config: RunConfig


def prepare_student(recipe: Recipe, store: Store, student: str, config: RunConfig,
                    log: Callable[[str], None] = print) -> StudentRun:
    """Build ``student`` for ``config`` from ``store``: the teacher's stem and head, and its blocks or an
    --init checkpoint where the config says; what train-blocks trains and bench times."""
    torch.manual_seed(config.seed)  # the student's initial weights depend on --seed alone
    model, sectioned = build_student(recipe, student)
    check_student_fits(sectioned, store, student)  # before the head: a misfit section is the clearer message
    adopt_teacher_parts(sectioned, student, store.module_state("stem"), store.module_state("head"))
    if config.student_init == "teacher-blocks" and not config.init:
        picks = adopt_teacher_blocks(sectioned, student, teacher_section_states(store), config.teacher_layers)
        how = "--teacher-layers" if config.teacher_layers else "evenly spaced, --student-init teacher-blocks"
        log(f"{student}: sections start from the teacher's blocks {picks} ({how})")
    if config.init:
        init = read_student(config.init)
        if init["recipe"] != recipe.name or init["student"] != student:
            raise CheckpointError(f"--init {config.init!r} is a {init['recipe']}/{init['student']} student, not "
                                  f"{recipe.name}/{student}.")
        model.load_state_dict(init["state_dict"])
        config = replace(config, data_epoch_offset=init["epoch"] + init["config"].get("data_epoch_offset", 0))
    compute = resolve_compute(config.precision, resolve_device(config.device), model)
    config = config.with_compute(compute.precision, compute.channels_last)
    compute.model(model)
    trained = trainable_parameters(sectioned, config.phase)
    if not trained:
        raise OptionError(f"Student {student!r} has no parameters that --mode {config.mode} trains (every section it "
                          "trains is empty, e.g. a mix whose sections are all skipped). Pick a student with layers "
                          "to train, or another mode.")
    optimizer = config.optim.make_optimizer(trained)
    return StudentRun(model, sectioned, compute, optimizer, compute.grad_scaler(), config)


def wanted_fields(store: Store, config: RunConfig) -> list[str]:
    """The store arrays a step of ``config`` reads (the same for every student of the run)."""
    sections = len(store.boundary_names) - 1
    return store_fields(config.phase.fields_read(sections, config.hint(sections), config.losses.beta),
                        store.manifest.arrays)


def _refuse_before_training(recipe: Recipe, store: Store, students: Sequence[str], config: RunConfig) -> None:
    """Every refusal that needs no student trained: the task, the store, the flags, each student's sections."""
    if recipe.task == "generation" and config.reads_logits:
        raise OptionError(f"Recipe {recipe.name!r} is a {recipe.task} task: its students train with the IR losses only "
                          "(--mode ir, or --mode lit with --beta 0); KD needs class logits.")
    if store.manifest.identity.recipe != recipe.name:
        raise StoreMismatchError(f"Store {str(store.path)!r} was extracted for recipe "
                                 f"{store.manifest.identity.recipe!r}, not {recipe.name!r}.")
    if config.views is not None and config.views > store.manifest.layout.views:
        raise OptionError(f"Expected --views at most the store's {store.manifest.layout.views} views, "
                          f"got {config.views} instead.")
    sections = len(store.boundary_names) - 1
    if config.phase.section is not None and not 1 <= config.phase.section <= sections:
        raise OptionError(f"Expected --block between 1 and {sections}, got {config.phase.section} instead.")
    if config.verify and not config.online:  # an online run reads no stored activations
        require_intact(store)
    for name in students:  # refuse an unknown student, or one the recipe cannot cut, before any training
        build = recipe.student_builder(name)
        try:
            cut_sections(build(), recipe)
        except RecipeError as exc:
            raise RecipeError(f"Student {name!r} does not fit recipe {recipe.name!r}: {exc}") from None


def _online_teacher(recipe: Recipe, store: Store, config: RunConfig) -> OnlineTeacherDataset:
    """The online baseline's teacher, loaded once, and a wrong teacher refused before any training."""
    device = resolve_device(config.device)
    if device.type == "cuda" and config.loader_workers:
        raise OptionError("--online-teacher runs the teacher on the GPU in the training process: "
                          "use --loader-workers 0.")
    if config.fresh_views and config.loader_workers:
        raise OptionError("--fresh-views draws each epoch's views in the training process: use --loader-workers 0.")
    return OnlineTeacherDataset(recipe, store, config.online_teacher, wanted_fields(store, config), device,
                                precision=config.precision, fresh_views=config.fresh_views)


def _same_store(state: dict, store: Store, last: Path) -> None:
    if state["store"]["identity"] != store.manifest.identity:
        raise CheckpointError(f"Cannot resume {str(last)!r}: it was trained from another store.")


def _resumed_config(config: RunConfig, state: dict | None, last: Path, log: Callable[[str], None],
                    student: str) -> RunConfig:
    """A resumed run continues its own data stream (a checkpoint from before the offset existed had none)."""
    if state is None:
        return config
    if config.init and "data_epoch_offset" not in state["config"]:
        log(f"warning: {str(last)!r} was started before litcache recorded data_epoch_offset: it replays the "
            "--init run's first epochs of data (row orders, fresh views) and resumes on that stream. "
            "Delete its folder to fine-tune on the continued stream.")
    config = replace(config, data_epoch_offset=upgrade_record(state["config"])["data_epoch_offset"])
    log(f"{student}: all {config.epochs} epochs already trained" if state["epoch"] >= config.epochs else
        f"{student}: resuming at epoch {state['epoch'] + 1} of {config.epochs}")
    return config


@dataclass
class _RunData:
    """Where a run's batches come from: cached, in-memory and online runs visit the same rows in the
    same order, through the same sampler."""

    dataset: Dataset
    sampler: ChunkShuffleSampler
    loader: DataLoader

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):  # fresh views: a new augmentation of every sample each epoch
            self.dataset.set_epoch(epoch)

    def boundary0_loader(self) -> DataLoader:
        """This epoch's rows again, for a BatchNorm pass along the student's path, which reads boundary 0
        alone: from the store, only that array (a LIT run's dataset reads every boundary); an online or
        in-memory run's own batches cost no store reads."""
        if not isinstance(self.dataset, StoreDataset) or self.dataset.fields == ["boundaries/0"]:
            return self.loader
        only = StoreDataset(self.dataset.store, ["boundaries/0"], cache_chunks=self.dataset.cache_chunks)
        return make_loader(only, self.sampler, num_workers=self.loader.num_workers)


def _run_data(store: Store, config: RunConfig, wanted: list[str], online: OnlineTeacherDataset | None,
              log: Callable[[str], None], student: str) -> _RunData:
    if online is not None:
        dataset = online
    else:
        dataset = StoreDataset(store, wanted, cache_chunks=2 * config.buffer_chunks + 2)
        if config.in_memory:
            t = time.perf_counter()
            dataset = MemoryDataset.from_store(dataset)
            log(f"{student}: read {len(dataset)} rows of {', '.join(wanted)} into memory in "
                f"{time.perf_counter() - t:.1f} s (not counted in the epochs' seconds)")
    sampler = ChunkShuffleSampler.for_store(store, config.optim.batch_size, buffer_chunks=config.buffer_chunks,
                                            num_workers=config.loader_workers, seed=config.seed, views=config.views)
    pin = resolve_device(config.device).type == "cuda" and online is None  # online batches are on the device already
    return _RunData(dataset, sampler, make_loader(dataset, sampler, num_workers=config.loader_workers, pin_memory=pin))


def _eval_set(recipe: Recipe, config: RunConfig) -> Dataset | None:
    """The test split scored after every epoch (a language model's perplexity): not for generators,
    and only for a whole student."""
    if config.evaluate and config.phase.section is None and recipe.task != "generation" and "test" in recipe.splits:
        return recipe.load_split("test")
    return None


def _warn_on_view_reuse(config: RunConfig, store: Store, log: Callable[[str], None]) -> None:
    views = config.views or store.manifest.layout.views
    if not config.fresh_views and config.epochs > VIEW_REUSE_WARNING * views:
        log(f"warning: {config.epochs} epochs over {views} stored views: every view is seen about "
            f"{config.epochs / views:.0f} times, where the original LIT code draws a fresh crop every epoch. Fixed "
            "views cost accuracy on long schedules (see benchmarks/README.md, fidelity); extract more --views.")


def _store_record(store: Store) -> dict:
    return {"path": str(store.path), "identity": store.manifest.identity.to_dict()}  # a dict: weights_only loads


def check_student_fits(sectioned: SectionedModel, store: Store, student: str) -> None:
    """Refuse a student whose sections do not map the store's boundaries onto each other."""
    arrays = store.manifest.arrays
    shapes = [arrays[name].row_shape for name in store.boundary_names]
    if len(sectioned.sections) != len(shapes) - 1:  # first: the shape checks below index one boundary per section
        raise StoreMismatchError(
            f"Expected student {student!r} to have one section per stored boundary pair, i.e. the store's "
            f"{len(shapes) - 1} sections, but it has {len(sectioned.sections)}: the recipe's sections changed since "
            f"store {str(store.path)!r} was extracted. Extract a new store with this recipe, or train with the recipe "
            "the store was made with.")
    with torch.no_grad(), evaluating(sectioned):
        for i, section in enumerate(sectioned.sections, start=1):
            try:
                got = tuple(section(torch.zeros(1, *shapes[i - 1])).shape[1:])
            except RuntimeError as exc:
                raise StoreMismatchError(f"Student {student!r} section {i} cannot take the store's boundary {i - 1} "
                                         f"of shape {shapes[i - 1]}: {str(exc).splitlines()[0]}") from None
            if got != shapes[i]:
                raise StoreMismatchError(f"Student {student!r} section {i} maps {shapes[i - 1]} to {got}, "
                                         f"but the store's boundary {i} is {shapes[i]}.")


@torch.no_grad()
def recalibrate_batchnorm(sectioned: SectionedModel, loader, compute: Compute) -> int:
    """Re-estimate the sections' BatchNorm running statistics along the student's own path
    S_i(S_{i-1}(...S_1(T_0))) with train-mode forwards and no gradient (a cumulative average over
    the loader's batches). After the LIT phase, a section's statistics come from the teacher's
    boundaries, not from the previous student section's outputs that it sees when assembled.
    Returns the rows seen."""
    rows = 0
    with cumulative_batchnorm(sectioned.sections):
        sectioned.eval()
        sectioned.sections.train()
        for batch in loader:
            with compute.autocast():
                sectioned.run_sections(compute.input(batch["boundaries/0"]).float())
            rows += len(batch["boundaries/0"])
    return rows


def _recalibrate(sectioned: SectionedModel, data: _RunData, compute: Compute, eval_set: Dataset | None,
                 model: nn.Module, log: Callable[[str], None], student: str, task: str) -> None:
    """BatchNorm recalibration before fine-tuning, logged with the test accuracy (or perplexity) before and after."""
    before = test_score(model, eval_set, compute, task) if eval_set is not None else None
    t = time.perf_counter()
    rows = recalibrate_batchnorm(sectioned, data.boundary0_loader(), compute)
    line = (f"{student}: BatchNorm statistics recalibrated along the student's path over {rows} rows in "
            f"{time.perf_counter() - t:.1f} s")
    if eval_set is not None:
        after = test_score(model, eval_set, compute, task)
        (key, a), b = next(iter(before.items())), after[next(iter(before))]
        line += f"; {key.replace('_', ' ')} {a:.4f} -> {b:.4f}"
    log(line)


def teacher_section_states(store: Store) -> list[dict]:
    """The teacher's section weights kept in the store (stores extracted before they were kept have none)."""
    sections = len(store.boundary_names) - 1
    parts = store.manifest.teacher_modules or {}
    if any(f"section{i}" not in parts for i in range(1, sections + 1)):
        raise StoreMismatchError(f"Store {str(store.path)!r} holds no weights of the teacher's sections (stores keep "
                                 "them for recipes with student_init='teacher-blocks', and only since litcache kept "
                                 "them), so --student-init teacher-blocks has nothing to copy. Train with "
                                 "--student-init scratch, or set the recipe's student_init and extract "
                                 "the store again.")
    return [store.module_state(f"section{i}") for i in range(1, sections + 1)]


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
