"""The extraction loop: DataLoader (the rows' inputs and view parameters) -> the views, made on the
teacher's device -> the teacher, section by section, in inference mode -> ``ShardSink`` (storage
dtype, shard buffers) -> ``WriterPool`` (encode, write, commit in order; ``litcache.extraction.writer``).
Memory holds at most a few shards, recycled."""

from __future__ import annotations

import contextlib
import os
import time

import torch
from torch.utils.data import DataLoader

from ..runtime.devices import worker_context
from ..runtime.progress import progress_bar
from ..store.arrays import StoreWriter
from .plan import ExtractPlan
from .rows import ViewRows
from .teacher_outputs import teacher_fields
from .writer import ShardSink, WriterPool, default_writer_threads

__all__ = ["shard_batches", "run_pending", "views_on_device"]


def shard_batches(start: int, stop: int, batch_size: int) -> list[list[int]]:
    """Batches of one shard. A trailing batch of one row joins the batch before it: CPU kernels
    compute a lone row with other rounding, which would make the bytes depend on --batch-size."""
    batches = [list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


def views_on_device(rows: ViewRows) -> bool:
    """Whether the loop makes the views (``apply_batch``: crop and flip) on the teacher's device; the
    loader then hands over the rows' inputs as they are, with each view's parameters."""
    return rows.augment is not None and hasattr(rows.augment, "apply_batch")


class _BatchedRows(torch.utils.data.Dataset):
    """A DataLoader fetches each batch of rows with one ``ViewRows.get_batch`` call (batched views)."""

    def __init__(self, rows: ViewRows, apply_views: bool) -> None:
        self.rows, self.apply_views = rows, apply_views

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, rows):
        return self.rows.get_batch(rows, apply_views=self.apply_views)


def _as_is(batch):
    return batch


def run_pending(plan: ExtractPlan, writer: StoreWriter, ranges: list[tuple[int, int]], pending: list[int],
                device: torch.device, progress: bool, background_writer: bool | None = None,
                writer_threads: int | None = None) -> tuple[float, int]:
    """Extract the pending shards; returns (seconds spent in the teacher, rows extracted).

    ``background_writer``: encode and write shards beside the teacher (True), or pause the teacher
    for each shard while every encoder thread works (False); None: beside it unless the teacher runs
    on a CPU with no spare core. ``writer_threads``: encoder threads (None: the free cores)."""
    o = plan.options
    compute = plan.compute
    teacher = compute.model(plan.sectioned).eval()
    # Batches never straddle shards, so a resumed run sees exactly the batches of an uninterrupted one.
    batches = [batch for i in pending for batch in shard_batches(*ranges[i], o.batch_size)]
    on_device = views_on_device(plan.rows_dataset)
    loader = DataLoader(_BatchedRows(plan.rows_dataset, apply_views=not on_device), batch_sampler=batches,
                        num_workers=o.loader_workers, collate_fn=_as_is, pin_memory=device.type == "cuda",
                        multiprocessing_context=worker_context(o.loader_workers))
    threads, overlap = default_writer_threads(device, os.cpu_count() or 1, torch.get_num_threads(), o.loader_workers)
    if writer_threads is not None:
        threads = writer_threads
    if background_writer is not None:
        overlap = background_writer
    pool = WriterPool(writer, threads, overlap, pending)
    # A CPU teacher's outputs are cast on the encoder threads when they run beside it; when the teacher
    # pauses for each shard, the loop's copy already runs on all of torch's threads.
    sink = ShardSink(pool, plan.specs, ranges, pending, device, o.dtype, o.keep_bits, plan.rows_dataset,
                     deferred=device.type == "cpu" and overlap)
    augment = plan.rows_dataset.augment
    total_rows = sum(ranges[i][1] - ranges[i][0] for i in pending)
    bar = progress_bar(total_rows, unit="row", desc="extract", enabled=progress)  # a bar on a terminal, else lines
    teacher_seconds, rows_done, t0 = 0.0, 0, time.perf_counter()
    try:
        for x, y, index, view, params in loader:
            t = time.perf_counter()
            with torch.inference_mode():
                if on_device:  # the views of the rows, made where the teacher runs (exact: only indexing)
                    x = augment.apply_batch(x.to(device, non_blocking=True), params)
                x = compute.input(x)
                with compute.autocast():
                    outs, logits = teacher.boundaries(x)
                fields = teacher_fields(outs, logits, y, o.logit_topk)
            teacher_seconds += time.perf_counter() - t
            host = {"labels": y, "source_index": index, "view": view}
            if plan.rows_dataset.num_params:
                host["view_params"] = params
            sink.add(fields, host)
            rows_done += len(y)
            bar.update(len(y))
            elapsed = time.perf_counter() - t0
            bar.set_postfix_str(f"{rows_done * plan.bytes_per_row / max(elapsed, 1e-9) / 1e6:.1f} MB/s raw",
                                refresh=False)
        sink.close()
    except BaseException:
        with contextlib.suppress(Exception):  # the batch staged last is computed and whole: its shard may be done
            sink.close()
        raise
    finally:
        bar.close()
        pool.finish()  # on an error too: shards already queued (all whole and finite) commit
    pool.raise_if_failed()
    return teacher_seconds, rows_done
