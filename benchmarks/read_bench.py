"""Reading a store as train-blocks does, against what a student consumes.

    python benchmarks/read_bench.py --store runs/cifar/train.zarr --batch-size 128 --workers 0,2 \
        --demand-json benchmarks/results/speed.json

The loader of `train-blocks` (StoreDataset + ChunkShuffleSampler + DataLoader, every boundary, the
logits and labels) reads the store for one epoch with nothing else running: rows/s and GB/s of
decoded (raw) bytes, at each --workers. The demand is what a student step consumes, the rows/s of
the train-blocks case in a speed_bench.py JSON (--demand-json) times the bytes per row; a ratio of
reading over demand above 1 keeps the student fed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from litcache import ChunkShuffleSampler, StoreDataset, open_store
from litcache.training.dataset import make_loader


def read_epoch(store_path: str, batch_size: int, workers: int) -> tuple[float, int]:
    """(seconds, rows) of one epoch of the train-blocks loader over every array a LIT run reads."""
    store = open_store(store_path)
    fields = [*store.boundary_names, "logits", "labels"]
    fields = [f for f in fields if f in store.manifest.arrays]
    dataset = StoreDataset(store, fields, cache_chunks=10)
    sampler = ChunkShuffleSampler.for_store(store, batch_size, buffer_chunks=4, num_workers=workers)
    t, rows = time.perf_counter(), 0
    for batch in make_loader(dataset, sampler, num_workers=workers):
        rows += len(batch["labels"])
    return time.perf_counter() - t, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", default="0", help="comma-separated DataLoader worker counts")
    p.add_argument("--demand-json", default=None, help="a speed_bench.py JSON with a train-blocks case")
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args()
    store = open_store(args.store)
    arrays = store.manifest.arrays
    read = [*store.boundary_names, "logits", "labels"]
    bytes_per_row = sum(arrays[name].raw_bytes(1) for name in read if name in arrays)
    demand = None
    if args.demand_json:
        cases = json.loads(Path(args.demand_json).read_text())["results"]
        lit = [c for c in cases if c["case"].startswith("train-blocks")]
        demand = lit[0]["litcache_rows_per_s"] if lit else None
    results = []
    for workers in (int(w) for w in args.workers.split(",")):
        read_epoch(args.store, args.batch_size, workers)  # warm: the page cache holds the store, as in a run
        seconds, rows = read_epoch(args.store, args.batch_size, workers)
        rate = rows / seconds
        line = (f"read {args.store}: {workers} loader workers: {rate:,.0f} rows/s, "
                f"{rate * bytes_per_row / 1e9:.2f} GB/s decoded")
        if demand:
            line += f"; the student consumes {demand:,.0f} rows/s ({demand * bytes_per_row / 1e9:.2f} GB/s): " \
                    f"reading / demand = {rate / demand:.2f}"
        print(line, flush=True)
        results.append({"workers": workers, "rows_per_s": rate, "gb_per_s": rate * bytes_per_row / 1e9,
                        "demand_rows_per_s": demand})
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"bytes_per_row": bytes_per_row, "results": results}, indent=2))


if __name__ == "__main__":
    main()
