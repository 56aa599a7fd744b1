"""`litcache extract`: run the teacher once, stream its section boundaries into a store.

Pipeline: DataLoader (views made from per-row seeds) -> teacher, section by section, in
inference mode -> cast to the storage dtype -> one buffer per shard -> a shard writer that
compresses, writes the whole shard and commits its ledger entry. The writer is a background
thread (compression overlaps the teacher) on a GPU or when a core is spare, inline otherwise;
memory holds at most a few shards.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import __version__
from .data import RowLayout, ViewRows, data_fingerprint, resolve_device, worker_context
from .errors import (
    DiskSpaceError,
    IncompleteStoreError,
    NonFiniteOutputError,
    NotAStoreError,
    OptionError,
    StoreFormatError,
    StoreMismatchError,
)
from .location import StoreLocation
from .precision import Compute, resolve_compute
from .recipe import Recipe
from .sections import check_split, split_model
from .store import (
    CODECS,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    LOCK_FILE,
    MANTISSA_BITS,
    ArraySpec,
    StoreWriter,
    check_unlocked,
    from_storage,
    read_ledger,
    read_manifest,
    shard_ranges,
    store_lock,
    to_storage,
)
from .teacher import load_teacher

__all__ = ["ExtractOptions", "ExtractResult", "extract", "plan_extraction"]

ROW_ORDER = ("block-interleaved: rows [(b * views + v) * chunk_rows, +chunk_rows) hold view v of positions "
             "[b * chunk_rows, +chunk_rows); the last partial block stores its views one after another; "
             "source_index gives each row's sample")
#: Largest magnitude each storage dtype holds without becoming Inf.
_FINITE_LIMIT = {"float32": torch.finfo(torch.float32).max, "float16": 65504.0, "bfloat16": torch.finfo(torch.bfloat16).max}
_FORCE_BACKGROUND = os.environ.get("LITCACHE_BACKGROUND_WRITER") == "1"  # for benchmarks: compare both writers
#: Auto shard size: as many whole chunks as fit in this many raw bytes.
SHARD_TARGET_BYTES = 64 * 2**20
#: Rough compressed/raw ratio used only to estimate the store size before extracting (on the
#: high side: the disk check must not pass a store that will not fit). 16-bit values compress less
#: than float32 ones: float16 + zstd measured 0.47 on MNIST and 0.71 on CIFAR ResNet-56 boundaries.
_ESTIMATED_RATIO = {"float32": {"zstd": 0.55, "lz4": 0.65, "none": 1.0},
                    "16-bit": {"zstd": 0.75, "lz4": 0.85, "none": 1.0}}


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
    codec: str = "zstd"
    keep_bits: int | None = None  # lossy: round activations to this many mantissa bits (None: exact)
    chunk_rows: int = 256
    shard_rows: int | None = None  # None: whole chunks up to SHARD_TARGET_BYTES
    seed: int = 0
    shuffle: bool = True  # rows visit samples in a seeded permutation (see ViewRows)
    loader_workers: int = 0

    def __post_init__(self) -> None:
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
        if self.codec not in CODECS:
            raise OptionError(f"Expected --codec in {list(CODECS)}, got {self.codec!r} instead.")
        if self.keep_bits is not None and not 1 <= self.keep_bits < MANTISSA_BITS[self.dtype]:
            raise OptionError(f"Expected --keep-bits between 1 and {MANTISSA_BITS[self.dtype] - 1} for --dtype {self.dtype} "
                              f"(it has {MANTISSA_BITS[self.dtype]} mantissa bits), got {self.keep_bits} instead. "
                              "Leave it out to store the values exactly.")
        if self.loader_workers < 0:
            raise OptionError(f"Expected --loader-workers >= 0, got {self.loader_workers} instead.")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class ExtractResult:
    path: str
    status: str  # "created", "resumed" or "unchanged"
    rows: int
    rows_written: int
    seconds: float
    teacher_seconds: float
    bytes_raw: int

    @property
    def rows_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds else 0.0


@dataclass
class _Plan:
    """Everything decided before a single row is extracted."""

    recipe: Recipe
    options: ExtractOptions
    teacher: torch.nn.Module
    split: torch.nn.Module
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


def plan_extraction(recipe: Recipe, options: ExtractOptions, teacher_checkpoint: str | Path | None = None) -> _Plan:
    """Load teacher and data, check the split, and work out shapes and identity."""
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
    rows = ViewRows(dataset, RowLayout(samples, options.views, options.chunk_rows), options.seed, augment, options.shuffle)

    split = split_model(teacher, recipe)
    compute = resolve_compute(options.precision or recipe.precision, resolve_device(options.device), teacher)
    probe = torch.stack([rows[r][0] for r in range(min(8, len(rows)))])
    with torch.inference_mode():
        _check_finite("output", teacher(probe), 0, rows, "float32")  # before the split check blames the split
    check_split(teacher, split, probe)
    with torch.inference_mode():
        outs, logits = split.boundaries(probe[:1])

    dtype = options.dtype
    specs = [ArraySpec(f"boundaries/{i}", tuple(t.shape[1:]), dtype) for i, t in enumerate(outs)]
    # Logits stay float32: they are small, and the KD loss divides them by a temperature.
    specs += [
        ArraySpec("logits", tuple(logits.shape[1:]), "float32"),
        ArraySpec("labels", (), "int64"),
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
        "chunk_rows": options.chunk_rows,
        "shard_rows": shard_rows,
    }
    return _Plan(recipe, options, teacher, split, checkpoint, rows, specs, identity, shard_rows, compute)


def _identity_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: store has {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _decide(out: StoreLocation, identity: dict, resume: bool, overwrite: bool) -> str:
    """What to do with ``out``: "create", "resume" or "unchanged"; refuses what would lose data."""
    out = StoreLocation(out)
    if not out.exists() or (out.is_dir() and all(name == LOCK_FILE for name in out.listdir())):
        return "create"  # nothing there, or only the lock of an extraction killed before it wrote anything
    try:
        manifest = read_manifest(out)
    except StoreFormatError:
        if overwrite:
            return "create"
        raise
    except NotAStoreError:
        # Never delete something litcache did not make, even with --overwrite.
        raise NotAStoreError(
            f"Output path {str(out)!r} exists and is not a litcache store; refusing to write into it. "
            "Choose another --out, or remove it yourself if it is yours to delete."
        ) from None
    if overwrite:
        return "create"
    diff = _identity_diff(manifest.get("identity", {}), identity)
    if diff:
        raise StoreMismatchError(
            f"Store {str(out)!r} was extracted from something else ({'; '.join(diff)}). "
            "Pass --overwrite to replace it, or choose another --out."
        )
    if manifest.get("complete"):
        return "unchanged"
    if not resume:
        raise IncompleteStoreError(
            f"Store {str(out)!r} holds an unfinished extraction with these same options. "
            "Pass --resume to finish it, or --overwrite to start again."
        )
    # Killed before its first shard: its arrays may be half-created, and there is nothing to keep.
    return "resume" if read_ledger(out) else "create"


def _free_bytes(path: StoreLocation) -> int | None:
    """Free disk space at the store; None when unknown (an object store)."""
    return StoreLocation(path).free_bytes()


def human_bytes(n: float) -> str:
    """Bytes in decimal units: 512 B, 50.1 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


class _ShardWriter(threading.Thread):
    """Writes queued shards in the background; the first error stops it and is re-raised by the caller.

    ``inline`` writes each shard in the caller's thread instead. On a CPU teacher that already uses
    every core, a compressing thread beside it costs more (torch's threads stall when one of them
    is preempted) than compressing between batches.
    """

    def __init__(self, writer: StoreWriter, depth: int = 2, inline: bool = False) -> None:
        super().__init__(name="litcache-shard-writer", daemon=True)
        self.writer = writer
        self.inline = inline
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def start(self) -> None:
        if not self.inline:
            super().start()

    def join(self, timeout: float | None = None) -> None:
        if not self.inline:
            super().join(timeout)

    def _write(self, item) -> None:
        try:
            self.writer.write_shard(*item)
        except BaseException as exc:  # re-raised by the caller
            self.error = exc

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is None:  # after a failure, drain without writing
                self._write(item)

    def put(self, item) -> None:
        if self.inline:
            if item is not None:
                self._write(item)
            self.raise_if_failed()
            return
        while True:
            self.raise_if_failed()
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        if self.error is None:
            return
        exc = self.error
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            done = len(self.writer.committed())
            raise DiskSpaceError(
                f"Disk full while writing store {str(self.writer.path)!r}. The {done} shards committed so far are kept; "
                "free some space and run the same command with --resume."
            ) from exc
        raise exc


def _check_finite(name: str, stored: torch.Tensor, row0: int, rows_dataset: ViewRows, dtype: str) -> None:
    bad = ~torch.isfinite(stored).flatten(1).all(1) if stored.dim() > 1 else ~torch.isfinite(stored)
    if bad.any():
        rows = (bad.nonzero().flatten() + row0).tolist()
        where = ", ".join(f"row {r} (sample {rows_dataset.locate(r)[0]}, view {rows_dataset.locate(r)[1]})" for r in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        hint = (f" The values may exceed the {dtype} range; try --dtype bfloat16 or float32."
                if dtype == "float16" else "")
        raise NonFiniteOutputError(
            f"The teacher's {name} holds NaN or Inf at {where}{more}. Nothing from this shard was written.{hint}"
        )


def extract(
    recipe: Recipe,
    out: str | Path,
    options: ExtractOptions = ExtractOptions(),
    *,
    teacher_checkpoint: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    workers: int | None = None,
    scheduler: str | None = None,
) -> ExtractResult:
    """Extract the recipe's teacher boundaries for ``options.split`` into the store at ``out``.

    With ``workers`` > 1 (a local dask cluster) or ``scheduler`` (an existing one), this process
    plans, creates and finalizes the store and dask workers extract disjoint sets of whole shards;
    the store is the same as a serial extraction's.
    """
    if workers is not None or scheduler:
        from .sweep import check_parallel_options

        check_parallel_options(workers, scheduler)
    distributed = bool(scheduler) or (workers or 1) > 1
    if distributed and not recipe.source:
        raise OptionError(f"Recipe {recipe.name!r} has no source path; dask workers load the recipe by it. "
                          "Load it with litcache.load_recipe.")
    out = StoreLocation(out)  # a local directory or an fsspec URL
    t_start = time.perf_counter()
    plan = plan_extraction(recipe, options, teacher_checkpoint)
    device = resolve_device(options.device)
    ranges = shard_ranges(plan.rows, plan.shard_rows)
    # Preflight, before anything is written or locked: a refusal leaves the path as it was.
    if out.is_dir():
        check_unlocked(out)
    action = _decide(out, plan.identity, resume, overwrite)
    if action != "unchanged":
        committed = read_ledger(out) if action == "resume" else {}
        pending_rows = sum(stop - start for i, (start, stop) in enumerate(ranges) if i not in committed)
        ratios = _ESTIMATED_RATIO["float32" if options.dtype == "float32" else "16-bit"]
        estimate = pending_rows * plan.bytes_per_row * ratios[options.codec]
        free = _free_bytes(out)
        shapes = ", ".join(f"{s.name.split('/')[-1]}:{'x'.join(map(str, s.row_shape))}" for s in plan.specs if s.name.startswith("boundaries/"))
        log(f"extract {recipe.name}/{options.split}: {plan.rows} rows ({pending_rows} to do, {len(ranges) - len(committed)}/{len(ranges)} "
            f"shards), boundaries {shapes}, {human_bytes(plan.bytes_per_row)}/row, est. store {human_bytes(estimate)} "
            f"({options.dtype}+{options.codec}), free disk {'unknown (remote store)' if free is None else human_bytes(free)}, "
            f"device {device}, {plan.compute.describe()}")
        if free is not None and estimate > free:
            raise DiskSpaceError(
                f"The store needs about {human_bytes(estimate)} but only {human_bytes(free)} is free at {str(out)!r}. "
                "Free some space, or reduce --limit/--views, or use a smaller --dtype."
            )
    # Decide again under the lock: another extraction may have started or finished meanwhile.
    with store_lock(out), contextlib.ExitStack() as cluster:
        action = _decide(out, plan.identity, resume, overwrite)
        if action == "unchanged":
            log(f"{out}: already complete with the same recipe, teacher, data and options; nothing to do.")
            return ExtractResult(str(out), "unchanged", plan.rows, 0, time.perf_counter() - t_start, 0.0, 0)
        client = None
        if distributed:  # connected before the store is touched: an unreachable scheduler changes nothing
            from .sweep import dask_client

            client = cluster.enter_context(dask_client(workers, scheduler))
        if action == "create":
            modules = {"stem": plan.split.stem.state_dict(), "head": plan.split.head.state_dict()}
            writer = StoreWriter.create(out, _initial_manifest(plan), plan.specs, options.codec, modules)
        else:
            writer = StoreWriter.reopen(out)
            # Resume with the batching the store was started with, so every shard is computed alike.
            batch_size = writer.manifest.get("options", {}).get("batch_size", options.batch_size)
            if batch_size != options.batch_size:
                log(f"resuming with the store's --batch-size {batch_size} (not {options.batch_size})")
                plan.options = replace(options, batch_size=batch_size)
            log(f"resuming: {len(writer.committed())} shards already committed")
        committed = writer.committed()
        pending = [i for i in range(len(ranges)) if i not in committed]

        if client is not None:
            teacher_seconds, rows_done = _run_distributed(plan, out, pending, client, log)
        else:
            teacher_seconds, rows_done = _run(plan, writer, ranges, pending, device, progress)
        manifest = writer.finalize({"completed": _now(), "timing": {
            "seconds": round(time.perf_counter() - t_start, 3), "teacher_seconds": round(teacher_seconds, 3)}})
    seconds = time.perf_counter() - t_start
    log(f"{out}: complete, {manifest['layout']['rows']} rows in {len(manifest['shards'])} shards "
        f"({rows_done} extracted in {seconds:.1f} s, {rows_done / max(seconds, 1e-9):.0f} rows/s)")
    return ExtractResult(str(out), "created" if action == "create" else "resumed", plan.rows, rows_done, seconds,
                         teacher_seconds, rows_done * plan.bytes_per_row)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _initial_manifest(plan: _Plan) -> dict:
    import numcodecs
    import zarr

    o = plan.options
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "identity": plan.identity,
        "layout": {
            "rows": plan.rows,
            "samples": plan.rows_dataset.samples,
            "views": o.views,
            "chunk_rows": o.chunk_rows,
            "shard_rows": plan.shard_rows,
            "num_shards": len(shard_ranges(plan.rows, plan.shard_rows)),
            "row_order": ROW_ORDER,
        },
        "boundaries": [s.name for s in plan.specs if s.name.startswith("boundaries/")],
        "view_param_names": list(plan.rows_dataset.augment.param_names) if plan.rows_dataset.augment else [],
        "recipe": {"name": plan.recipe.name, "source": plan.recipe.source, "hash": plan.recipe.source_hash,
                   "num_classes": plan.recipe.num_classes},
        "teacher": {"checkpoint": plan.checkpoint, "weights_hash": plan.identity["teacher_hash"]},
        "options": asdict(o),
        # What the teacher computed in (the identity holds the precision; the layout is recorded for the record).
        "compute": {"precision": plan.compute.precision, "channels_last": plan.compute.channels_last,
                    "device": str(plan.compute.device)},
        "versions": {"litcache": __version__, "torch": torch.__version__, "zarr": zarr.__version__,
                     "numcodecs": numcodecs.__version__, "numpy": np.__version__, "python": sys.version.split()[0]},
        "created": _now(),
    }


def shard_batches(start: int, stop: int, batch_size: int) -> list[list[int]]:
    """Batches of one shard. A trailing batch of one row joins the batch before it: CPU kernels
    compute a lone row with other rounding, which would make the bytes depend on --batch-size."""
    batches = [list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


class _BatchedRows(torch.utils.data.Dataset):
    """A DataLoader fetches each batch of rows with one ``ViewRows.get_batch`` call (batched views)."""

    def __init__(self, rows: ViewRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, rows):
        return self.rows.get_batch(rows)


def _as_is(batch):
    return batch


def _run(plan: _Plan, writer: StoreWriter, ranges: list[tuple[int, int]], pending: list[int],
         device: torch.device, progress: bool) -> tuple[float, int]:
    """Extract the pending shards; returns (seconds spent in the teacher, rows extracted)."""
    from tqdm import tqdm

    o = plan.options
    compute = plan.compute
    teacher = compute.model(plan.split).eval()
    # Batches never straddle shards, so a resumed run sees exactly the batches of an uninterrupted one.
    batches = [batch for i in pending for batch in shard_batches(*ranges[i], o.batch_size)]
    loader = DataLoader(_BatchedRows(plan.rows_dataset), batch_sampler=batches, num_workers=o.loader_workers,
                        collate_fn=_as_is, pin_memory=device.type == "cuda",
                        multiprocessing_context=worker_context(o.loader_workers))
    names = [s.name for s in plan.specs]
    shapes = {s.name: s.row_shape for s in plan.specs}
    storage = {s.name: s.storage_dtype for s in plan.specs}

    # Above this magnitude a value may become Inf in the storage dtype (rounding up to fewer bits included).
    finite_limit = _FINITE_LIMIT[o.dtype] * (1 - 2.0 ** -((o.keep_bits or MANTISSA_BITS[o.dtype]) + 1))
    spare_cores = (os.cpu_count() or 1) > torch.get_num_threads()
    background = _ShardWriter(writer, inline=device.type == "cpu" and not spare_cores and not _FORCE_BACKGROUND)
    background.start()
    total_rows = sum(ranges[i][1] - ranges[i][0] for i in pending)
    bar = tqdm(total=total_rows, unit="row", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    teacher_seconds, rows_done, t0 = 0.0, 0, time.perf_counter()
    shard_iter = iter(pending)
    shard = buffers = None
    try:
        for x, y, index, view, params in loader:
            if shard is None:
                shard = next(shard_iter)
                start, stop = ranges[shard]
                buffers = {n: np.empty((stop - start, *shapes[n]), dtype=storage[n]) for n in names}
                filled = 0
            t = time.perf_counter()
            with torch.inference_mode():
                with compute.autocast():
                    outs, logits = teacher.boundaries(compute.input(x))
                stored = [to_storage(z, o.dtype, o.keep_bits) for z in outs] + [to_storage(logits, "float32")]
            teacher_seconds += time.perf_counter() - t
            row0 = start + filled
            n = len(y)
            for i, z in enumerate(outs):
                # One cheap reduction per boundary and batch (NaN fails the comparison too); rows are
                # named only on failure. A finite float32 value above 65504 still overflows float16.
                if not z.abs().amax() <= finite_limit:
                    _check_finite(f"boundary {i}", z, row0, plan.rows_dataset, o.dtype)
                    _check_finite(f"boundary {i} (as {o.dtype})", from_storage(stored[i], o.dtype), row0, plan.rows_dataset, o.dtype)
            _check_finite("logits", logits, row0, plan.rows_dataset, o.dtype)
            for i in range(len(outs)):
                buffers[f"boundaries/{i}"][filled:filled + n] = stored[i]
            buffers["logits"][filled:filled + n] = stored[-1]
            buffers["labels"][filled:filled + n] = y.numpy()
            buffers["source_index"][filled:filled + n] = index.numpy()
            buffers["view"][filled:filled + n] = view.numpy()
            if "view_params" in buffers:
                buffers["view_params"][filled:filled + n] = params.numpy()
            filled += n
            rows_done += n
            if filled == stop - start:
                background.put((shard, start, buffers))
                shard = buffers = None
            bar.update(n)
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{rows_done * plan.bytes_per_row / max(elapsed, 1e-9) / 1e6:.1f} MB/s raw", refresh=False)
        background.put(None)
        background.join()
        background.raise_if_failed()
    finally:
        bar.close()
        if background.is_alive():
            background.queue.put(None)  # on an error, let shards already queued (all whole and finite) commit
            background.join()
    return teacher_seconds, rows_done


def _extract_task(recipe_source: str, options: ExtractOptions, checkpoint: str, store: str, shards: list[int]) -> tuple[float, int]:
    """A dask worker's part of a distributed extraction: the given whole shards, written and committed."""
    from .recipe import load_recipe

    torch.set_num_threads(1)  # one core per worker; on CPU ResNets 1 and 2 threads store the same bytes (measured)
    recipe = load_recipe(recipe_source)
    # Dask worker processes are daemons, which may not start DataLoader worker processes.
    plan = plan_extraction(recipe, replace(options, loader_workers=0), checkpoint)
    writer = StoreWriter.reopen(store)
    diff = _identity_diff(writer.manifest["identity"], plan.identity)
    if diff:  # e.g. a worker on another machine with other data or another teacher file
        raise StoreMismatchError(f"A dask worker sees another recipe, teacher or data than store {store!r} was started with "
                                 f"({'; '.join(diff)}). Give every worker the same files.")
    ranges = shard_ranges(plan.rows, plan.shard_rows)
    return _run(plan, writer, ranges, shards, resolve_device(options.device), progress=False)


def _span(shards: list[int]) -> str:
    return f"{shards[0]}-{shards[-1]}" if len(shards) > 1 else str(shards[0])


def _run_distributed(plan: _Plan, out: StoreLocation, pending: list[int], client, log: Callable[[str], None]) -> tuple[float, int]:
    """Split the pending shards into one contiguous run per dask worker thread and extract them
    there. Zarr writers in several processes are safe on distinct whole shards only, which is all
    ``_run`` ever writes. Returns (teacher seconds summed over workers, rows extracted)."""
    from distributed import as_completed

    from .sweep import portable_path

    if not pending:
        return 0.0, 0
    args = (portable_path(plan.recipe.source), plan.options, str(Path(plan.checkpoint).resolve()),
            out.url if out.remote else str(out.path.resolve()))
    teacher_seconds, rows_done, failures = 0.0, 0, []
    slots = max(1, sum(client.nthreads().values()))
    runs = [run.tolist() for run in np.array_split(np.array(pending), min(slots, len(pending)))]
    log(f"extracting {len(pending)} shards on {len(runs)} dask workers: shards " + ", ".join(map(_span, runs)))
    futures = {client.submit(_extract_task, *args, run, pure=False): run for run in runs}
    for future in as_completed(futures):
        run = futures[future]
        try:
            seconds, rows = future.result()
        except Exception as exc:  # the other workers' shards are committed all the same
            failures.append(f"shards {_span(run)} failed: {type(exc).__name__}: {' '.join(str(exc).split())}")
            log(failures[-1])
            continue
        teacher_seconds, rows_done = teacher_seconds + seconds, rows_done + rows
        log(f"shards {_span(run)} done ({rows} rows)")
    if failures:
        done, total = len(read_ledger(out)), len(shard_ranges(plan.rows, plan.shard_rows))
        raise IncompleteStoreError(
            f"Extraction into {str(out)!r} did not finish: {'; '.join(failures)}. The {done} of {total} shards committed "
            "are kept; fix the cause and run the same command with --resume to finish it."
        )
    return teacher_seconds, rows_done
