"""`litcache bench`: where the time goes on this machine, and when a store pays for itself.

All figures are measured side by side in one run: the teacher's bare forward, the store's
chunk-shuffled decoded reads, a student's LIT step fed from the store and from memory, and the
stored bytes per row for every dtype and codec.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import zarr
import zarr.storage
from torch.utils.data import DataLoader

from .errors import OptionError
from .extraction.plan import ExtractOptions, plan_extraction
from .extraction.run import extract
from .recipe import Recipe
from .runtime.devices import resolve_device
from .runtime.precision import resolve_compute
from .store import open_store
from .store.encoding import CODECS, DTYPES, codec_pipeline, to_storage
from .training.blocks import prepare_student
from .training.config import BlockTrainOptions, resolve_config
from .training.dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset, make_loader
from .training.step import set_train_mode, store_fields, train_step

__all__ = ["bench", "format_bench", "teacher_forward_rate", "store_read_rate", "lit_step_rate", "storage_table"]


def teacher_forward_rate(recipe: Recipe, teacher: str | None, samples: int, batch_size: int, device: torch.device,
                         precision: str | None = None) -> float:
    """Rows/s of the teacher's forward alone (in extract's compute), on batches made beforehand."""
    plan = plan_extraction(recipe, ExtractOptions(limit=samples, batch_size=batch_size, device=str(device),
                                                  precision=precision), teacher)
    batches = [x for x, *_ in DataLoader(plan.rows_dataset, batch_size=batch_size)]
    compute = plan.compute
    sectioned = compute.model(plan.sectioned).eval()
    with torch.inference_mode(), compute.autocast():
        sectioned.boundaries(compute.input(batches[0]))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for x in batches:
            sectioned.boundaries(compute.input(x))
        _sync(device)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def store_read_rate(store_path: str | Path, batch_size: int, workers: int = 0) -> tuple[float, float]:
    """(rows/s, decoded MB/s) of one chunk-shuffled epoch of every boundary, logits and labels."""
    store = open_store(store_path)
    dataset = StoreDataset(store, store_fields([*store.boundary_names, "logits", "labels"], store.manifest.arrays),
                           cache_chunks=10)
    sampler = ChunkShuffleSampler.for_store(store, batch_size, num_workers=workers)
    rows = nbytes = 0
    start = time.perf_counter()
    for batch in make_loader(dataset, sampler, num_workers=workers):
        rows += len(batch["labels"])
        nbytes += sum(t.numel() * t.element_size() for t in batch.values())
    seconds = time.perf_counter() - start
    return rows / seconds, nbytes / seconds / 1e6


def lit_step_rate(recipe: Recipe, store_path: str | Path, student: str, batch_size: int, device: torch.device,
                  in_memory: bool, max_steps: int = 50, precision: str | None = None) -> float:
    """Rows/s of LIT training steps (both losses, backward, optimizer step) fed from the store or
    from memory: train-blocks' own set-up and step (``prepare_student``, ``litcache.training.step.train_step``):
    its autocast, gradient scaler, the recipe's optimizer and lr schedule."""
    store = open_store(store_path)
    dataset = StoreDataset(store, store_fields([*store.boundary_names, "logits", "labels"], store.manifest.arrays),
                           cache_chunks=10)
    source = MemoryDataset.from_store(dataset) if in_memory else dataset
    options = BlockTrainOptions(mode="lit", batch_size=batch_size, precision=precision, device=str(device),
                                student_init="scratch")
    run = prepare_student(recipe, store, student, resolve_config(recipe, options), log=lambda _: None)
    set_train_mode(run.sectioned, run.config.phase)
    sampler = ChunkShuffleSampler.for_store(store, batch_size)
    loader = make_loader(source, sampler, pin_memory=device.type == "cuda")
    rows, start = 0, None
    for step, batch in enumerate(loader):
        if step == 1:  # the first step pays one-off costs (allocator, kernels)
            _sync(device)
            rows, start = 0, time.perf_counter()
        if step > max_steps:
            break
        batch = {k: run.compute.input(v) for k, v in batch.items()}
        run.config.optim.apply_schedule(run.optimizer, 0, step, len(sampler))
        train_step(run.sectioned, batch, run.config.phase, run.config.losses, run.optimizer, run.scaler, run.compute)
        rows += len(batch["labels"])
    _sync(device)
    if start is None:
        raise OptionError(f"Expected a store of more than one batch of {batch_size} rows to time training steps, "
                          f"got {store.rows} rows instead; extract more rows or lower --batch-size.")
    return rows / (time.perf_counter() - start)


def storage_table(store_path: str | Path, sample_rows: int = 512) -> list[dict]:
    """Stored bytes per row of the store's boundaries for every dtype and codec, from real rows.

    A float16 or bfloat16 store cannot say what float32 would cost: its values, widened, have
    zero low mantissa bits and would compress far better than real float32 activations; so the
    float32 rows come only from a float32 store."""
    store = open_store(store_path)
    stored_dtype = store.manifest.identity.dtype
    rows = min(sample_rows, store.rows)
    chunk = store.manifest.layout.chunk_rows
    values = {name: store.read(name, 0, rows).float() for name in store.boundary_names}
    raw32 = sum(v.numel() * 4 for v in values.values())
    table = []
    for dtype in DTYPES:
        if dtype == "float32" and stored_dtype != "float32":
            continue
        for codec in CODECS:
            stored = 0
            for v in values.values():
                data = to_storage(v, dtype)
                target = zarr.storage.MemoryStore()
                array = zarr.create_array(target, shape=data.shape, chunks=(chunk, *data.shape[1:]), dtype=data.dtype,
                                          compressors=codec_pipeline(codec), fill_value=0)
                array[...] = data
                stored += sum(len(b) for k, b in target._store_dict.items() if not k.endswith("zarr.json"))
            table.append({"dtype": dtype, "codec": codec, "bytes_per_row": stored / rows,
                          "ratio_vs_float32": raw32 / stored})
    return table


def bench(recipe: Recipe, store: str | Path | None = None, *, teacher: str | None = None, student: str | None = None,
          samples: int = 1024, batch_size: int = 128, device: str = "auto", precision: str | None = None,
          loader_workers: Sequence[int] = (0,), log: Callable[[str], None] = print) -> dict:
    """Measure this machine; extracts a temporary store of ``samples`` rows when none is given.

    Store reads are timed with each count of DataLoader workers in ``loader_workers``: against the
    rate the student consumes rows (fed from memory), that says how many decode workers keep it fed.
    """
    dev = resolve_device(device)
    student = student or next(iter(recipe.students))
    with tempfile.TemporaryDirectory(prefix="litcache-bench-") as tmp:
        if store is None:
            store = Path(tmp) / "bench.zarr"
            log(f"extracting a temporary store of {samples} rows ...")
            t = time.perf_counter()
            extract(recipe, store,
                    ExtractOptions(limit=samples, batch_size=batch_size, device=device, precision=precision),
                    teacher_checkpoint=teacher, progress=False, log=lambda m: None)
            extract_rate = samples / (time.perf_counter() - t)
        else:
            manifest = open_store(store).manifest
            teacher = teacher or manifest.teacher.checkpoint
            seconds = manifest.timing.seconds if manifest.timing else None
            extract_rate = manifest.layout.rows / seconds if seconds else None
        log("timing the teacher's forward ...")
        teacher_rate = teacher_forward_rate(recipe, teacher, min(samples, open_store(store).manifest.identity.samples),
                                            batch_size, dev, precision)
        log("timing store reads ...")
        reads = [(workers, *store_read_rate(store, batch_size, workers)) for workers in loader_workers]
        read_rate, read_mb = reads[0][1], reads[0][2]
        log("timing student steps from the store and from memory ...")
        from_store = lit_step_rate(recipe, store, student, batch_size, dev, in_memory=False, precision=precision)
        from_memory = lit_step_rate(recipe, store, student, batch_size, dev, in_memory=True, precision=precision)
        log("measuring bytes per row per dtype and codec ...")
        storage = storage_table(store)

    # Per row and epoch: online LIT pays a teacher forward and a student step; cached LIT pays a
    # student step fed from the store, after a one-off extraction.
    online = 1 / teacher_rate + 1 / from_memory
    cached = 1 / from_store
    one_off = 1 / (extract_rate or teacher_rate)
    break_even = one_off / (online - cached) if online > cached else None
    stages = {"teacher": teacher_rate, "store read + decode": read_rate, "student step": from_memory}
    bottleneck = "store read + decode" if read_rate < from_memory else "student step"
    # What the student consumes, in decoded bytes, against what the reader delivers per worker count.
    mb_per_row = read_mb / read_rate
    enough = [workers for workers, rate, _ in reads if rate >= from_memory]
    return {
        "device": str(dev), "student": student, "batch_size": batch_size,
        "compute": resolve_compute(precision or recipe.precision, dev, recipe.build_teacher()).describe(),
        "teacher_forward_rows_per_s": teacher_rate, "extract_rows_per_s": extract_rate,
        "store_read_rows_per_s": read_rate, "store_read_mb_per_s": read_mb,
        "store_read_by_workers": [{"loader_workers": w, "rows_per_s": r, "mb_per_s": mb} for w, r, mb in reads],
        "student_consumes_mb_per_s": from_memory * mb_per_row,
        "decode_workers_needed": min(enough) if enough else None,
        "student_step_rows_per_s_from_store": from_store, "student_step_rows_per_s_from_memory": from_memory,
        "loader_overhead": from_memory / from_store, "storage": storage, "stages_rows_per_s": stages,
        "training_bottleneck": bottleneck, "break_even_epochs": break_even,
        "online_over_cached_per_epoch": online / cached,
    }


def format_bench(report: dict) -> str:
    """The text `litcache bench` prints for a :func:`bench` report."""
    extract_rate = f"{report['extract_rows_per_s']:,.0f}" if report["extract_rows_per_s"] else "-"
    lines = [
        f"device {report['device']}, student {report['student']}, batch {report['batch_size']}, {report['compute']}",
        f"  teacher forward          {report['teacher_forward_rows_per_s']:>10,.0f} rows/s   (extraction "
        f"{extract_rate} rows/s)",
        f"  store read + decode      {report['store_read_rows_per_s']:>10,.0f} rows/s   "
        f"({report['store_read_mb_per_s']:,.0f} MB/s decoded)",
        f"  student LIT step, store  {report['student_step_rows_per_s_from_store']:>10,.0f} rows/s",
        f"  student LIT step, memory {report['student_step_rows_per_s_from_memory']:>10,.0f} rows/s   "
        f"(store/memory time {report['loader_overhead']:.2f})",
        f"  training bottleneck: {report['training_bottleneck']}",
        f"  the student consumes {report['student_consumes_mb_per_s']:,.0f} MB/s of decoded rows; the reader delivers "
        + ", ".join(f"{r['mb_per_s']:,.0f} MB/s with {r['loader_workers']} loader workers"
                    for r in report["store_read_by_workers"])
        + (f"; {report['decode_workers_needed']} loader workers keep it fed"
           if report["decode_workers_needed"] is not None
           else "; none of these keeps it fed: try more --loader-workers"),
        "  bytes per row (boundaries):   " + "   ".join(
            f"{s['dtype']}+{s['codec']} {s['bytes_per_row']:,.0f} ({s['ratio_vs_float32']:.1f}x)"
            for s in report["storage"])
        + ("" if any(s["dtype"] == "float32" for s in report["storage"]) else "   (float32 rows need a float32 store)"),
    ]
    if report["break_even_epochs"] is not None:
        lines.append(f"  online/cached time per epoch {report['online_over_cached_per_epoch']:.2f}: extraction pays "
                     f"for itself after {report['break_even_epochs']:.1f} student epochs (variants x epochs over the "
                     "same rows)")
    else:
        lines.append("  a cached epoch is not cheaper than an online one here: the store does not pay "
                     "off on this machine")
    return "\n".join(lines)
