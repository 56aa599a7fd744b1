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

from .data import resolve_device
from .dataset import ChunkShuffleSampler, MemoryDataset, StoreDataset, make_loader
from .extract import ExtractOptions, extract, plan_extraction
from .precision import resolve_compute
from .recipe import Recipe
from .store import CODECS, DTYPES, codec_pipeline, open_store, to_storage
from .student import build_student
from .train import _set_train_mode, _trainable, step_losses

__all__ = ["bench", "teacher_forward_rate", "store_read_rate", "lit_step_rate", "storage_table"]


def teacher_forward_rate(recipe: Recipe, teacher: str | None, samples: int, batch_size: int, device: torch.device,
                         precision: str | None = None) -> float:
    """Rows/s of the teacher's forward alone (in extract's compute), on batches made beforehand."""
    plan = plan_extraction(recipe, ExtractOptions(limit=samples, batch_size=batch_size, device=str(device),
                                                  precision=precision), teacher)
    batches = [x for x, *_ in DataLoader(plan.rows_dataset, batch_size=batch_size)]
    compute = plan.compute
    split = compute.model(plan.split).eval()
    with torch.inference_mode(), compute.autocast():
        split.boundaries(compute.input(batches[0]))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for x in batches:
            split.boundaries(compute.input(x))
        _sync(device)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def store_read_rate(store_path: str | Path, batch_size: int, workers: int = 0) -> tuple[float, float]:
    """(rows/s, decoded MB/s) of one chunk-shuffled epoch of every boundary, logits and labels."""
    store = open_store(store_path)
    dataset = StoreDataset(store, [*store.boundary_names, "logits", "labels"], cache_chunks=10)
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
    """Rows/s of LIT training steps (both losses, backward, SGD step) fed from the store or from
    memory: the trainer's step, modes and compute (``litcache.train``)."""
    store = open_store(store_path)
    dataset = StoreDataset(store, [*store.boundary_names, "logits", "labels"], cache_chunks=10)
    source = MemoryDataset.from_store(dataset) if in_memory else dataset
    torch.manual_seed(0)
    model, split = build_student(recipe, student, store.module_state("stem"), store.module_state("head"))
    compute = resolve_compute(precision or recipe.precision, device, model)
    compute.model(model)
    optimizer = torch.optim.SGD(_trainable(split, "lit", None), lr=0.01, momentum=0.9)
    _set_train_mode(split, "lit", None)
    config = {"alpha": recipe.distill.alpha, "tau": recipe.distill.tau, "beta": recipe.distill.beta,
              "loss_scale": recipe.distill.loss_scale}
    loader = make_loader(source, ChunkShuffleSampler.for_store(store, batch_size), pin_memory=device.type == "cuda")
    rows, start = 0, None
    for step, batch in enumerate(loader):
        if step == 1:  # the first step pays one-off costs (allocator, kernels)
            _sync(device)
            rows, start = 0, time.perf_counter()
        if step > max_steps:
            break
        batch = {k: compute.input(v) for k, v in batch.items()}
        with compute.autocast():
            loss, _ = step_losses(split, batch, "lit", config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows += len(batch["labels"])
    _sync(device)
    if start is None:
        raise ValueError("The store is too small to time more than one training step; extract more rows.")
    return rows / (time.perf_counter() - start)


def storage_table(store_path: str | Path, sample_rows: int = 512) -> list[dict]:
    """Stored bytes per row of the store's boundaries for every dtype and codec, from real rows.

    A float16 or bfloat16 store cannot say what float32 would cost: its values, widened, have
    zero low mantissa bits and would compress far better than real float32 activations; so the
    float32 rows come only from a float32 store."""
    store = open_store(store_path)
    stored_dtype = store.manifest["identity"]["dtype"]
    rows = min(sample_rows, store.rows)
    chunk = store.manifest["layout"]["chunk_rows"]
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
            table.append({"dtype": dtype, "codec": codec, "bytes_per_row": stored / rows, "ratio_vs_float32": raw32 / stored})
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
            extract(recipe, store, ExtractOptions(limit=samples, batch_size=batch_size, device=device, precision=precision),
                    teacher_checkpoint=teacher, progress=False, log=lambda m: None)
            extract_rate = samples / (time.perf_counter() - t)
        else:
            manifest = open_store(store).manifest
            teacher = teacher or manifest["teacher"]["checkpoint"]
            timing = manifest.get("timing", {})
            extract_rate = manifest["layout"]["rows"] / timing["seconds"] if timing.get("seconds") else None
        log("timing the teacher's forward ...")
        teacher_rate = teacher_forward_rate(recipe, teacher, min(samples, open_store(store).manifest["identity"]["samples"]),
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
