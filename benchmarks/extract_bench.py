"""Extraction: overhead over the teacher's bare forward, bytes per row per dtype/codec, peak memory.

    python benchmarks/extract_bench.py --recipe pipelines/mnist_resnet.py --teacher runs/mnist_resnet/teacher.pt

1. Bare forward: the same rows through the same DataLoader and the teacher's sections, output
   discarded; then `extract` of those rows. Ratio = extract wall time / bare forward time.
2. Storage: a small store per (dtype, codec); bytes per row and ratio against raw float32.
3. Memory: peak RSS of `litcache extract` (a subprocess) at two sizes.
Everything is measured side by side in one run; absolute times on shared machines are noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from litcache import ExtractOptions, extract, load_recipe, store_info

from _common import bare_forward_seconds, peak_rss_mb  # beside this script


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None)
    p.add_argument("--limit", type=int, default=None, help="samples for the overhead run (default: all)")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--storage-limit", type=int, default=1024, help="samples for each dtype/codec store")
    p.add_argument("--memory-limits", default="1000,4000", help="two sample counts for the memory check (x4 views)")
    p.add_argument("--skip-memory", action="store_true")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        options = ExtractOptions(views=args.views, limit=args.limit)
        # forward, extract, forward: the mean of the two forwards brackets the extraction in time.
        first_s, rows = bare_forward_seconds(recipe, args.teacher, options)
        t = time.perf_counter()
        result = extract(recipe, tmp / "overhead.zarr", options, teacher_checkpoint=args.teacher, progress=False, log=lambda m: None)
        extract_s = time.perf_counter() - t
        second_s, _ = bare_forward_seconds(recipe, args.teacher, options)
        forward_s = (first_s + second_s) / 2
        print(f"1. extract overhead ({rows} rows, {options.dtype}+{options.codec}, batch {options.batch_size}, "
              f"{torch.get_num_threads()} threads)")
        print(f"   bare forward {rows / forward_s:,.0f} rows/s ({first_s:.1f} s, {second_s:.1f} s); extract {rows / extract_s:,.0f} rows/s "
              f"({extract_s:.1f} s, of which teacher {result.teacher_seconds:.1f} s); ratio extract/forward = {extract_s / forward_s:.2f}")

        print(f"2. storage ({args.storage_limit} samples x 1 view; ratio against raw float32 boundaries)")
        print(f"   {'dtype':<9}{'codec':<6}{'bytes/row':>11}{'boundary ratio':>16}{'store ratio':>13}")
        for dtype in ("float32", "float16", "bfloat16"):
            for codec in ("zstd", "lz4", "none"):
                out = tmp / f"{dtype}-{codec}.zarr"
                extract(recipe, out, ExtractOptions(limit=args.storage_limit, dtype=dtype, codec=codec),
                        teacher_checkpoint=args.teacher, progress=False, log=lambda m: None)
                info = store_info(out)
                rows_n = info["manifest"]["layout"]["rows"]
                bnd = [a for n, a in info["arrays"].items() if n.startswith("boundaries/")]
                raw32 = sum(4 * int(np.prod(a["shape"])) for a in bnd)  # the same values as float32
                stored = sum(a["stored_bytes"] for a in bnd)
                raw32_all = raw32 + sum(a["raw_bytes"] for n, a in info["arrays"].items() if not n.startswith("boundaries/"))
                print(f"   {dtype:<9}{codec:<6}{info['stored_bytes'] / rows_n:>11,.0f}{raw32 / stored:>15.2f}x"
                      f"{raw32_all / info['stored_bytes']:>12.2f}x")

        if not args.skip_memory:
            print("3. peak memory of `litcache extract` (4 views)")
            for limit in (int(n) for n in args.memory_limits.split(",")):
                out = tmp / f"mem-{limit}.zarr"
                cmd = ["extract", args.recipe, "--out", str(out), "--views", "4", "--limit", str(limit), "-q"]
                if args.teacher:
                    cmd += ["--teacher", args.teacher]
                t = time.perf_counter()
                peak = peak_rss_mb(cmd)
                seconds = time.perf_counter() - t
                print(f"   {limit * 4:>7} rows: peak RSS {peak:,.0f} MB, {limit * 4 / seconds:,.0f} rows/s (process wall time)")


if __name__ == "__main__":
    main()
