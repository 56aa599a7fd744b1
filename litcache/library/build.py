"""`litcache library`: a library of candidate sections from one store, each made once, scored and costed.

Every candidate (see ``candidates``) is one task: it trains (IR-only, ``--mode ir --block I``, resumable),
or is copied or fitted, then scored on a held-out store and costed. Tasks run in this process or as
dask tasks, as sweep's do. A candidate lives in ``LIB/candidates/<name>-<key>/``, the key hashing what
its result depends on (the store's identity, its training config or fitted rows), and is made again
only when that key changes; a killed run resumes its half-trained candidates from their last epoch.
What it writes: ``library.json`` (the recipe, the stores, the teacher's reference figures and costs,
one record per candidate) and ``library.csv`` (the candidates' table).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..errors import LitcacheError, OptionError, StoreMismatchError
from ..extraction.distributed import check_parallel_options, dask_client, portable_path
from ..extraction.teacher import load_teacher
from ..recipe import Recipe, load_recipe
from ..runtime.files import write_atomic
from ..sections import SectionedModel, cut_sections
from ..store.arrays import Store, open_store
from ..store.verify import require_intact
from ..training.blocks import BlockTrainOptions, teacher_section_states, train_blocks
from ..training.config import RUN_ONLY_KEYS, resolve_config
from ..training.metrics import model_stats
from ..training.outputs import claim_output
from ..training.student import adopt_teacher_parts, build_student, read_student, save_student
from .candidates import Candidate, candidate_key, candidate_section, fit_pointwise_map, parse_depths, plan_candidates
from .scores import HeldOutRows, Scorer, latency_ms

__all__ = ["LibraryOptions", "LIBRARY_FILE", "LIBRARY_FORMAT", "build_library", "read_library", "teacher_parts"]

LIBRARY_FILE, TABLE_FILE, RECORD_FILE = "library.json", "library.csv", "record.json"
LIBRARY_FORMAT = 1
COLUMNS = ("candidate", "section", "depth", "kind", "params", "macs", "latency_ms", "boundary_mse",
           "boundary_normalised", "swap_kl", "swap_kl_delta", "swap_accuracy", "swap_accuracy_delta", "swap_perplexity",
           "swap_perplexity_delta", "swap_output_mse", "swap_output_mse_delta", "train_seconds", "checkpoint")


@dataclass(frozen=True)
class LibraryOptions:
    #: --depths: "1,2,3" (every section) or "2:1,3" (section 2); empty: the recipe's students' depths,
    #: the teacher's and the training-free 0.
    depths: tuple[str, ...] = ()
    #: The trained candidates' IR training: BlockTrainOptions flags (epochs, lr, schedule, ...; absent: the
    #: recipe's LIT phase).
    training: Mapping = field(default_factory=dict)
    student_init: str | None = None
    seed: int = 0
    #: Held-out rows each candidate is scored on (0: all).
    score_rows: int = 512
    #: Training rows a linear map is fitted on (0: all).
    fit_rows: int = 4096
    #: Rows of the batch whose CPU latency is measured.
    latency_rows: int = 32
    device: str = "auto"
    workers: int | None = None
    scheduler: str | None = None
    #: The teacher's checkpoint, for its sections where the store keeps none (None: the store's).
    teacher: str | None = None

    def train_options(self, section: int) -> BlockTrainOptions:
        flags = {k: v for k, v in self.training.items() if v is not None}
        return BlockTrainOptions(mode="ir", section=section, student_init=self.student_init, seed=self.seed,
                                 device=self.device, verify=False, evaluate=False, **flags)


def read_library(path: str | Path) -> dict:
    """A library's ``library.json``, refused with a clear error if it is not one this release reads."""
    file = Path(path) / LIBRARY_FILE
    try:
        library = json.loads(file.read_text())
    except FileNotFoundError:
        raise OptionError(f"Expected a block library at {str(path)!r} (its {LIBRARY_FILE}), found none. Make one with "
                          "`litcache library RECIPE --store S --heldout H --out LIB`.") from None
    except ValueError as exc:
        raise OptionError(f"{str(file)!r} is not a readable library table ({exc}).") from None
    if library.get("format") != LIBRARY_FORMAT:
        raise OptionError(f"Library {str(path)!r} has format {library.get('format')!r}; this litcache reads format "
                          f"{LIBRARY_FORMAT}.")
    return library


def teacher_parts(recipe: Recipe, store: Store, teacher: str | None) -> tuple[nn.Module, list[nn.Module], nn.Module]:
    """The teacher's stem, sections and head, with the store's weights: its stored sections where it keeps
    them, else those of ``teacher`` (default: the checkpoint the store was extracted from), whose weights
    must be the store's teacher's."""
    model = recipe.build_teacher()
    sectioned = cut_sections(model, recipe)
    try:
        states = teacher_section_states(store)
    except StoreMismatchError:
        loaded, weights, path = load_teacher(recipe, teacher or store.manifest.teacher.checkpoint)
        if weights != store.manifest.identity.teacher_hash:
            raise StoreMismatchError(f"Teacher {path!r} has weights hash {weights}, but store {str(store.path)!r} was "
                                     f"extracted from weights hash {store.manifest.identity.teacher_hash}. Give the "
                                     "store's teacher with --teacher.") from None
        states = [s.state_dict() for s in cut_sections(loaded, recipe).sections]
    for section, state in zip(sectioned.sections, states):
        section.load_state_dict(state)
    adopt_teacher_parts(sectioned, "teacher", store.module_state("stem"), store.module_state("head"))
    model.eval()
    return sectioned.stem, list(sectioned.sections), sectioned.head


# ---------------------------------------------------------------------------------------------
# The task of one candidate: a module-level function of picklable arguments (run in a dask worker
# or in this process; the recipe travels by its source path).


def _make(recipe: Recipe, store: Store, candidate: Candidate, directory: Path, options: LibraryOptions) -> str:
    """The candidate's checkpoint: its carrier student with the candidate in its section."""
    sections = len(recipe.sections)
    carrier = candidate.carrier(sections)
    final = directory / carrier / "student.pt"
    if final.is_file():  # made before: the folder's key says with this store and these settings
        return str(final)
    if candidate.kind == "trained":
        [result] = train_blocks(recipe, store.path, [carrier], directory, options.train_options(candidate.section),
                                resume=True, log=lambda _: None)
        return result["checkpoint"]
    torch.manual_seed(options.seed)  # the carrier's unused sections too: the same checkpoint in every process
    model, sectioned = build_student(recipe, carrier, store.module_state("stem"), store.module_state("head"))
    section = sectioned.sections[candidate.section - 1]
    report: dict = {}
    if candidate.kind == "teacher":
        section.load_state_dict(teacher_parts(recipe, store, options.teacher)[1][candidate.section - 1].state_dict())
    elif candidate.kind == "linear-map":
        report = fit_pointwise_map(section, store, candidate.section, options.fit_rows)
    with claim_output(directory / carrier):
        save_student(final, model, recipe=recipe, student=carrier, mode=f"library-{candidate.kind}",
                     sections_trained=[candidate.section],
                     store={"path": str(store.path), "identity": store.manifest.identity.to_dict()},
                     config={"library_candidate": candidate.name, "kind": candidate.kind, **report}, history=[],
                     epoch=0)
    return str(final)


def candidate_task(recipe_source: str, store_path: str, heldout_path: str, candidate: Candidate, directory: str,
                   options: LibraryOptions) -> dict:
    """Make (train, copy or fit) one candidate, score it on the held-out store, cost it; write its record."""
    torch.set_num_threads(1)  # as sweep's tasks: results must not depend on --workers
    recipe = load_recipe(recipe_source)
    store, heldout = open_store(store_path), open_store(heldout_path)
    directory = Path(directory)
    checkpoint = _make(recipe, store, candidate, directory, options)
    saved = read_student(checkpoint)
    module = candidate_section(recipe, saved, candidate.section)
    _, sections, head = teacher_parts(recipe, store, options.teacher)
    rows = HeldOutRows(heldout, options.score_rows)
    stats = model_stats(module, rows.sample(candidate.section - 1))
    record = {"candidate": candidate.name, "section": candidate.section, "depth": candidate.depth,
              "kind": candidate.kind, "params": stats["params"], "macs": stats["macs_per_sample"],
              **Scorer(rows, sections, head, recipe.task).score(candidate.section, module),
              "train_seconds": round(sum(h.get("seconds", 0.0) for h in saved["history"]), 3),
              "checkpoint": checkpoint, "scored_on": _scoring(heldout, options)}
    write_json(directory / RECORD_FILE, record)
    return record


def _scoring(heldout: Store, options: LibraryOptions) -> dict:
    """What a candidate's scores depend on besides the candidate: a kept record with other ones is scored again."""
    return {"heldout": heldout.manifest.identity.to_dict(), "score_rows": options.score_rows}


# ---------------------------------------------------------------------------------------------
# The library.


def _check_stores(recipe: Recipe, store: Store, heldout: Store) -> None:
    for name, s in (("--store", store), ("--heldout", heldout)):
        if s.manifest.identity.recipe != recipe.name:
            raise StoreMismatchError(f"{name} {str(s.path)!r} was extracted for recipe {s.manifest.identity.recipe!r}, "
                                     f"not {recipe.name!r}.")
    a, b = store.manifest.identity, heldout.manifest.identity
    if a.teacher_hash != b.teacher_hash:
        raise StoreMismatchError(f"--heldout {str(heldout.path)!r} was extracted from another teacher (weights hash "
                                 f"{b.teacher_hash}) than --store {str(store.path)!r} ({a.teacher_hash}).")
    if (a.split, a.data_fingerprint) == (b.split, b.data_fingerprint):
        raise OptionError(f"--heldout {str(heldout.path)!r} holds the same rows as --store (split {a.split!r}, "
                          "the same data): scores on rows the candidates trained on would flatter them. Extract "
                          "held-out rows of a validation split, e.g. `litcache extract RECIPE --split val --out H` "
                          "(cifar10_resnet.py's 'val': training images outside LITCACHE_CIFAR10_TRAIN_SUBSET; "
                          "hf_causal_lm.py's: training rows outside LITCACHE_TEXT_TRAIN_ROWS).")


def _check_same_library(out: Path, recipe: Recipe, store: Store) -> None:
    if not (out / LIBRARY_FILE).is_file():
        return
    old = read_library(out)
    if old["recipe"]["name"] != recipe.name or old["store"]["identity"] != store.manifest.identity.to_dict():
        raise StoreMismatchError(f"Library {str(out)!r} was made from another recipe or store (recipe "
                                 f"{old['recipe']['name']!r}, store {old['store']['path']!r}). Choose another --out.")


def _teacher_reference(recipe: Recipe, store: Store, heldout: Store, options: LibraryOptions) -> dict:
    """The teacher's own figures on the held-out rows, its sections' costs, and the cost every mix shares
    (stem and head: the whole teacher's cost, on a row of the held-out split's data, less its sections').
    Latencies are filled in by ``_measure_latencies``."""
    stem, sections, head = teacher_parts(recipe, store, options.teacher)
    rows = HeldOutRows(heldout, options.score_rows)
    costs = [_stats(s, rows.sample(i)) for i, s in enumerate(sections)]
    whole = _stats(SectionedModel(stem, sections, head), _data_rows(recipe, heldout, 1))
    shared = {k: whole[k] - sum(c[k] for c in costs) for k in ("params", "macs")}
    return {"figures": Scorer(rows, sections, head, recipe.task).reference, "sections": costs, "whole": whole,
            "shared": shared}


def _stats(module: nn.Module, sample: torch.Tensor) -> dict:
    stats = model_stats(module, sample[:1])
    return {"params": stats["params"], "macs": stats["macs_per_sample"]}


def _data_rows(recipe: Recipe, heldout: Store, rows: int) -> torch.Tensor:
    """The first ``rows`` inputs of the held-out store's split, as the recipe loads them (the stem's input)."""
    dataset = recipe.load_split(heldout.manifest.identity.split)
    return torch.stack([torch.as_tensor(dataset[i][0]) for i in range(min(rows, len(dataset)))])


def _measure_latencies(recipe: Recipe, heldout: Store, records: dict, options: LibraryOptions, log) -> None:
    """Every candidate's latency and the teacher's, measured here one after another (a task's measurement would
    share the machine with other tasks' training), on a batch of held-out rows, one thread."""
    rows = HeldOutRows(heldout, options.latency_rows)
    for record in records.values():
        module = candidate_section(recipe, read_student(record["checkpoint"]), record["section"])
        record["latency_ms"] = latency_ms(module, rows.sample(record["section"] - 1, options.latency_rows))
    log(f"latency of {len(records)} candidates measured ({options.latency_rows} rows, one thread)")


def build_library(recipe: Recipe, store_path: str | Path, heldout_path: str | Path, out: str | Path,
                  options: LibraryOptions = LibraryOptions(), log: Callable[[str], None] = print) -> dict:
    """Make every candidate of the library at ``out`` (those made before with the same key are kept), and
    write library.json and library.csv; returns the library."""
    check_parallel_options(options.workers, options.scheduler)
    if not recipe.source:
        raise OptionError(f"Recipe {recipe.name!r} has no source path; library tasks load the recipe by it.")
    store, heldout = open_store(store_path), open_store(heldout_path)
    _check_stores(recipe, store, heldout)
    out = Path(out)
    _check_same_library(out, recipe, store)
    sections = len(store.boundary_names) - 1
    if sections != len(recipe.sections):
        raise StoreMismatchError(f"Store {str(store.path)!r} has {sections} sections, recipe {recipe.name!r} "
                                 f"{len(recipe.sections)}: extract it again with this recipe.")
    candidates = plan_candidates(recipe, parse_depths(options.depths, sections))
    identity = store.manifest.identity.to_dict()
    keys = {}
    for c in candidates:
        config = None
        if c.kind == "trained":  # refuses bad training options before any work
            record = resolve_config(recipe, options.train_options(c.section)).record()
            config = {k: v for k, v in record.items() if k not in RUN_ONLY_KEYS and k != "precision"}
        keys[c.name] = candidate_key(c, identity, config, options.fit_rows)
    # The teacher's weights, the held-out split's data and its reference figures, before any candidate trains:
    # whatever is missing fails now, not after hours of training.
    teacher = _teacher_reference(recipe, store, heldout, options)
    with claim_output(out):
        records, jobs, failed = {}, [], {}
        for c in candidates:
            directory = out / "candidates" / f"{c.name}-{keys[c.name]}"
            try:
                done = json.loads((directory / RECORD_FILE).read_text())
            except (OSError, ValueError):
                done = None
            if done is not None and done.get("scored_on") == _scoring(heldout, options):
                records[c.name] = done
                log(f"{c.name}: kept ({c.kind}, made before with the same store and settings)")
            else:  # a candidate made before but scored on other rows is scored again, not trained again
                jobs.append((c, directory))
        if jobs:
            require_intact(store)
            require_intact(heldout)
            in_process = options.workers == 1 or (options.workers is None and not options.scheduler
                                                  and (os.cpu_count() or 1) == 1)
            workers = options.workers or os.cpu_count()
            where = ("in this process" if in_process else f"on the dask cluster at {options.scheduler}"
                     if options.scheduler else f"on a local dask cluster of {workers} workers")
            log(f"library {recipe.name}: {len(candidates)} candidates, {len(jobs)} to make {where}")
            args = (portable_path(recipe.source), portable_path(str(store.path)), portable_path(str(heldout.path)))
            for c, record in _run(jobs, args, options, in_process):
                if isinstance(record, BaseException):  # one failed candidate must not lose the others
                    text = str(record) if isinstance(record, LitcacheError) else f"{type(record).__name__}: {record}"
                    failed[c.name] = " ".join(text.split())
                    log(f"{c.name}: failed: {failed[c.name]}")
                    continue
                records[c.name] = record
                log(f"{c.name}: {c.kind}, boundary error {record['boundary_normalised']:.3%} of the target's energy, "
                    f"KL swapped in {record['swap_kl']:.4g}, {record['macs']:,} MACs")
        if failed:
            raise LitcacheError(f"{len(failed)} of {len(candidates)} library candidates failed "
                                f"({'; '.join(f'{n}: {e}' for n, e in failed.items())}). The others are kept: run the "
                                "same command again once the cause is fixed.")
        _measure_latencies(recipe, heldout, records, options, log)
        stem, teacher_sections, head = teacher_parts(recipe, store, options.teacher)
        rows = HeldOutRows(heldout, options.latency_rows)
        for i, (cost, section) in enumerate(zip(teacher["sections"], teacher_sections)):
            cost["latency_ms"] = latency_ms(section, rows.sample(i, options.latency_rows))
        teacher["whole"]["latency_ms"] = latency_ms(SectionedModel(stem, teacher_sections, head),
                                                    _data_rows(recipe, heldout, options.latency_rows))
        teacher["shared"]["latency_ms"] = max(teacher["whole"]["latency_ms"] -
                                              sum(c["latency_ms"] for c in teacher["sections"]), 0.0)
        library = {"format": LIBRARY_FORMAT,
                   "recipe": {"name": recipe.name, "source": portable_path(recipe.source), "hash": recipe.source_hash},
                   "store": {"path": portable_path(str(store.path)), "identity": identity},
                   "heldout": {"path": portable_path(str(heldout.path)),
                               "identity": heldout.manifest.identity.to_dict(),
                               "rows": HeldOutRows(heldout, options.score_rows).rows},
                   "task": recipe.task, "sections": sections,
                   "options": {**asdict(replace(options, workers=None, scheduler=None)),
                               "training": dict(options.training)},
                   "teacher": teacher,
                   # Checkpoints relative to the library, so that a library moved whole still finds them.
                   "candidates": [{**records[c.name], "checkpoint": os.path.relpath(records[c.name]["checkpoint"],
                                                                                    out.resolve())}
                                  for c in candidates]}
        write_json(out / LIBRARY_FILE, library)
        write_csv(out / TABLE_FILE, library["candidates"], COLUMNS)
    return library


def _run(jobs: Sequence[tuple[Candidate, Path]], args: tuple, options: LibraryOptions, in_process: bool):
    """(candidate, record or the exception it raised), in the order they finish."""
    if in_process:
        threads = torch.get_num_threads()
        try:
            for c, directory in jobs:
                try:
                    yield c, candidate_task(*args, c, str(directory.resolve()), options)
                except Exception as exc:
                    yield c, exc
        finally:
            torch.set_num_threads(threads)  # the task set one thread; give the caller its own back
        return
    from distributed import as_completed

    with dask_client(options.workers, options.scheduler) as client:
        futures = {client.submit(candidate_task, *args, c, str(directory.resolve()), options, pure=False): c
                   for c, directory in jobs}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as exc:
                yield futures[future], exc


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2).encode())


def write_csv(path: Path, records: list[dict], columns: Sequence[str]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows({k: r.get(k) for k in columns} for r in records)
    write_atomic(path, text.getvalue().encode())
