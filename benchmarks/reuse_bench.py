"""Reuse: K student variants trained cached (extract once, then K LIT runs) against online LIT.

    python benchmarks/reuse_bench.py --recipe pipelines/mnist_resnet.py --teacher runs/mnist_resnet/teacher.pt \
        --students resnet8,resnet14 --seeds 0,1,2,3 --out runs/reuse_mnist

Variants are students x seeds (student-major); K = 1, 2, 4, 8 takes the first K. Measured, side
by side in one run:

  E    `litcache.extract` of the rows into a store (wall time, planning and writing included)
  F    the teacher's bare forward over the same rows (same views, DataLoader and device)
  C_i  variant i trained with `train_blocks` from the store (mode lit, no verification)
  M_i  the same steps fed from memory (`BlockTrainOptions(in_memory=True)`: no store reads)
  O_i  the same run online (`--online-teacher`: the teacher runs on every batch)

C, M and O are the training epochs' seconds from each run's history (training time only: not
the student's set-up, the in-memory load or the final evaluation). The three runs of a variant
share rows, order and initial weights. For each K:

  online = sum O_i     cached = E + sum C_i     ideal = F + sum M_i
  speedup = online / cached     store overhead = cached / ideal   (target: within 1.10)

Test accuracy (the recipe's test split) of the cached and online students must agree within 0.5
points. The online run uses the teacher's float32 outputs, the cached one the store's --dtype.
Epochs, lr, milestones and batch size come from the flags (default: 2 epochs, the recipe's LIT lr and batch,
no lr milestone). Results also go to OUT/reuse.json; the stores and runs are deleted unless --keep.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from _common import bare_forward_seconds  # beside this script

from litcache import BlockTrainOptions, ExtractOptions, extract, load_recipe, load_student, open_store, train_blocks
from litcache.runtime.devices import resolve_device
from litcache.training.metrics import accuracy


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None, help="default: the recipe's")
    p.add_argument("--students", default=None, help="comma list (default: the recipe's first student)")
    p.add_argument("--seeds", default="0", help="comma list of training seeds")
    p.add_argument("--ks", default="1,2,4,8", help="numbers of variants to total (each at most students x seeds)")
    p.add_argument("--limit", type=int, default=None, help="samples (default: the whole train split)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's LIT batch size")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's LIT lr")
    p.add_argument("--milestones", default="", help="comma list of epochs after which lr x0.1 (default: none)")
    p.add_argument("--dtype", default="float16", help="store dtype")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for reuse.json and the work (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the store and the trained students")
    args = p.parse_args()

    recipe = load_recipe(args.recipe)
    students = [s.strip() for s in (args.students or next(iter(recipe.students))).split(",") if s.strip()]
    for name in students:
        recipe.student_builder(name)
    variants = list(itertools.product(students, _ints(args.seeds)))
    ks = _ints(args.ks)
    if not ks or max(ks) > len(variants) or min(ks) < 1:
        p.error(f"--ks must lie in 1..{len(variants)} (students x seeds = {len(variants)} variants), got {args.ks}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="litcache-reuse-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=out))
    quiet = {"log": lambda m: None}
    device = resolve_device(args.device)
    try:
        results = run(recipe, args, variants, ks, work, device, quiet)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    path = out / "reuse.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results: {path}" + (f" (stores and runs in {work})" if args.keep else ""))


def run(recipe, args, variants, ks, work: Path, device, quiet) -> dict:
    options = ExtractOptions(views=args.views, limit=args.limit, dtype=args.dtype, device=args.device)
    t = time.perf_counter()
    extract(recipe, work / "store.zarr", options, teacher_checkpoint=args.teacher, progress=False, **quiet)
    extract_s = time.perf_counter() - t
    forward_s, rows = bare_forward_seconds(recipe, args.teacher, options)
    store = open_store(work / "store.zarr")
    teacher = args.teacher or store.manifest.teacher.checkpoint
    base = BlockTrainOptions(mode="lit", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             milestones=tuple(_ints(args.milestones)),
                             device=args.device, verify=False, evaluate=False)
    test_set = recipe.load_split("test")
    print(f"reuse: {recipe.name}, {rows} rows ({rows // args.views} samples x {args.views} views, {args.dtype}), "
          f"{args.epochs} epochs, device {device}, {torch.get_num_threads()} threads")
    print(f"   extract E {extract_s:.1f} s; teacher bare forward F {forward_s:.1f} s (E/F {extract_s / forward_s:.2f})")
    print(f"   {'variant':<18}{'cached C s':>11}{'memory M s':>11}{'online O s':>11}{'acc cached':>11}"
          f"{'acc online':>11}{'diff pts':>9}")
    records = []
    sources = [("cached", {}), ("memory", {"in_memory": True}), ("online", {"online_teacher": str(teacher)})]
    for i, (student, seed) in enumerate(variants):
        name = f"{student}_seed{seed}"
        row = {"variant": name, "student": student, "seed": seed}
        # Rotate the order per variant, so no source always runs first on a noisy machine.
        for source, extra in sources[i % 3:] + sources[:i % 3]:
            [result] = train_blocks(recipe, store.path, [student], work / source / name,
                                    replace(base, seed=seed, **extra), **quiet)
            row[f"{source}_s"] = sum(h["seconds"] for h in result["history"])
            if source != "memory":  # the memory run's weights are the cached run's, bit for bit
                row[f"{source}_accuracy"] = accuracy(load_student(result["checkpoint"]).to(device), test_set, device)
        row["accuracy_diff_points"] = 100 * (row["cached_accuracy"] - row["online_accuracy"])
        records.append(row)
        print(f"   {name:<18}{row['cached_s']:>11.1f}{row['memory_s']:>11.1f}{row['online_s']:>11.1f}"
              f"{row['cached_accuracy']:>11.4f}{row['online_accuracy']:>11.4f}{row['accuracy_diff_points']:>+9.2f}",
              flush=True)

    worst = max(abs(r["accuracy_diff_points"]) for r in records)
    print(f"   largest accuracy difference cached - online: {worst:.2f} points (target: within 0.5)")
    for student in dict.fromkeys(r["student"] for r in records):  # seed-to-seed spread: the noise band
        cached = [r["cached_accuracy"] for r in records if r["student"] == student]
        online = [r["online_accuracy"] for r in records if r["student"] == student]
        print(f"   {student}: mean over seeds cached {100 * statistics.mean(cached):.2f}%, "
              f"online {100 * statistics.mean(online):.2f}%; "
              f"spread of all its runs {100 * (max(cached + online) - min(cached + online)):.2f} points")
    print(f"   {'K':>3}{'online s':>11}{'cached s':>11}{'ideal s':>11}{'online/cached':>15}{'cached/ideal':>14}")
    table = []
    for k in ks:
        first = records[:k]
        online = sum(r["online_s"] for r in first)
        cached = extract_s + sum(r["cached_s"] for r in first)
        ideal = forward_s + sum(r["memory_s"] for r in first)
        table.append({"k": k, "online_s": online, "cached_s": cached, "ideal_s": ideal,
                      "speedup_online_over_cached": online / cached, "cached_over_ideal": cached / ideal})
        print(f"   {k:>3}{online:>11.1f}{cached:>11.1f}{ideal:>11.1f}{online / cached:>15.2f}{cached / ideal:>14.2f}")
    print("   online = sum O_i; cached = E + sum C_i; ideal = F + sum M_i (target cached/ideal within 1.10)")
    return {"recipe": recipe.name, "recipe_source": args.recipe, "teacher": str(teacher), "rows": rows,
            "samples": rows // args.views, "views": args.views, "dtype": args.dtype, "epochs": args.epochs,
            "device": str(device), "threads": torch.get_num_threads(), "training": asdict(base),
            "extract_s": extract_s, "bare_forward_s": forward_s, "variants": records,
            "max_accuracy_diff_points": worst, "table": table}


if __name__ == "__main__":
    main()
