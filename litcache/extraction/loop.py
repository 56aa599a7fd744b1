"""The extraction loop: DataLoader (views made from per-row seeds) -> teacher, section by section,
in inference mode -> cast to the storage dtype -> one buffer per shard -> a shard writer that
compresses, writes the whole shard and commits its ledger entry. Memory holds at most a few shards."""

from __future__ import annotations

import errno
import os
import queue
import threading
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import DiskSpaceError
from ..runtime.devices import worker_context
from ..runtime.progress import progress_bar
from ..store.arrays import StoreWriter
from ..store.encoding import MANTISSA_BITS, from_storage, to_storage
from .plan import ExtractPlan, check_finite
from .rows import ViewRows
from .teacher_outputs import teacher_fields

__all__ = ["ShardWriter", "shard_batches", "run_pending"]

#: Largest magnitude each storage dtype holds without becoming Inf.
_FINITE_LIMIT = {"float32": torch.finfo(torch.float32).max, "float16": 65504.0,
                 "bfloat16": torch.finfo(torch.bfloat16).max}


class ShardWriter(threading.Thread):
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
                f"Disk full while writing store {str(self.writer.path)!r}. The {done} shards committed so far are "
                "kept; free some space and run the same command with --resume."
            ) from exc
        raise exc


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


def run_pending(plan: ExtractPlan, writer: StoreWriter, ranges: list[tuple[int, int]], pending: list[int],
                device: torch.device, progress: bool, background_writer: bool | None = None) -> tuple[float, int]:
    """Extract the pending shards; returns (seconds spent in the teacher, rows extracted).

    ``background_writer``: compress and write shards in a background thread (True), between
    batches (False), or (None) in the background unless the teacher runs on a CPU with no spare core."""

    o = plan.options
    compute = plan.compute
    teacher = compute.model(plan.sectioned).eval()
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
    if background_writer is None:
        background_writer = device.type != "cpu" or (os.cpu_count() or 1) > torch.get_num_threads()
    background = ShardWriter(writer, inline=not background_writer)
    background.start()
    total_rows = sum(ranges[i][1] - ranges[i][0] for i in pending)
    bar = progress_bar(total_rows, unit="row", desc="extract", enabled=progress)  # a bar on a terminal, else lines
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
                fields = teacher_fields(outs, logits, y, o.logit_topk)
                outs = [fields[f"boundaries/{i}"] for i in range(len(outs))]
                stored = {name: to_storage(v, o.dtype, o.keep_bits) if name.startswith("boundaries/")
                          else to_storage(v, "float32") if v.is_floating_point()
                          else v.cpu().numpy().astype(storage[name], copy=False) for name, v in fields.items()}
            teacher_seconds += time.perf_counter() - t
            row0 = start + filled
            n = len(y)
            for i, z in enumerate(outs):
                # One cheap reduction per boundary and batch (NaN fails the comparison too); rows are
                # named only on failure. A finite float32 value above 65504 still overflows float16.
                if not z.abs().amax() <= finite_limit:
                    check_finite(f"boundary {i}", z, row0, plan.rows_dataset, o.dtype)
                    check_finite(f"boundary {i} (as {o.dtype})", from_storage(stored[f"boundaries/{i}"], o.dtype), row0,
                                 plan.rows_dataset, o.dtype)
            check_finite("logits", logits, row0, plan.rows_dataset, o.dtype)
            for name, value in stored.items():
                buffers[name][filled:filled + n] = value
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
            bar.set_postfix_str(f"{rows_done * plan.bytes_per_row / max(elapsed, 1e-9) / 1e6:.1f} MB/s raw",
                                refresh=False)
        background.put(None)
        background.join()
        background.raise_if_failed()
    finally:
        bar.close()
        if background.is_alive():
            background.queue.put(None)  # on an error, let shards already queued (all whole and finite) commit
            background.join()
    return teacher_seconds, rows_done
