"""`litcache sweep`: train every (student, seed, hyperparameters) combination from one store as dask
tasks, evaluate each trained student, and write results.csv, results.json and a Pareto plot.

Each combination is a *variant*, trained under OUT/<variant>/ exactly as `train_blocks` would
train it (same options, same seed, so the same weights). ``--mode lit`` runs one task per variant;
``--mode ir`` runs one task per (variant, section) and a last task that assembles the sections.
Tasks are plain functions of picklable arguments: the recipe travels by its source path and is
loaded again in the worker, because recipe modules exist only in the process that loaded them.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .errors import CheckpointError, LitcacheError, NotAClassifierError, OptionError, StoreMismatchError
from .evaluation import evaluate
from .extraction.distributed import check_parallel_options, dask_client, portable_path
from .recipe import Recipe, load_recipe
from .store.arrays import open_store
from .store.verify import require_intact
from .sweep_report import SweepResult, teacher_point, write_results
from .training.blocks import BlockTrainOptions, train_blocks
from .training.config import resolve_config, training_differences
from .training.outputs import claim_output
from .training.student import assemble, read_student

__all__ = ["HYPERPARAMETERS", "SWEEP_MODES", "Variant", "SweepResult", "plan_variants", "variant_name", "sweep"]

#: Options a sweep can vary, in the order they appear in variant names and result columns.
HYPERPARAMETERS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "alpha", "tau", "beta",
                   "milestones", "schedule", "warmup", "nesterov", "loss_scale")
SWEEP_MODES = ("lit", "ir")
RESULT_FILE = "result.json"  # per variant, written last by its task: what a rerun reads back
COLUMNS = ("variant", "student", "seed", "mode", *HYPERPARAMETERS, "params", "macs", "depth", "accuracy",
           "train_seconds", "status", "pareto_params", "pareto_macs", "checkpoint", "error")


def _quiet(_msg: str) -> None:
    pass


@dataclass(frozen=True)
class Variant:
    """One combination of the sweep; ``hyperparameters`` holds the swept values only."""

    name: str
    student: str
    seed: int
    mode: str
    hyperparameters: dict = field(default_factory=dict)
    #: --precision of every variant (None: the recipe's); not swept.
    precision: str | None = None

    def options(self, device: str = "auto", section: int | None = None) -> BlockTrainOptions:
        # The store is verified once by the sweep, not once per task; the sweep evaluates each
        # final student itself, so no per-epoch test accuracy.
        return BlockTrainOptions(mode=self.mode, section=section, seed=self.seed, device=device, verify=False,
                                 evaluate=False, precision=self.precision, **self.hyperparameters)

    def checkpoint(self, out: Path) -> Path:
        """The variant's final checkpoint (assembled in ir mode): where train_blocks puts it."""
        return out / self.name / self.student / "student.pt"

    def section_dir(self, out: Path, section: int) -> Path:
        """Where an ir variant trains ``section`` alone (named "block" as in every earlier sweep's output)."""
        return out / self.name / f"block{section}"


def _value_text(value) -> str:
    if isinstance(value, (tuple, list)):  # milestones: 100,150 -> 100-150
        return "-".join(map(str, value)) or "none"
    return repr(float(value)) if isinstance(value, float) else str(value)


def variant_name(student: str, seed: int, mode: str, hyperparameters: Mapping) -> str:
    """A stable, filesystem-safe name, e.g. ``resnet8_seed0_lr0.05_batch-size16`` (``_ir`` after the
    student in ir mode). Floats use their shortest exact form, so 0.1 is always ``0.1``."""
    parts = [re.sub(r"[^A-Za-z0-9_.+-]", "-", student), *(["ir"] if mode == "ir" else []), f"seed{seed}"]
    parts += [f"{key.replace('_', '-')}{_value_text(value)}" for key, value in hyperparameters.items()]
    return "_".join(parts)


def plan_variants(students: Sequence[str], seeds: Sequence[int], grid: Mapping[str, Sequence],
                  mode: str) -> list[Variant]:
    """Every combination of students x hyperparameter values x seeds, duplicates dropped."""
    unknown = sorted(set(grid) - set(HYPERPARAMETERS))
    if unknown:
        raise OptionError(f"Expected hyperparameters among {', '.join(HYPERPARAMETERS)}, got "
                          f"{', '.join(unknown)} instead.")
    if mode not in SWEEP_MODES:
        raise OptionError(f"Expected --mode in {SWEEP_MODES}, got {mode!r} instead.")
    if mode == "ir" and grid.get("beta"):
        raise OptionError("--beta weights the KD term, which --mode ir does not have (it trains with beta = 0).")
    keys = [k for k in HYPERPARAMETERS if grid.get(k)]
    values = [list(dict.fromkeys(grid[k])) for k in keys]
    variants, names = [], {}
    for student in dict.fromkeys(students):
        for combo in itertools.product(*values):
            for seed in dict.fromkeys(seeds):
                hyper = dict(zip(keys, combo))
                v = Variant(variant_name(student, seed, mode, hyper), student, seed, mode, hyper)
                if v.name in names:  # only possible when two student names differ in unsafe characters
                    raise OptionError(f"Students {names[v.name]!r} and {student!r} give the same variant "
                                      f"name {v.name!r}.")
                names[v.name] = student
                variants.append(v)
    return variants


# ---------------------------------------------------------------------------------------------
# Tasks. Module-level functions of picklable arguments, run in a dask worker or in this process.


def _prepare(recipe_source: str) -> Recipe:
    # One torch thread in every task, in a worker (one core each) and in this process alike: CPU
    # kernels round differently with other thread counts and SGD amplifies it (one MNIST epoch:
    # weights apart by up to 0.75), so results must not depend on --workers or --scheduler.
    torch.set_num_threads(1)
    return load_recipe(recipe_source)


def _train(recipe: Recipe, store: str, variant: Variant, out: Path, device: str, section: int | None = None) -> str:
    # resume=True: a variant killed mid-training continues from its last.pt (same weights as straight).
    [result] = train_blocks(recipe, store, [variant.student], out, variant.options(device, section), resume=True,
                            log=_quiet)
    return result["checkpoint"]


def _measure(recipe: Recipe, variant: Variant, checkpoint: str, parts: Sequence[str]) -> dict:
    """Evaluate the final student; train time is the seconds of its training epochs (summed over
    sections in ir mode), read from the checkpoints so a rerun can recover it."""
    report = evaluate(recipe, checkpoint, None, precision=variant.precision)["student"]
    seconds = sum(h.get("seconds", 0.0) for p in parts for h in read_student(p)["history"])
    record = {"variant": variant.name, "checkpoint": checkpoint, "params": report["params"],
              "macs": report["macs_per_sample"], "depth": report["depth"], "accuracy": report["accuracy"],
              "train_seconds": round(seconds, 3)}
    (Path(checkpoint).parents[1] / RESULT_FILE).write_text(json.dumps(record, indent=2))
    return record


def _lit_task(recipe_source: str, store: str, variant: Variant, out: str, device: str) -> dict:
    recipe = _prepare(recipe_source)
    checkpoint = _train(recipe, store, variant, Path(out) / variant.name, device)
    return _measure(recipe, variant, checkpoint, [checkpoint])


def _section_task(recipe_source: str, store: str, variant: Variant, out: str, device: str, section: int) -> str:
    recipe = _prepare(recipe_source)
    return _train(recipe, store, variant, variant.section_dir(Path(out), section), device, section)


def _assemble_task(recipe_source: str, variant: Variant, out: str, *parts: str) -> dict:
    recipe = _prepare(recipe_source)
    final = variant.checkpoint(Path(out))
    assemble(parts, final, recipe)
    return _measure(recipe, variant, str(final), parts)


# ---------------------------------------------------------------------------------------------
# Running the tasks.


def _error_text(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, LitcacheError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line per failed variant


@dataclass
class _Job:
    variant: Variant
    #: ir mode: section -> its checkpoint from an earlier run, or None to train it.
    parts: dict[int, str | None] = field(default_factory=dict)


def _run_in_process(jobs: list[_Job], source: str, store: str, out: str, device: str, on_done: Callable) -> None:
    threads = torch.get_num_threads()
    try:
        for job in jobs:
            v = job.variant
            try:
                if v.mode == "lit":
                    outcome = _lit_task(source, store, v, out, device)
                else:
                    parts = [p or _section_task(source, store, v, out, device, s) for s, p in job.parts.items()]
                    outcome = _assemble_task(source, v, out, *parts)
            except Exception as exc:  # one failed variant must not lose the others
                outcome = exc
            on_done(v, outcome)
    finally:
        torch.set_num_threads(threads)  # the tasks set one thread; give the caller its own back


def _run_on_dask(client, jobs: list[_Job], source: str, store: str, out: str, device: str, on_done: Callable) -> None:
    from distributed import as_completed

    futures = {}
    for job in jobs:
        v = job.variant
        if v.mode == "lit":
            future = client.submit(_lit_task, source, store, v, out, device, pure=False)
        else:
            parts = [p or client.submit(_section_task, source, store, v, out, device, s, pure=False)
                     for s, p in job.parts.items()]
            future = client.submit(_assemble_task, source, v, out, *parts, pure=False)
        futures[future] = v
    for future in as_completed(futures):
        try:
            outcome = future.result()
        except Exception as exc:  # a failed section fails its assembly with the section's own error
            outcome = exc
        on_done(futures[future], outcome)


# ---------------------------------------------------------------------------------------------
# The sweep.


def _check_same_training(path: Path, store_identity: Mapping, config: dict, variant_dir: Path) -> None:
    """Refuse a finished checkpoint (a variant's final student, or a section of an ir variant) that
    was trained from another store or with any other setting than ``config`` (this sweep's
    ``resolve_config`` of the variant): same name, other training must never pass for its result."""
    saved = read_student(path)
    # A section trained alone records its number ("block"), its directory's; "auto" precision resolves where
    # the task ran (which records what it chose), so any choice of it fits.
    ignore = ["block", *(["precision"] if config["precision"] == "auto" else [])]
    diff = training_differences(saved["config"], config, ignore)
    if saved["store"].get("identity") != store_identity:
        diff.insert(0, "another store")
    if diff:
        raise CheckpointError(f"{str(path)!r} holds a student trained from another store or with other options "
                              f"({'; '.join(diff)}). Remove {str(variant_dir)!r} or choose another --out.")


def _read_back(recipe: Recipe, variant: Variant, out: Path, store_identity: Mapping, config: dict,
               sections: int) -> dict | None:
    """The results of a variant trained by an earlier run (None if it has no final checkpoint)."""
    final = variant.checkpoint(out)
    if not final.is_file():
        return None
    _check_same_training(final, store_identity, config, out / variant.name)
    try:
        return json.loads((out / variant.name / RESULT_FILE).read_text())
    except (OSError, ValueError):  # killed between the checkpoint and its record: measure it again
        parts = [str(final)] if variant.mode == "lit" else \
            [str(variant.section_dir(out, s) / variant.student / "student.pt") for s in range(1, sections + 1)]
        return _measure(recipe, variant, str(final), [p for p in parts if Path(p).is_file()])


def sweep(recipe: Recipe, store: str | Path, students: Sequence[str], out: str | Path, *, seeds: Sequence[int] = (0,),
          grid: Mapping[str, Sequence] | None = None, mode: str = "lit", workers: int | None = None,
          scheduler: str | None = None, teacher: str | Path | None = None, device: str = "auto",
          precision: str | None = None, log: Callable[[str], None] = print) -> SweepResult:
    """Train every variant (student x hyperparameter values x seed) from ``store``, evaluate each, and
    write OUT/results.csv, OUT/results.json and OUT/pareto.png. A failed variant is a row with
    status "failed" and its error, never an exception; variants trained by an earlier run are skipped."""
    check_parallel_options(workers, scheduler)
    if not recipe.source:
        raise OptionError(f"Recipe {recipe.name!r} has no source path; sweep tasks load the recipe by it. "
                          "Load it with litcache.load_recipe.")
    if recipe.task != "classification":
        raise NotAClassifierError(f"Recipe {recipe.name!r} is a {recipe.task} task; sweep ranks students by test "
                          "accuracy, which needs a classification recipe.")
    recipe.check_split_name("test")
    variants = [replace(v, precision=precision) for v in plan_variants(students, seeds, grid or {}, mode)]
    for name in dict.fromkeys(students):
        recipe.student_builder(name)  # an unknown student fails the sweep now, not in every task
    opened = open_store(store)
    if opened.manifest.identity.recipe != recipe.name:
        raise StoreMismatchError(f"Store {str(store)!r} was extracted for recipe {opened.manifest.identity.recipe!r}, "
                                 f"not {recipe.name!r}.")
    # refuses bad values up front
    configs = {v.name: resolve_config(recipe, v.options(device)).record() for v in variants}
    teacher_record = teacher_point(recipe, teacher)  # a bad --teacher fails before any training
    out = Path(out)
    with claim_output(out):  # one sweep at a time writes OUT
        sections = len(opened.boundary_names) - 1

        rows = {v.name: {"variant": v.name, "student": v.student, "seed": v.seed, "mode": v.mode,
                         **{k: configs[v.name][k] for k in HYPERPARAMETERS}, "params": None, "macs": None,
                         "depth": None, "accuracy": None, "train_seconds": None, "status": None,
                         "pareto_params": False, "pareto_macs": False, "checkpoint": None, "error": None}
                for v in variants}
        jobs = []
        for v in variants:
            done = {s: v.section_dir(out, s) / v.student / "student.pt" for s in range(1, sections + 1)}
            try:
                record = _read_back(recipe, v, out, opened.manifest.identity, configs[v.name], sections)
                if record is None and v.mode == "ir":  # sections finished by an earlier run are reused: check them too
                    for path in (p for p in done.values() if p.is_file()):
                        _check_same_training(path, opened.manifest.identity, configs[v.name], out / v.name)
            except LitcacheError as exc:
                rows[v.name].update(status="failed", error=_error_text(exc))
                log(f"{v.name}: failed: {rows[v.name]['error']}")
                continue
            if record is not None:
                rows[v.name].update(record, status="skipped")
                log(f"{v.name}: skipped, already trained ({record['checkpoint']})")
            elif v.mode == "lit":
                jobs.append(_Job(v))
            else:
                jobs.append(_Job(v, {s: str(p) if p.is_file() else None for s, p in done.items()}))

        if jobs:
            require_intact(opened)  # once here, instead of once per task
            in_process = workers == 1 or (workers is None and not scheduler and (os.cpu_count() or 1) == 1)
            where = ("in this process" if in_process else f"on the dask cluster at {scheduler}" if scheduler
                     else f"on a local dask cluster of {workers or os.cpu_count()} workers")
            log(f"sweep {recipe.name}: {len(variants)} variants, {len(jobs)} to train {where}")
            finished = [0]

            def on_done(variant: Variant, outcome) -> None:
                finished[0] += 1
                row = rows[variant.name]
                if isinstance(outcome, BaseException):
                    row.update(status="failed", error=_error_text(outcome))
                    log(f"[{finished[0]}/{len(jobs)}] {variant.name}: failed: {row['error']}")
                else:
                    row.update(outcome, status="trained")
                    log(f"[{finished[0]}/{len(jobs)}] {variant.name}: test accuracy {row['accuracy']:.4f}, "
                        f"{row['train_seconds']:.1f} s of training")

            args = (jobs, portable_path(recipe.source), portable_path(str(store)), str(out.resolve()), device, on_done)
            if in_process:
                _run_in_process(*args)
            else:
                with dask_client(workers, scheduler) as client:
                    _run_on_dask(client, *args)

        return write_results(recipe, store, list(rows.values()), teacher_record, out, COLUMNS)
