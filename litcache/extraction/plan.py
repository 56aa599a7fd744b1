"""What `litcache extract` decides before a single row is extracted: the options, the teacher and
its dataset split, the rows, the arrays' shapes and the store's identity."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import NonFiniteOutputError, OptionError
from ..recipe import Recipe
from ..runtime.devices import resolve_device
from ..runtime.precision import Compute, resolve_compute
from ..runtime.seeds import check_seed
from ..sections import check_sections, cut_sections
from ..store.arrays import ArraySpec
from ..store.encoding import AUTO_CODEC, CODECS, DTYPES, MANTISSA_BITS
from ..store.layout import RowLayout
from ..store.space import human_bytes
from .rows import ViewRows, data_fingerprint
from .teacher import load_teacher
from .teacher_outputs import teacher_fields

__all__ = ["ExtractOptions", "ExtractPlan", "plan_extraction", "identity_diff", "check_finite", "SHARD_TARGET_BYTES"]

#: Auto shard size: as many whole chunks as fit in this many raw bytes.
SHARD_TARGET_BYTES = 64 * 2**20
#: More shards than this is a mistake (64 TB at the automatic shard size), refused before it is planned.
MAX_SHARDS = 1_000_000


@dataclass(frozen=True)
class ExtractOptions:
    split: str = "train"
    views: int = 1
    limit: int | None = None
    batch_size: int = 256
    device: str = "auto"
    #: How the teacher computes (--precision; None: the recipe's default). Part of the store's
    #: identity, since a bf16 forward gives other activations than an fp32 one.
    precision: str | None = None
    dtype: str = "float16"
    codec: str = AUTO_CODEC  # or one of CODECS; auto: chosen by speed when the store is created
    keep_bits: int | None = None  # lossy: round activations to this many mantissa bits (None: exact)
    chunk_rows: int = 256
    shard_rows: int | None = None  # None: whole chunks up to SHARD_TARGET_BYTES
    seed: int = 0
    #: Keep only the k largest logits of every position and their indices (a language model's
    #: vocabulary-sized logits per token are too large to keep whole); None: all logits.
    logit_topk: int | None = None
    shuffle: bool = True  # rows visit samples in a seeded permutation (see ViewRows)
    loader_workers: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name in ("views", "batch_size", "chunk_rows"):
            if getattr(self, name) < 1:
                raise OptionError(f"Expected {_flag(name)} >= 1, got {getattr(self, name)} instead.")
        if self.limit is not None and self.limit < 1:
            raise OptionError(f"Expected --limit >= 1 (or no limit), got {self.limit} instead.")
        if self.shard_rows is not None and (self.shard_rows < 1 or self.shard_rows % self.chunk_rows):
            raise OptionError(
                f"Expected --shard-rows to be a positive multiple of --chunk-rows ({self.chunk_rows}), "
                f"got {self.shard_rows} instead."
            )
        if self.dtype not in DTYPES:
            raise OptionError(f"Expected --dtype in {sorted(DTYPES)}, got {self.dtype!r} instead.")
        if self.codec not in (*CODECS, AUTO_CODEC):
            raise OptionError(f"Expected --codec in {[*CODECS, AUTO_CODEC]}, got {self.codec!r} instead.")
        if self.keep_bits is not None and not 1 <= self.keep_bits < MANTISSA_BITS[self.dtype]:
            raise OptionError(f"Expected --keep-bits between 1 and {MANTISSA_BITS[self.dtype] - 1} for --dtype "
                              f"{self.dtype} (it has {MANTISSA_BITS[self.dtype]} mantissa bits), got {self.keep_bits} "
                              "instead. Leave it out to store the values exactly.")
        if self.logit_topk is not None and self.logit_topk < 1:
            raise OptionError(f"Expected --logit-topk >= 1 (or none: every logit), got {self.logit_topk} instead.")
        if self.loader_workers < 0:
            raise OptionError(f"Expected --loader-workers >= 0, got {self.loader_workers} instead.")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class ExtractPlan:
    """Everything decided before a single row is extracted."""

    recipe: Recipe
    options: ExtractOptions
    teacher: torch.nn.Module
    sectioned: torch.nn.Module
    checkpoint: str
    rows_dataset: ViewRows
    specs: list[ArraySpec]
    identity: dict
    shard_rows: int
    compute: Compute

    @property
    def rows(self) -> int:
        return len(self.rows_dataset)

    @property
    def bytes_per_row(self) -> int:
        return _bytes_per_row(self.specs)


def _bytes_per_row(specs: list[ArraySpec]) -> int:
    return sum(int(np.prod(s.row_shape, dtype=np.int64)) * s.storage_dtype.itemsize for s in specs)


def plan_extraction(recipe: Recipe, options: ExtractOptions,
                    teacher_checkpoint: str | Path | None = None) -> ExtractPlan:
    """Load teacher and data, check the sections, and work out shapes and identity."""
    recipe.check_split_name(options.split)
    teacher, teacher_hash, checkpoint = load_teacher(recipe, teacher_checkpoint)
    dataset = recipe.load_split(options.split)
    if len(dataset) == 0:
        raise OptionError(f"Split {options.split!r} of recipe {recipe.name!r} is empty; nothing to extract.")
    samples = min(len(dataset), options.limit) if options.limit else len(dataset)
    augment = recipe.augmentation_for(options.split)
    if augment is None and options.views > 1:
        raise OptionError(f"Split {options.split!r} of recipe {recipe.name!r} has no augmentation, so --views "
                          f"{options.views} would store {options.views} identical copies of every row. Use --views 1.")
    rows = ViewRows(dataset, RowLayout(samples, options.views, options.chunk_rows), options.seed, augment,
                    options.shuffle)

    sectioned = cut_sections(teacher, recipe)
    compute = resolve_compute(options.precision or recipe.precision, resolve_device(options.device), teacher)
    probe_rows = [rows[r] for r in range(min(8, len(rows)))]
    probe = torch.stack([row[0] for row in probe_rows])
    probe_labels = torch.as_tensor(np.stack([np.asarray(row[1]) for row in probe_rows])).to(torch.int64)
    with torch.inference_mode():
        check_finite("output", teacher(probe), 0, rows, "float32")  # before the section check blames the sections
    check_sections(teacher, sectioned, probe)
    with torch.inference_mode():
        outs, logits = sectioned.boundaries(probe[:1])
    if options.logit_topk is not None and recipe.task == "generation":
        raise OptionError(f"--logit-topk keeps the largest logits of a classifier or language model, but recipe "
                          f"{recipe.name!r} is a generation task whose output is an image; leave it out.")
    if options.logit_topk is not None and options.logit_topk > logits.shape[-1]:
        raise OptionError(f"Expected --logit-topk at most the teacher's {logits.shape[-1]} logits per position, "
                          f"got {options.logit_topk} instead.")
    fields = teacher_fields(list(outs), logits, probe_labels[:1], options.logit_topk)

    dtype = options.dtype
    specs = [ArraySpec(f"boundaries/{i}", tuple(fields[f"boundaries/{i}"].shape[1:]), dtype) for i in range(len(outs))]
    # Logits stay float32: they are small, and the KD loss divides them by a temperature.
    specs += [ArraySpec(name, tuple(fields[name].shape[1:]), "int32" if name == "topk_indices" else "float32")
              for name in ("logits", "topk_values", "topk_indices") if name in fields]
    if "lengths" in fields:  # rows of tokens: valid positions per row (outputs are zero past them)
        specs.append(ArraySpec("lengths", (), "int32"))
    specs += [
        ArraySpec("labels", tuple(probe_labels.shape[1:]), "int64"),
        ArraySpec("source_index", (), "int64"),
        ArraySpec("view", (), "int32"),
    ]
    if rows.num_params:
        specs.append(ArraySpec("view_params", (rows.num_params,), "float32"))

    bytes_per_row = _bytes_per_row(specs)
    if options.shard_rows is not None:
        shard_rows = options.shard_rows
    else:
        chunks_per_shard = max(1, SHARD_TARGET_BYTES // (bytes_per_row * options.chunk_rows))
        chunks_needed = -(-len(rows) // options.chunk_rows)
        shard_rows = options.chunk_rows * min(chunks_per_shard, chunks_needed)
    _check_sizes(len(rows), options.chunk_rows, shard_rows, len(specs), bytes_per_row)

    identity = {
        "recipe": recipe.name,
        "recipe_hash": recipe.source_hash,
        "teacher_hash": teacher_hash,
        "data_fingerprint": data_fingerprint(dataset, samples),
        "split": options.split,
        "samples": samples,
        "views": options.views,
        "seed": options.seed,
        "shuffle": options.shuffle,
        "transforms": augment.describe() if augment is not None else None,
        "dtype": dtype,
        "codec": options.codec,
        **({"keep_bits": options.keep_bits} if options.keep_bits is not None else {}),  # absent: exact values
        **({"precision": compute.precision} if compute.precision != "fp32" else {}),  # absent: computed in fp32
        **({"logit_topk": options.logit_topk} if options.logit_topk is not None else {}),  # absent: every logit
        "chunk_rows": options.chunk_rows,
        "shard_rows": shard_rows,
    }
    return ExtractPlan(recipe, options, teacher, sectioned, checkpoint, rows, specs, identity, shard_rows, compute)


def _check_sizes(rows: int, chunk_rows: int, shard_rows: int, arrays: int, bytes_per_row: int) -> None:
    """Refuse a store too large to plan, or chunks and shards too large to hold in memory, before anything
    is allocated for them (an absurd --views or --shard-rows once grew memory until the kernel killed the
    process)."""
    shards = -(-rows // shard_rows)
    if shards > MAX_SHARDS:
        raise OptionError(f"Expected a store of at most {MAX_SHARDS:,} shards, but {rows:,} rows of "
                          f"{human_bytes(bytes_per_row)} (about {human_bytes(rows * bytes_per_row)} before "
                          f"compression) make {shards:,} shards of {shard_rows:,} rows. Lower --views or --limit, or "
                          "raise --shard-rows.")
    # A shard is assembled in memory (up to the store's rows), each chunk is encoded whole, and a shard's
    # index holds 16 bytes for every chunk the shard can hold, in every array.
    needed = (max(min(shard_rows, rows), chunk_rows) * bytes_per_row
              + arrays * 16 * (shard_rows // chunk_rows))
    memory = _memory_bytes()
    if memory is not None and needed > memory // 2:
        raise OptionError(f"Expected a chunk, a shard and its index to fit in memory, but --chunk-rows {chunk_rows:,} "
                          f"and --shard-rows {shard_rows:,} of {human_bytes(bytes_per_row)} rows need about "
                          f"{human_bytes(needed)}, and this machine has {human_bytes(memory)}. Lower --shard-rows or "
                          "--chunk-rows.")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this platform
        return None


def identity_diff(old: Mapping, new: Mapping, recipe: Recipe | None = None) -> list[str]:
    """"key: store has X, now Y" for each identity key that differs. A store extracted before 0.3
    recorded the hash of the recipe file's bytes, not of its code: with ``recipe`` that hash matches too."""
    keys = sorted(set(old) | set(new))
    legacy = {"recipe_hash": recipe.source_bytes_hash} if recipe is not None and recipe.source_bytes_hash else {}
    return [f"{k}: store has {old.get(k)!r}, now {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k) and (k not in legacy or old.get(k) != legacy[k])]


def check_finite(name: str, stored: torch.Tensor, row0: int, rows_dataset: ViewRows, dtype: str) -> None:
    """Refuse a teacher output with NaN or Inf, naming the first rows (sample and view) that hold them."""
    bad = ~torch.isfinite(stored).flatten(1).all(1) if stored.dim() > 1 else ~torch.isfinite(stored)
    if bad.any():
        rows = (bad.nonzero().flatten() + row0).tolist()
        where = ", ".join(f"row {r} (sample {rows_dataset.locate(r)[0]}, view {rows_dataset.locate(r)[1]})"
                          for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        hint = (f" The values may exceed the {dtype} range; try --dtype bfloat16 or float32."
                if dtype == "float16" else "")
        raise NonFiniteOutputError(
            f"The teacher's {name} holds NaN or Inf at {where}{more}. Nothing from this shard was written.{hint}"
        )
