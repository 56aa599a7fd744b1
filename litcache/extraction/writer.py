"""The writing half of an extraction: teacher outputs -> shard buffers -> a pool of encoder threads
-> shard files -> ledger entries, committed in shard order.

Per batch, in the loop's thread (``ShardSink.add``), the finite check is one ``aminmax`` per boundary,
computed where the teacher ran. Every field goes into its shard's buffer in one pass: ``copy_`` casts
to the storage dtype (and NCHW) as it copies. Buffers are recycled, so a shard's memory is touched
once (fresh buffers cost a page fault per 4 KB: more than the cast and copy together).

Where that copy runs depends on the teacher's device:
- from a CUDA teacher the cast runs on the device and the copy (half the bytes) goes to pinned
  buffers, ``non_blocking``, on a side stream, in the loop: the teacher computes batch n + 1 while
  batch n is copied;
- from a CPU teacher with encoders beside it, the batch is kept as computed and each encoder thread
  casts the rows of the chunk it is about to encode (``deferred`` copies): the cast, a fifth of
  zstd's time here, scales with the encoder threads instead of holding up the loop (a CPU teacher
  that pauses for each shard copies in the loop, on all of torch's threads).
Either way a batch is *retired* (its copy awaited, its finite flags read) one batch later; the
immediate copies run on the CPU too (``deferred=False``, tested there), with no stream and no events.

Per full shard (``WriterPool``): its chunks are encoded on ``threads`` encoder threads (numcodecs'
zstd and blosc release the GIL, so threads scale with cores); the thread that encodes an array's
last chunk writes and fsyncs that array's shard file, so n threads are n whole workers. A shard
thread per shard in flight only waits: it hashes the shard, waits until every shard before it is
committed and commits its ledger entry, so the ledger grows in order, with the crash safety of a
serial writer.
With ``overlap`` off, the loop waits for each shard before its next batch: a CPU teacher that
already uses every core loses more to an encoder beside it (torch's threads stall when one is
preempted) than to encoding between batches on all cores.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import LitcacheError, ShardWriteError
from ..store.arrays import ArraySpec, StoreWriter
from ..store.encoding import MANTISSA_BITS, from_storage, round_mantissa, to_storage
from ..store.space import is_disk_full
from .plan import check_finite
from .rows import ViewRows

__all__ = ["WriterPool", "ShardSink", "ShardBuffers", "default_writer_threads"]

#: The torch dtype each store array's logical dtype is copied into (bfloat16 is stored as its uint16 bits).
_TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "int64": torch.int64, "int32": torch.int32}
#: Largest magnitude each storage dtype holds without becoming Inf.
_FINITE_LIMIT = {"float32": torch.finfo(torch.float32).max, "float16": 65504.0,
                 "bfloat16": torch.finfo(torch.bfloat16).max}


def default_writer_threads(device: torch.device, cpu_count: int, torch_threads: int,
                           loader_workers: int) -> tuple[int, bool]:
    """(encoder threads, overlap) for a teacher on ``device``: every core the teacher leaves free
    encodes beside it; a CPU teacher with no core to spare pauses while all cores encode."""
    if device.type != "cpu":
        return max(1, cpu_count - 1 - loader_workers), True  # one core runs the loop and feeds the device
    free = cpu_count - torch_threads - loader_workers
    return (free, True) if free >= 1 else (max(1, cpu_count), False)


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """The same values as a contiguous view where the memory is dense in another order (channels_last):
    a reduction over every element runs 8x faster on it than through the strided layout (measured)."""
    if tensor.is_contiguous():
        return tensor
    view = tensor.permute(sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d)))
    return view if view.is_contiguous() else tensor


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor's memory as the numpy array a store keeps (bfloat16 as its uint16 bits)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


class ShardBuffers:
    """Host buffers of whole shards, recycled: pinned when the teacher runs on a CUDA device."""

    def __init__(self, specs: Sequence[ArraySpec], shard_rows: int, pin: bool) -> None:
        self.specs, self.shard_rows, self.pin = list(specs), shard_rows, pin
        self._free: list[dict[str, torch.Tensor]] = []
        self._lock = threading.Lock()

    def take(self) -> dict[str, torch.Tensor]:
        with self._lock:
            if self._free:
                return self._free.pop()
        return {s.name: torch.empty((self.shard_rows, *s.row_shape), dtype=_TORCH_DTYPE[s.dtype], pin_memory=self.pin)
                for s in self.specs}

    def give_back(self, buffers: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._free.append(buffers)


class WriterPool:
    """Encodes and writes whole shards on ``threads`` encoder threads, up to ``threads + 1`` shards
    at once (one with ``overlap`` off), and commits their ledger entries in the order of ``order``.

    The first failure stops it: shards before the failed one still commit, those after it do not (a
    resume extracts them again), and ``raise_if_failed`` raises it in the loop's thread as one clear error."""

    def __init__(self, writer: StoreWriter, threads: int, overlap: bool, order: Sequence[int]) -> None:
        self.writer, self.overlap = writer, overlap
        self.encoder = ThreadPoolExecutor(threads, thread_name_prefix="litcache-encode")
        in_flight = threads + 1 if overlap else 1
        self._shards = ThreadPoolExecutor(in_flight, thread_name_prefix="litcache-shard")
        self._slots = threading.Semaphore(in_flight)
        self._position = {shard: k for k, shard in enumerate(order)}
        self._committed = 0  # how many shards of ``order`` are committed: always a prefix
        self._turn = threading.Condition()
        self._futures: list[Future] = []
        self.error: BaseException | None = None
        self.failed_shard: int | None = None

    def put(self, shard: int, start: int, data: dict[str, np.ndarray], done: Callable[[], None] = lambda: None,
            fill: dict[str, Callable[[int, int], None]] | None = None) -> None:
        """Queue shard ``shard`` (rows from ``start``); ``done`` runs when the pool is through with ``data``;
        ``fill``: see ``StoreWriter.write_shard``."""
        while not self._slots.acquire(timeout=0.2):
            self.raise_if_failed()
        try:
            self.raise_if_failed()
        except BaseException:
            self._slots.release()
            raise
        future = self._shards.submit(self._write, shard, start, data, done, fill)
        self._futures.append(future)
        if not self.overlap:
            future.result()
            self.raise_if_failed()

    def _write(self, shard: int, start: int, data: dict[str, np.ndarray], done: Callable[[], None],
               fill: dict[str, Callable[[int, int], None]] | None) -> None:
        try:
            if not self._behind_failure(shard):  # after a failure, nothing after it is written
                self.writer.write_shard(shard, start, data, encoder=self.encoder,
                                        before_commit=lambda: self._wait_turn(shard), fill=fill)
                with self._turn:
                    self._committed += 1
                    self._turn.notify_all()
        except BaseException as exc:  # raised in the loop's thread by raise_if_failed
            with self._turn:
                if self.error is None:
                    self.error, self.failed_shard = exc, shard
                self._turn.notify_all()
        finally:
            done()
            self._slots.release()

    def _wait_turn(self, shard: int) -> None:
        """Return when every shard before ``shard`` is committed; raise if one of them failed (a failure
        after it does not stop it: the ledger stays a prefix either way)."""
        position = self._position[shard]
        with self._turn:
            while self._committed != position:
                if self._behind_failure(shard):
                    raise _Abandoned()
                self._turn.wait()

    def _behind_failure(self, shard: int) -> bool:
        return self.error is not None and self._position[self.failed_shard] < self._position[shard]

    def finish(self) -> None:
        """Wait for every queued shard (after an error elsewhere too: queued shards are whole and
        checked, so they commit), then stop the threads. Calling it again does nothing more."""
        for future in self._futures:
            future.result()  # _write never raises
        self._shards.shutdown()
        self.encoder.shutdown()

    def raise_if_failed(self) -> None:
        """Raise the pool's failure, if any, once every shard in flight has committed or given up, so
        the error counts the shards kept as they are."""
        exc = self.error
        if exc is None:
            return
        self.finish()
        if not isinstance(exc, Exception):  # KeyboardInterrupt: the command's "interrupted" message
            raise exc
        if isinstance(exc, OSError) and is_disk_full(exc):  # counted again: shards before it committed since
            raise self.writer.disk_full_error(self.failed_shard) from (exc.__cause__ or exc)
        if isinstance(exc, LitcacheError):
            raise exc
        done = len(self.writer.committed())
        raise ShardWriteError(
            f"The shard writer failed on shard {self.failed_shard} of store {str(self.writer.path)!r} "
            f"({type(exc).__name__}: {exc}). The {done} shards committed so far are kept; run the same command "
            "with --resume to finish the store."
        ) from exc


class _Abandoned(Exception):
    """A shard not committed because one before it failed."""


@dataclass
class _Batch:
    """A batch staged into its shard's buffers, not yet retired."""

    shard: int
    row0: int  # the store row of its first row
    at: int  # its first row within the shard
    rows: int
    buffers: dict[str, torch.Tensor]  # its shard's
    fields: dict[str, torch.Tensor]  # as the teacher computed them: named from on a failed check
    sent: dict[str, torch.Tensor]  # what is being copied to the host (cast on a GPU): alive until it is done
    flags: torch.Tensor  # (boundaries + 1,) bool on the host: each boundary within range, the logits finite
    event: "torch.cuda.Event | None"
    ends_shard: bool
    deferred: list[tuple[int, dict[str, torch.Tensor]]]  # its shard's batches not copied yet (deferred copies)


@dataclass
class _OpenShard:
    index: int
    start: int
    stop: int
    buffers: dict[str, torch.Tensor]
    filled: int = 0
    batches: list[tuple[int, dict[str, torch.Tensor]]] = field(default_factory=list)  # deferred: (first row, fields)


class ShardSink:
    """Batches of teacher outputs in, whole shards out to a ``WriterPool``. ``pending``: the shards
    to extract, in the order their rows arrive; ``ranges``: every shard's (start, stop) rows."""

    def __init__(self, pool: WriterPool, specs: Sequence[ArraySpec], ranges: Sequence[tuple[int, int]],
                 pending: Sequence[int], device: torch.device, dtype: str, keep_bits: int | None,
                 rows_dataset: ViewRows, deferred: bool | None = None) -> None:
        self.pool, self.ranges, self.dtype, self.keep_bits = pool, ranges, dtype, keep_bits
        self.rows_dataset = rows_dataset
        # None: the encoder threads cast a CPU teacher's outputs; a GPU teacher's are cast on the device.
        self.deferred = device.type == "cpu" if deferred is None else deferred
        if self.deferred and device.type != "cpu":
            raise ValueError(f"Deferred copies read the teacher's outputs on the host; the teacher runs on {device}.")
        shard_rows = max(stop - start for start, stop in ranges)
        self.buffers = ShardBuffers(specs, shard_rows, pin=device.type == "cuda")
        self.boundaries = [s.name for s in specs if s.name.startswith("boundaries/")]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # Above this magnitude a value may become Inf in the storage dtype (rounding up to fewer bits included).
        self.limit = _FINITE_LIMIT[dtype] * (1 - 2.0 ** -((keep_bits or MANTISSA_BITS[dtype]) + 1))
        self._shards = iter(pending)
        self._open: _OpenShard | None = None
        self._staged: _Batch | None = None

    def add(self, fields: dict[str, torch.Tensor], host: dict[str, torch.Tensor]) -> None:
        """Stage one batch: ``fields`` as the teacher computed them (any device), ``host`` the
        loader's per-row fields (labels, source_index, view, view_params). Never straddles shards."""
        if self._open is None:
            index = next(self._shards)
            start, stop = self.ranges[index]
            self._open = _OpenShard(index, start, stop, self.buffers.take())
        shard = self._open
        rows = len(next(iter(host.values())))
        at = shard.filled
        # One reduction per boundary (NaN fails the comparison too); the rows are named only on failure.
        checks = [torch.maximum(-low, high) <= self.limit
                  for low, high in (torch.aminmax(_dense(fields[name])) for name in self.boundaries)]
        # The logits, or the top k of them (a NaN or Inf among a row's logits is among its largest: topk
        # sorts NaN first).
        logits = next((name for name in ("logits", "topk_values") if name in fields), None)
        if logits is not None:
            checks.append(torch.isfinite(fields[logits]).all())
        within = torch.stack(checks) if checks else torch.ones(0, dtype=torch.bool)
        if self.stream is not None:
            # Cast on the device, to the buffers' dtype and layout: the copy to the host is then a plain DMA
            # of half the bytes (torch would convert a cross-device copy on the CPU). On the CPU one copy_
            # casts as it copies.
            sent = {name: value.to(dtype=shard.buffers[name].dtype, memory_format=torch.contiguous_format)
                    for name, value in fields.items()}
        else:
            sent = fields
        event = None
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            if self.stream is not None:
                self.stream.wait_stream(torch.cuda.current_stream(self.stream.device))
            if self.deferred:  # the encoder threads copy them (see _fill)
                shard.batches.append((at, fields))
            else:
                for name, value in sent.items():
                    shard.buffers[name][at:at + rows].copy_(value, non_blocking=True)  # casts as it copies
            flags = within.to("cpu", non_blocking=True)
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        for name, value in host.items():
            shard.buffers[name][at:at + rows].copy_(value)
        shard.filled += rows
        ends = shard.filled == shard.stop - shard.start
        staged = _Batch(shard.index, shard.start + at, at, rows, shard.buffers, fields, sent, flags, event, ends,
                        shard.batches)
        self._retire()
        self._staged = staged
        if ends:
            self._open = None

    def close(self) -> None:
        """Retire the last batch (its shard goes to the pool)."""
        self._retire()

    def _retire(self) -> None:
        batch, self._staged = self._staged, None
        if batch is None:
            return
        if batch.event is not None:
            batch.event.synchronize()
        if not bool(batch.flags.all()):
            self._name_bad_rows(batch)
        buffers = batch.buffers
        if self.keep_bits is not None and not self.deferred:
            for name in self.boundaries:  # lossy: round each value to keep_bits mantissa bits, in place
                round_mantissa(_numpy(buffers[name][batch.at:batch.at + batch.rows]), self.dtype, self.keep_bits)
        if batch.ends_shard:
            start, stop = self.ranges[batch.shard]
            data = {name: _numpy(buffer[: stop - start]) for name, buffer in buffers.items()}
            fill = ({name: functools.partial(self._fill, name, buffers[name], batch.deferred) for name in batch.fields}
                    if self.deferred else None)
            self.pool.put(batch.shard, start, data, done=lambda: self.buffers.give_back(buffers), fill=fill)

    def _fill(self, name: str, buffer: torch.Tensor, batches: list[tuple[int, dict[str, torch.Tensor]]],
              start: int, stop: int) -> None:
        """Copy (and cast) rows ``start:stop`` of field ``name`` from the teacher's batches into its shard
        buffer; on an encoder thread, just before those rows are encoded."""
        for at, fields in batches:
            value = fields[name]
            lo, hi = max(start, at), min(stop, at + len(value))
            if lo < hi:
                buffer[lo:hi].copy_(value[lo - at:hi - at])
        if self.keep_bits is not None and name in self.boundaries:  # lossy: keep_bits mantissa bits, in place
            round_mantissa(_numpy(buffer[start:stop]), self.dtype, self.keep_bits)

    def _name_bad_rows(self, batch: _Batch) -> None:
        """Raise the error naming the first rows out of range; values finite in the storage dtype pass."""
        for i, name in enumerate(self.boundaries):
            z = batch.fields[name]
            if not bool(batch.flags[i]):
                check_finite(f"boundary {i}", z, batch.row0, self.rows_dataset, self.dtype)
                check_finite(f"boundary {i} (as {self.dtype})",
                             from_storage(to_storage(z, self.dtype, self.keep_bits), self.dtype), batch.row0,
                             self.rows_dataset, self.dtype)
        for name in ("logits", "topk_values"):
            if name in batch.fields:
                check_finite(name.replace("topk_values", "largest logits"), batch.fields[name], batch.row0,
                             self.rows_dataset, self.dtype)
