"""The extraction writer alone: the teacher's outputs replayed from memory, so the teacher costs nothing.

    python benchmarks/writer_bench.py --cifar-dir runs/data/cifar10-jpeg \
        --teacher ../shared/teachers/cifar10_resnet56.pt --rows 8192

The rows are real: the recipe's views of real images through the real teacher, computed once
before any timing and kept in memory as the teacher returned them (float32 tensors). Then, side by
side in one run, repeated in rotated order (medians of --repeats):

  litcache     ShardSink + WriterPool into a real store (cast and copy into shard buffers, finite
               checks, encode, shard files, fsync, checksums, ledger entries, the final manifest),
               at 1 encoder thread and at each of --threads
  bare         the same bytes, cast beforehand: numcodecs' encode of every chunk, then a plain
               file write and fsync of each array's shard at the store's path for it, no litcache
               code; one thread, and the same on a pool of threads (the fastest plain loop here)
  bare+cast    with the teacher's float32 outputs (--fields teacher): the same, each job first
               casting its shard's batches into a reused buffer (the same work as litcache's)

  writer ratio = litcache at 1 thread / bare at 1 thread       (target <= 1.10)
                 and / bare+cast at 1 thread (the same work, where the writer must cast)
  scaling      = litcache rows/s at N threads / at 1 thread   (target >= 1.8 at 2 threads)

Each thread count runs with the loop overlapping the encoders (as with a GPU teacher). Ratios are
medians of each repeat's own ratio (the kinds of a repeat run back to back), and every run's store is
removed before the next. ``--dir /dev/shm`` takes the disk out (the CPU work alone); ``--fields
device-cast`` replays what a GPU teacher hands the host (fields already cast on the device). The
per-row split times each stage alone on the same rows, one thread, in the old way (litcache 0.2:
``to_storage``, a fresh shard buffer per shard, ``abs().amax()``) and the new one; also printed: each
codec at 1 and 2 threads (do they release the GIL?), a projection to 16 cores, and with
``--storage-table`` bytes per row and one thread's encode rate per dtype, codec and ``--keep-bits``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import xxhash

from litcache import ExtractOptions, load_recipe
from litcache.extraction.loop import shard_batches, views_on_device
from litcache.extraction.plan import plan_extraction
from litcache.extraction.run import _initial_manifest
from litcache.extraction.teacher_outputs import teacher_fields
from litcache.extraction.writer import _TORCH_DTYPE, ShardSink, WriterPool, _dense
from litcache.runtime.files import write_atomic
from litcache.store.arrays import StoreWriter, open_store, shard_ranges
from litcache.store.encoding import to_storage

REPO = Path(__file__).resolve().parents[1]


def capture(plan) -> list[tuple[dict, dict, torch.Tensor, torch.Tensor]]:
    """Every batch of the store as the loop sees it: (teacher fields, host fields, raw inputs, view params)."""
    o = plan.options
    rows = plan.rows_dataset
    batches = []
    on_device = views_on_device(rows)
    with torch.inference_mode():
        for start, stop in shard_ranges(plan.rows, plan.shard_rows):
            for batch in shard_batches(start, stop, o.batch_size):
                x, y, index, view, params = rows.get_batch(batch, apply_views=not on_device)
                raw = x
                if on_device:
                    x = rows.augment.apply_batch(x, params)
                outs, logits = plan.sectioned.boundaries(plan.compute.input(x))
                host = {"labels": y, "source_index": index, "view": view}
                if rows.num_params:
                    host["view_params"] = params
                batches.append((teacher_fields(outs, logits, y, o.logit_topk), host, raw, params))
    return batches


def litcache_writer(plan, batches, out: Path, threads: int, overlap: bool, deferred: bool = True) -> float:
    """Seconds to write the captured batches into a new store through litcache's writer; ``deferred``:
    the encoder threads cast the fields (a CPU teacher's path), else the loop copies them (a GPU's)."""
    ranges = shard_ranges(plan.rows, plan.shard_rows)
    pending = list(range(len(ranges)))
    t = time.perf_counter()
    writer = StoreWriter.create(out, _initial_manifest(plan), plan.specs, plan.options.codec, {})
    pool = WriterPool(writer, threads, overlap, pending)
    sink = ShardSink(pool, plan.specs, ranges, pending, torch.device("cpu"), plan.options.dtype,
                     plan.options.keep_bits, plan.rows_dataset, deferred=deferred)
    try:
        for fields, host, _, _ in batches:
            sink.add(fields, host)
        sink.close()
    finally:
        pool.finish()
    pool.raise_if_failed()
    writer.finalize()
    return time.perf_counter() - t


def storage_arrays(plan, batches) -> list[dict[str, np.ndarray]]:
    """Each shard's arrays as stored (cast beforehand: the bare writer gets the very bytes litcache writes)."""
    o = plan.options
    per_name: dict[str, list[np.ndarray]] = {}
    for fields, host, _, _ in batches:
        for name, value in fields.items():
            array = (to_storage(value, o.dtype, o.keep_bits) if name.startswith("boundaries/")
                     else to_storage(value, "float32") if value.is_floating_point() else value.numpy())
            per_name.setdefault(name, []).append(array)
        for name, value in host.items():
            per_name.setdefault(name, []).append(value.numpy())
    whole = {name: np.concatenate(parts) for name, parts in per_name.items()}
    return [{name: whole[name][a:b] for name in whole} for a, b in shard_ranges(plan.rows, plan.shard_rows)]


def teacher_pieces(plan, batches) -> list[dict[str, list[tuple[int, torch.Tensor]]]]:
    """Per shard, each teacher field's batches as the teacher returned them: (first row in the shard, tensor)."""
    shards, row = [], 0
    ranges = shard_ranges(plan.rows, plan.shard_rows)
    for fields, host, _, _ in batches:
        k = next(i for i, (a, b) in enumerate(ranges) if a <= row < b)
        while len(shards) <= k:
            shards.append({})
        for name, value in fields.items():
            shards[k].setdefault(name, []).append((row - ranges[k][0], value))
        row += len(host["labels"])
    return shards


def _encode_chunks(compressor, array: np.ndarray, chunk_rows: int) -> list:
    chunks = [np.ascontiguousarray(array[i:i + chunk_rows]) for i in range(0, len(array), chunk_rows)]
    return [c.tobytes() if compressor is None else compressor.encode(c) for c in chunks]


def bare_writer(shards: list[dict[str, np.ndarray]], compressors: dict, chunk_rows: int, folder: Path,
                threads: int, cast_from: list[dict[str, list[tuple[int, torch.Tensor]]]] | None = None) -> float:
    """Seconds for a plain loop: encode every chunk (on ``threads`` threads), write each array's shard
    file and fsync it, at the path the store gives that shard (Zarr's nested chunk keys,
    ``boundaries/1/c/3/0/0/0``: a file in new folders costs the file system more than in a flat one,
    and that cost is the format's, not litcache's). With ``cast_from`` (``teacher_pieces``), each job
    first casts the teacher's outputs of its shard into a buffer of its thread's (one ``copy_`` per
    batch, the fastest plain cast): the same work as a writer handed a CPU teacher's float32 outputs."""
    from concurrent.futures import ThreadPoolExecutor

    from litcache.store.shards import ShardFormat

    folder.mkdir(parents=True, exist_ok=True)
    local = threading.local()
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        def one(k: int, name: str, array: np.ndarray) -> None:
            if cast_from is not None and name in cast_from[k]:
                buffers = local.__dict__.setdefault("buffers", {})
                key = (name, array.shape, array.dtype)
                if key not in buffers:
                    buffers[key] = torch.from_numpy(np.empty_like(array))
                for at, value in cast_from[k][name]:
                    buffers[key][at:at + len(value)].copy_(value)
                array = buffers[key].numpy()
            encoded = _encode_chunks(compressors[name], array, chunk_rows)
            path = folder / ShardFormat.shard_key(name, k, array.ndim)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                for chunk in encoded:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())

        list(pool.map(lambda job: one(*job), [(k, n, a) for k, shard in enumerate(shards) for n, a in shard.items()]))
    return time.perf_counter() - t


def codec_throughput(shards: list[dict[str, np.ndarray]], chunk_rows: int) -> dict[str, dict[str, float]]:
    """Each codec on the boundaries' chunks: encode MB/s (raw) at 1 and 2 threads, and the compression
    ratio. Near 2x at 2 threads means the codec releases the GIL (threads scale; no processes needed)."""
    from concurrent.futures import ThreadPoolExecutor

    from litcache.store.encoding import CODECS, numcodecs_compressor

    chunks = [np.ascontiguousarray(a[i:i + chunk_rows]) for s in shards for n, a in s.items()
              if n.startswith("boundaries/") for i in range(0, len(a), chunk_rows)]
    raw = sum(c.nbytes for c in chunks)
    figures = {}
    for codec in CODECS:
        compressor = numcodecs_compressor(codec)
        if compressor is None:
            continue
        rates = {}
        for threads in (1, 2):
            with ThreadPoolExecutor(threads) as pool:
                t = time.perf_counter()
                encoded = list(pool.map(compressor.encode, chunks))
                rates[threads] = raw / (time.perf_counter() - t) / 1e6
        figures[codec] = {"mb_per_s_1": rates[1], "mb_per_s_2": rates[2],
                          "ratio": raw / sum(len(e) for e in encoded)}
    return figures


#: The rows of benchmarks/README's bytes-per-row table: (dtype, codec, keep bits).
STORAGE_TABLE = [("float32", "zstd", None), ("float32", "lz4", None), ("float16", "zstd", None),
                 ("float16", "lz4", None), ("float16", "none", None), ("bfloat16", "zstd", None),
                 ("float16", "zstd", 7), ("float16", "zstd", 5), ("float16", "zstd", 3)]


def storage_table(plan, batches) -> list[dict]:
    """Per (dtype, codec, keep bits): boundary bytes per row as stored, and one thread's encode rate
    (MB/s of the stored dtype's raw bytes, and rows/s) on these rows."""
    from litcache.store.encoding import numcodecs_compressor

    names = [s.name for s in plan.specs if s.name.startswith("boundaries/")]
    rows, table = plan.rows, []
    for dtype, codec, keep_bits in STORAGE_TABLE:
        arrays = [to_storage(fields[n], dtype, keep_bits) for fields, *_ in batches for n in names]
        chunks = [np.ascontiguousarray(a[i:i + plan.options.chunk_rows]) for a in arrays
                  for i in range(0, len(a), plan.options.chunk_rows)]
        compressor = numcodecs_compressor(codec)
        t = time.perf_counter()
        encoded = [c.tobytes() if compressor is None else compressor.encode(c) for c in chunks]
        seconds = time.perf_counter() - t
        raw = sum(c.nbytes for c in chunks)
        table.append({"dtype": dtype, "codec": codec, "keep_bits": keep_bits,
                      "bytes_per_row": sum(len(e) for e in encoded) / rows, "encode_mb_per_s": raw / seconds / 1e6,
                      "encode_rows_per_s": rows / seconds})
    return table


def per_row_split(plan, batches, shards, compressors, folder: Path) -> dict[str, dict[str, float]]:
    """Milliseconds per row of each stage alone, one thread: the old way and the new one."""
    o = plan.options
    rows = plan.rows
    names = [s.name for s in plan.specs if s.name.startswith("boundaries/")]

    def ms(fn) -> float:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) / rows * 1e3

    def views():
        if views_on_device(plan.rows_dataset):
            for _, _, raw, params in batches:
                plan.rows_dataset.augment.apply_batch(raw, params)

    def old_cast_copy():
        buffers, filled = None, 0
        for fields, host, _, _ in batches:
            if buffers is None or filled == plan.shard_rows:
                buffers, filled = {n: np.empty((plan.shard_rows, *fields[n].shape[1:]), np.float16) for n in names}, 0
            n = len(host["labels"])
            for name in names:
                buffers[name][filled:filled + n] = to_storage(fields[name], o.dtype, o.keep_bits)
            filled += n

    reused = {n: torch.empty((plan.shard_rows, *batches[0][0][n].shape[1:]), dtype=torch.float16) for n in names}

    def new_cast_copy():
        filled = 0
        for fields, host, _, _ in batches:
            filled = 0 if filled == plan.shard_rows else filled
            n = len(host["labels"])
            for name in names:
                reused[name][filled:filled + n].copy_(fields[name])
            filled += n

    def encode():
        for shard in shards:
            for name, array in shard.items():
                _encode_chunks(compressors[name], array, o.chunk_rows)

    encoded = [{name: _encode_chunks(compressors[name], a, o.chunk_rows) for name, a in shard.items()}
               for shard in shards]

    def write(sync: bool):
        for k, shard in enumerate(encoded):
            for name, chunks in shard.items():
                with open(folder / f"{name.replace('/', '-')}.{k}", "wb") as f:
                    for chunk in chunks:
                        f.write(chunk)
                    if sync:
                        f.flush()
                        os.fsync(f.fileno())

    def ledger():
        for k in range(len(shards)):
            write_atomic(folder / f"entry-{k}.json", json.dumps({"index": k, "xxh3_64": {}}).encode())

    folder.mkdir(parents=True, exist_ok=True)
    common = {
        "views (crop + flip)": ms(views),
        "encode": ms(encode),
        "checksums (xxh3)": ms(lambda: [xxhash.xxh3_64_hexdigest(a) for s in shards for a in s.values()]),
        "write": ms(lambda: write(False)),
    }
    common["fsync"] = max(0.0, ms(lambda: write(True)) - common["write"])
    common["ledger entries"] = ms(ledger)
    return {
        "old": {**common, "cast + copy": ms(old_cast_copy),
                "finite check": ms(lambda: [fields[n].abs().amax() for fields, *_ in batches for n in names])},
        "new": {**common, "cast + copy": ms(new_cast_copy),
                "finite check": ms(lambda: [torch.aminmax(_dense(fields[n]))
                                            for fields, *_ in batches for n in names])},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=str(REPO / "pipelines" / "cifar10_resnet.py"))
    p.add_argument("--cifar-dir", default=None, help="sets LITCACHE_CIFAR10_DIR")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (the recipe's depth must match)")
    p.add_argument("--depth", default="56", help="LITCACHE_CIFAR_TEACHER for the CIFAR recipe")
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--codec", default="zstd", choices=("zstd", "lz4", "none"))
    p.add_argument("--threads", default="2", help="comma-separated encoder thread counts besides 1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fields", choices=("teacher", "device-cast"), default="teacher",
                   help="replay the teacher's float32 outputs (a CPU teacher: the encoder threads cast them), or the "
                        "same already cast to the storage dtype (what a GPU teacher hands the host)")
    p.add_argument("--storage-table", action="store_true",
                   help="also bytes/row and one thread's encode rate per dtype, codec and --keep-bits")
    p.add_argument("--dir", default=None, help="where the stores are written (default: a temporary folder here)")
    p.add_argument("--json", dest="json_out", default=None)
    args = p.parse_args()
    if args.cifar_dir:
        os.environ["LITCACHE_CIFAR10_DIR"] = str(Path(args.cifar_dir).resolve())
    os.environ.setdefault("LITCACHE_CIFAR_TEACHER", args.depth)
    recipe = load_recipe(args.recipe)
    options = ExtractOptions(views=args.views, limit=-(-args.rows // args.views), dtype=args.dtype, codec=args.codec,
                             device="cpu")
    plan = plan_extraction(recipe, options, args.teacher)
    batches = capture(plan)
    shards = storage_arrays(plan, batches)
    if args.fields == "device-cast":
        # What a GPU teacher hands the host: each field already cast on the device to its storage dtype,
        # contiguous (ShardSink casts there, then copies). The loop thread is left a plain copy per field.
        dtypes = {s.name: s.dtype for s in plan.specs}
        replay = [({n: v.to(dtype=_TORCH_DTYPE[dtypes[n]], memory_format=torch.contiguous_format)
                    for n, v in fields.items()}, host, raw, params) for fields, host, raw, params in batches]
    else:
        replay = batches  # the split and the storage table below always start from the teacher's outputs
    # From here torch runs only the loop thread's casts and checks (with a GPU teacher they run on the
    # device): one thread, so torch's idle threads do not spin on the cores the encoders need.
    torch.set_num_threads(1)
    raw_bytes = sum(a.nbytes for s in shards for a in s.values())
    thread_counts = [1] + [int(t) for t in args.threads.split(",") if int(t) != 1]
    base = Path(args.dir) if args.dir else REPO / "runs"
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="litcache-writer-", dir=base) as tmp:
        tmp = Path(tmp)
        deferred = args.fields == "teacher"
        litcache_writer(plan, replay, tmp / "warm.zarr", 1, True, deferred)  # warm-up; also gives the codecs
        store = open_store(tmp / "warm.zarr")
        compressors = {name: store.shard_format(name).compressor for name in shards[0]}
        pieces = teacher_pieces(plan, replay) if args.fields == "teacher" else None
        bare_kinds = ["bare", "bare+cast"] if pieces else ["bare"]
        kinds = [("litcache", t) for t in thread_counts] + [(b, t) for b in bare_kinds for t in thread_counts]
        runs: dict[str, list[float]] = {f"{k} {t}": [] for k, t in kinds}
        for i in range(args.repeats):
            for kind, threads in kinds[i % len(kinds):] + kinds[:i % len(kinds)]:
                out = tmp / f"{kind}-{threads}-{i}"
                seconds = (litcache_writer(plan, replay, out.with_suffix(".zarr"), threads, True, deferred)
                           if kind == "litcache" else
                           bare_writer(shards, compressors, options.chunk_rows, out, threads,
                                       pieces if kind == "bare+cast" else None))
                runs[f"{kind} {threads}"].append(seconds)
                # Every run starts from the same disk: no store of an earlier run left to fill it.
                shutil.rmtree(out.with_suffix(".zarr") if kind == "litcache" else out)
        split = per_row_split(plan, batches, shards, compressors, tmp / "split")
    throughput = codec_throughput(shards, options.chunk_rows)
    storage = storage_table(plan, batches) if args.storage_table else []
    med = {k: statistics.median(v) for k, v in runs.items()}
    rows = plan.rows
    print(f"writer alone: {rows} rows of {plan.bytes_per_row:,} bytes ({raw_bytes / 1e6:.0f} MB), "
          f"{args.dtype}+{args.codec}, fields as {args.fields}, {os.cpu_count()} cores, "
          f"torch {torch.backends.cpu.get_cpu_capability()}, median of {args.repeats}")
    for key, seconds in med.items():
        print(f"   {key:12s} thread(s): {rows / seconds:9,.0f} rows/s  {raw_bytes / seconds / 1e6:7.0f} MB/s raw")
    # Each repeat runs every kind back to back: its litcache / bare ratio shares the machine's state of the
    # moment, so the median of those ratios is steadier than the ratio of medians on a noisy box.
    paired = [lc / bare for lc, bare in zip(runs["litcache 1"], runs["bare 1"])]
    ratio = statistics.median(paired)
    print(f"   writer ratio litcache / bare at 1 thread = {ratio:.3f} (median of the repeats' ratios "
          f"{', '.join(f'{r:.2f}' for r in paired)}; of the medians {med['litcache 1'] / med['bare 1']:.3f}); "
          "target <= 1.10")
    cast_ratio = None
    if "bare+cast 1" in runs:
        paired_cast = [lc / bare for lc, bare in zip(runs["litcache 1"], runs["bare+cast 1"])]
        cast_ratio = statistics.median(paired_cast)
        print(f"   writer ratio litcache / bare+cast at 1 thread (the same work) = {cast_ratio:.3f} (repeats "
              f"{', '.join(f'{r:.2f}' for r in paired_cast)}); target <= 1.10")
    scalings = {}
    for t in thread_counts[1:]:
        scalings[t] = statistics.median(a / b for a, b in zip(runs["litcache 1"], runs[f"litcache {t}"]))
        bare = ", ".join(f"{b} {statistics.median(a / c for a, c in zip(runs[f'{b} 1'], runs[f'{b} {t}'])):.2f}x"
                         for b in bare_kinds)
        print(f"   scaling at {t} threads (median of the repeats'): litcache {scalings[t]:.2f}x, {bare} "
              "(target >= 1.8x at 2)")
    per_thread = rows / med["litcache 1"]
    cores = os.cpu_count() or 1
    print(f"   projection to a 16-core GPU machine (15 encoder threads, linear in threads as measured here): "
          f"{per_thread * 15:,.0f} rows/s, {per_thread * 15 * plan.bytes_per_row / 1e9:.1f} GB/s raw, if its disk "
          f"takes {per_thread * 15 * plan.bytes_per_row / throughput.get(args.codec, {}).get('ratio', 1) / 1e9:.1f} "
          f"GB/s ({cores} cores here)")
    print("   codecs on these boundaries, encode MB/s raw at 1 / 2 threads (2 / 1: does it release the GIL?), ratio:")
    for codec, f in throughput.items():
        print(f"      {codec:5s} {f['mb_per_s_1']:6.0f} / {f['mb_per_s_2']:6.0f} MB/s "
              f"({f['mb_per_s_2'] / f['mb_per_s_1']:.2f}x), {f['ratio']:.2f}x smaller")
    if storage:
        print("   boundaries as stored, one encoder thread: dtype codec keep-bits: bytes/row, encode MB/s raw, rows/s")
        for r in storage:
            print(f"      {r['dtype']:8s} {r['codec']:4s} {r['keep_bits'] or '-':>2}: {r['bytes_per_row']:9,.0f}  "
                  f"{r['encode_mb_per_s']:7,.0f} MB/s  {r['encode_rows_per_s']:8,.0f} rows/s")
    print("   per-row split, ms/row, each stage alone (old -> new):")
    for stage in split["new"]:
        print(f"      {stage:22s} {split['old'][stage]:.4f} -> {split['new'][stage]:.4f}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({
            "rows": rows, "bytes_per_row": plan.bytes_per_row, "cores": os.cpu_count(),
            # Paths as given or relative to the project: no absolute path of this machine in a result.
            "options": {k: os.path.relpath(v, REPO) if isinstance(v, str) and v.startswith(str(REPO)) else v
                        for k, v in vars(args).items()},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "runs": runs, "median_s": med,
            "writer_ratio": ratio, "writer_ratios": paired, "writer_ratio_same_work": cast_ratio,
            "scaling": scalings, "split_ms_per_row": split, "codecs": throughput,
            "storage": storage}, indent=2))


if __name__ == "__main__":
    main()
