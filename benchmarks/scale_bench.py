"""Scale: peak memory and rows/s of `litcache extract` and `litcache train-blocks` as rows grow.

    python benchmarks/scale_bench.py --recipe pipelines/mnist_resnet.py --teacher runs/mnist_resnet/teacher.pt \
        --sizes 2500x4,4000x25 --out runs/scale

Each size SAMPLESxVIEWS (rows = samples x views; MNIST has 4,000 train samples, so 10k rows =
2500x4 and 100k rows = 4000x25) runs both commands in a child process, whose own peak RSS
(ru_maxrss) is recorded:

  extract       rows/s from the store's recorded extraction time (the library call) and from the
                process wall time (interpreter and imports included)
  train-blocks  --epochs VIEWS (each epoch reads one view per sample, so the run reads as many rows
                as the store holds), --no-eval --no-verify; rows/s: the mean of the epochs'
                rows_per_s in metrics.json, and rows read over the process wall time

Target: memory and rows/s flat as rows grow (largest over smallest size within 1.20 for memory).
Results also go to OUT/scale.json; the stores are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import peak_rss_mb  # beside this script

from litcache import load_recipe, open_store


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        samples, _, views = part.strip().lower().partition("x")
        try:
            sizes.append((int(samples), int(views)))
        except ValueError:
            raise SystemExit(f"--sizes: expected SAMPLESxVIEWS items such as 2500x4, got {part!r}") from None
    return sizes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None, help="default: the recipe's")
    p.add_argument("--student", default=None, help="default: the recipe's first student")
    p.add_argument("--sizes", default="2500x4,4000x25", help="comma list of SAMPLESxVIEWS")
    p.add_argument("--batch-size", type=int, default=None, help="train-blocks batch size (default: the recipe's)")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for scale.json and the work (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the stores and the trained students")
    args = p.parse_args()
    sizes = _sizes(args.sizes)
    student = args.student or next(iter(load_recipe(args.recipe).students))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="litcache-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    try:
        results = [measure(args, student, samples, views, work) for samples, views in sizes]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"scale: {args.recipe}, student {student}, {args.dtype}, device {args.device} "
          f"(torch sees {torch.get_num_threads()} threads here)")
    print(f"   {'rows':>8} {'size':>8} | {'extract MB':>10}{'rows/s':>9}{'wall rows/s':>12} | "
          f"{'train MB':>9}{'rows/s':>9}{'wall rows/s':>12}")
    for r in results:
        e, t = r["extract"], r["train"]
        size = f"{r['samples']}x{r['views']}"
        print(f"   {r['rows']:>8,} {size:>8} | {e['peak_rss_mb']:>10,.0f}"
              f"{e['rows_per_s']:>9,.0f}{e['wall_rows_per_s']:>12,.0f} | {t['peak_rss_mb']:>9,.0f}"
              f"{t['rows_per_s']:>9,.0f}{t['wall_rows_per_s']:>12,.0f}")
    ratios = {}
    if len(results) > 1:
        small, big = results[0], results[-1]
        for stage in ("extract", "train"):
            ratios[stage] = {key: big[stage][key] / small[stage][key]
                             for key in ("peak_rss_mb", "rows_per_s", "wall_rows_per_s")}
        label = f"{big['rows']:,}/{small['rows']:,} rows"
        for stage, name in (("extract", "extract"), ("train", "train-blocks")):
            q = ratios[stage]
            print(f"   ratio {label}, {name}: memory {q['peak_rss_mb']:.2f}, rows/s {q['rows_per_s']:.2f} "
                  f"(wall {q['wall_rows_per_s']:.2f})")
        print("   target: memory within 1.20 and rows/s flat as rows grow")
    path = out / "scale.json"
    path.write_text(json.dumps({"recipe": args.recipe, "student": student, "dtype": args.dtype, "device": args.device,
                                "sizes": results, "ratios_largest_over_smallest": ratios}, indent=2))
    print(f"results: {path}")


def measure(args, student: str, samples: int, views: int, work: Path) -> dict:
    store = work / f"{samples}x{views}.zarr"
    cmd = ["extract", args.recipe, "--out", store, "--views", views, "--limit", samples, "--dtype", args.dtype,
           "--device", args.device, "-q"]
    if args.teacher:
        cmd += ["--teacher", args.teacher]
    t = time.perf_counter()
    extract_peak = peak_rss_mb(cmd)
    extract_wall = time.perf_counter() - t
    manifest = open_store(store).manifest
    rows = manifest.layout.rows
    extract_s = manifest.timing.seconds

    run = work / f"train-{samples}x{views}"
    cmd = ["train-blocks", args.recipe, "--store", store, "--student", student, "--out", run, "--epochs", views,
           "--device", args.device, "--no-eval", "--no-verify", "-q"]
    if args.batch_size:
        cmd += ["--batch-size", args.batch_size]
    t = time.perf_counter()
    train_peak = peak_rss_mb(cmd)
    train_wall = time.perf_counter() - t
    history = json.loads((run / student / "metrics.json").read_text())["history"]
    train_rows = sum(h["rows_per_s"] * h["seconds"] for h in history)
    return {"samples": samples, "views": views, "rows": rows,
            "extract": {"peak_rss_mb": extract_peak, "seconds": extract_s, "rows_per_s": rows / extract_s,
                        "wall_s": extract_wall, "wall_rows_per_s": rows / extract_wall},
            "train": {"peak_rss_mb": train_peak, "epochs": len(history), "rows_read": round(train_rows),
                      "rows_per_s": sum(h["rows_per_s"] for h in history) / len(history),
                      "seconds": sum(h["seconds"] for h in history), "wall_s": train_wall,
                      "wall_rows_per_s": train_rows / train_wall}}


if __name__ == "__main__":
    main()
