"""Dask: a client of a local or existing cluster, and the parallel half of `litcache extract`
(workers extract disjoint runs of whole shards into one store). `litcache sweep` runs its
training tasks on the same clients. Tasks are module-level functions of picklable arguments: a
recipe travels by its source path, since recipe modules exist only in the process that loaded them."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..errors import IncompleteStoreError, OptionError, StoreMismatchError
from ..recipe import load_recipe
from ..runtime.devices import resolve_device
from ..store.arrays import StoreWriter, read_ledger, shard_ranges
from ..store.location import StoreLocation
from .loop import run_pending
from .plan import ExtractOptions, ExtractPlan, identity_diff, plan_extraction

__all__ = ["dask_client", "check_parallel_options", "portable_path", "extract_task", "run_distributed"]


@contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator["object"]:
    """A dask client: of the cluster at ``scheduler``, or of a new LocalCluster of ``workers``
    single-threaded processes (default: one per core). Closed (and the cluster stopped) on exit."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as exc:  # unreachable, or not an address
            raise OptionError(f"Expected a running dask scheduler at --scheduler {scheduler!r}, could not "
                              f"connect: {exc}.") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    # dask starts its workers with MALLOC_TRIM_THRESHOLD_ set, which also turns off glibc's adaptive
    # mmap threshold: every large torch tensor becomes a fresh mmap, and one MNIST training epoch
    # took 2.2x as long as in this process. Keep dask's other variables (one thread for OpenMP etc.).
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    # The scheduler's HTTP server (and dashboard, with bokeh) on any free port: 8787 may be taken.
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), \
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def check_parallel_options(workers: int | None, scheduler: str | None) -> None:
    if workers is not None and scheduler:
        raise OptionError("Give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both.")
    if workers is not None and workers < 1:
        raise OptionError(f"Expected --workers >= 1, got {workers} instead.")


def portable_path(path: str) -> str:
    """Workers may run in another directory: give them absolute paths."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def extract_task(recipe_source: str, options: ExtractOptions, checkpoint: str, store: str, shards: list[int],
                 background_writer: bool | None = None, writer_threads: int | None = None) -> tuple[float, int]:
    """A dask worker's part of a distributed extraction: the given whole shards, written and committed."""
    torch.set_num_threads(1)  # one core per worker; on CPU ResNets 1 and 2 threads store the same bytes (measured)
    recipe = load_recipe(recipe_source)
    # Dask worker processes are daemons, which may not start DataLoader worker processes.
    plan = plan_extraction(recipe, replace(options, loader_workers=0), checkpoint)
    writer = StoreWriter.reopen(store)
    diff = identity_diff(writer.manifest.identity, plan.identity, plan.recipe)
    if diff:  # e.g. a worker on another machine with other data or another teacher file
        raise StoreMismatchError(f"A dask worker sees another recipe, teacher or data than store {store!r} was started "
                                 f"with ({'; '.join(diff)}). Give every worker the same files.")
    ranges = shard_ranges(plan.rows, plan.shard_rows)
    return run_pending(plan, writer, ranges, shards, resolve_device(options.device), False, background_writer,
                       writer_threads)


def _span(shards: list[int]) -> str:
    return f"{shards[0]}-{shards[-1]}" if len(shards) > 1 else str(shards[0])


def run_distributed(plan: ExtractPlan, out: StoreLocation, pending: list[int], client, log: Callable[[str], None],
                    background_writer: bool | None = None, writer_threads: int | None = None) -> tuple[float, int]:
    """Split the pending shards into one contiguous run per dask worker thread and extract them
    there. Zarr writers in several processes are safe on distinct whole shards only, which is all
    ``run_pending`` ever writes. Returns (teacher seconds summed over workers, rows extracted)."""
    from distributed import as_completed

    if not pending:
        return 0.0, 0
    args = (portable_path(plan.recipe.source), plan.options, str(Path(plan.checkpoint).resolve()),
            out.url if out.remote else str(out.path.resolve()))
    teacher_seconds, rows_done, failures = 0.0, 0, []
    slots = max(1, sum(client.nthreads().values()))
    runs = [run.tolist() for run in np.array_split(np.array(pending), min(slots, len(pending)))]
    log(f"extracting {len(pending)} shards on {len(runs)} dask workers: shards " + ", ".join(map(_span, runs)))
    futures = {client.submit(extract_task, *args, run, background_writer, writer_threads, pure=False): run
               for run in runs}
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
            f"Extraction into {str(out)!r} did not finish: {'; '.join(failures)}. The {done} of {total} shards "
            "committed are kept; fix the cause and run the same command with --resume to finish it."
        )
    return teacher_seconds, rows_done
