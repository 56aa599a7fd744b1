"""Extraction overhead: `extract` wall time over the teacher's bare forward on the same rows.

    python benchmarks/extract_bench.py --recipe pipelines/mnist_resnet.py --teacher runs/mnist_resnet/teacher.pt

Each repeat runs: bare forward, extract (inline writer), extract (background writer), bare forward.
The bare forward is the same rows through the same DataLoader, device and teacher sections with the
output discarded: what an extraction cannot go below. The two forwards bracket the extractions in
time, and their mean is the denominator; the median ratio over --repeats is printed. Extract's wall
time includes everything a user waits for: loading the teacher and data, the split check, the data
fingerprint, casting, finite checks, compression, fsync and the manifest.

Bytes per row per dtype and codec: storage_bench.py. Peak memory by size: scale_bench.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import bare_forward_seconds  # beside this script

from litcache import ExtractOptions, extract, load_recipe


def timed_extract(recipe, out: Path, options: ExtractOptions, teacher: str | None,
                  background: bool) -> tuple[float, float]:
    """(wall seconds, teacher seconds) of one extraction with the chosen shard writer."""
    t = time.perf_counter()
    result = extract(recipe, out, options, teacher_checkpoint=teacher, progress=False, log=lambda m: None,
                     background_writer=background)
    return time.perf_counter() - t, result.teacher_seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None)
    p.add_argument("--limit", type=int, default=None, help="samples (default: all)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--dtype", default="float16")
    p.add_argument("--codec", default="zstd")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", dest="json_out", help="also write the figures here")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    options = ExtractOptions(views=args.views, limit=args.limit, dtype=args.dtype, codec=args.codec,
                             batch_size=args.batch_size, device=args.device)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            first, rows = bare_forward_seconds(recipe, args.teacher, options)
            inline, inline_teacher = timed_extract(recipe, Path(tmp) / f"inline-{i}.zarr", options, args.teacher, False)
            background, _ = timed_extract(recipe, Path(tmp) / f"background-{i}.zarr", options, args.teacher, True)
            second, _ = bare_forward_seconds(recipe, args.teacher, options)
            forward = (first + second) / 2
            runs.append({"forward_s": forward, "inline_s": inline, "inline_teacher_s": inline_teacher,
                         "background_s": background, "inline_ratio": inline / forward,
                         "background_ratio": background / forward})
            print(f"   repeat {i + 1}: bare forward {first:.2f} s / {second:.2f} s; extract inline {inline:.2f} s "
                  f"(teacher {inline_teacher:.2f} s), background {background:.2f} s; ratios {inline / forward:.3f} / "
                  f"{background / forward:.3f}")
    summary = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    print(f"extract overhead: {rows} rows ({args.limit or 'all'} samples x {args.views} views), "
          f"{args.dtype}+{args.codec}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"   bare forward {rows / summary['forward_s']:,.0f} rows/s; "
          f"extract {rows / summary['inline_s']:,.0f} rows/s inline, "
          f"{rows / summary['background_s']:,.0f} rows/s background writer")
    print(f"   ratio extract/forward = {summary['inline_ratio']:.3f} (inline writer), "
          f"{summary['background_ratio']:.3f} (background writer); target <= 1.10")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "options": vars(args), "runs": runs,
                                                   "median": summary}, indent=2))


if __name__ == "__main__":
    main()
