"""VDCNN on real review text (issue 28): teacher VDCNN-17 (29 with --teachers 29 17 --pair 29), then scratch, KD
and LIT + fine-tune students of VDCNN-9 at the same budget, from one store, over seeds.

    make review-data
    python benchmarks/vdcnn_bench.py --seeds 0 1 2            # resumable: rerun to continue
    python benchmarks/vdcnn_bench.py --report

The recipe is pipelines/reviews_vdcnn.py (21,322 real reviews from three package archives, split by source
document; 256 characters; widths 32/64/128/256, hidden 512). Steps, each recorded in
benchmarks/results/vdcnn.json as it finishes (a run killed midway resumes from its last epoch under --work):

  teacherD   `train-teacher` of VDCNN-D for D in --teachers (default 17), the recipe's teacher schedule (SGD
             lr 0.05 halved every 3 epochs, 15 epochs, BatchNorm re-estimated after each); test accuracy per
             epoch. VDCNN-29 stays near the majority class on this little data (recipe docstring), so the
             default pair is 17 -> 9; its record of that run: results/vdcnn-running-bn.json
  store      extract of the training split with the --pair's teacher (one view: no augmentation)
  scratch    the student from scratch with cross-entropy, the teacher's schedule, E = LIT + FT epochs
  kd         KD from the store (alpha 0.95, tau 6), the same schedule and E epochs
  lit+ft     LIT (beta 0.05, lr 0.05 halved at 2, 4, 6, 8 of 10) then the fine-tune (lr 0.05, /10 at 2 and 4
             of 5): the recipe's DistillConfig, the paper's schedule shape at two thirds and half its length.
             --ft-lr trains the fine-tune at another rate from the same LIT phase (key and folder name it:
             lit+ft-ftlr0.005 is the paper's tenth of the LIT rate, which leaves the student underfit here)

Every student row trains E = 15 epochs over the same 18,125 rows and is scored on the 3,197 held-out rows;
the headline is the last epoch. The report prints the teachers, the table (mean, min, max over seeds) and the
majority-class accuracy of the test split.
"""

from __future__ import annotations

import argparse
import os
import statistics
from dataclasses import replace
from pathlib import Path

from _common import load_results, run_once, set_torch_threads  # beside this script

RESULTS = Path(__file__).parent / "results" / "vdcnn.json"
PAIRS = {29: "vdcnn17", 17: "vdcnn9"}


def _last(history: list[dict]) -> dict:
    accs = [h["test_accuracy"] for h in history if "test_accuracy" in h]
    return {"test_accuracy": accs[-1], "best_test_accuracy_over_epochs": max(accs),
            "train_seconds": sum(h["seconds"] for h in history), "epochs": len(history)}


def run_teacher(recipe, depth: int, work: Path, seed: int, epochs: int) -> dict:
    from litcache.training.teacher import train_teacher

    os.environ["LITCACHE_VDCNN_TEACHER"] = str(depth)
    result = train_teacher(recipe, work / f"teacher{depth}.pt", config=replace(recipe.teacher_training, epochs=epochs),
                           seed=seed, resume=True, log=print)
    model = recipe.build_teacher()
    return {**_last(result["history"]), "checkpoint": str(work / f"teacher{depth}.pt"),
            "params": sum(p.numel() for p in model.parameters()), "depth": depth}


def run_scratch(recipe, student: str, epochs: int, seed: int, work: Path) -> dict:
    from litcache.training.teacher import train_teacher

    config = replace(recipe.teacher_training, epochs=epochs)
    result = train_teacher(recipe, work / "student.pt", config=config, seed=seed, resume=True, student=student,
                           log=print)
    return _last(result["history"])


def run_blocks(recipe, store: str, student: str, out: Path, **options) -> dict:
    from litcache.training.blocks import BlockTrainOptions, train_blocks

    [result] = train_blocks(recipe, store, [student], out, BlockTrainOptions(verify=False, **options), resume=True,
                            log=print)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teachers", nargs="*", type=int, default=[17], help="teacher depths to train and report "
                   "(29 stays near the majority class here: see the recipe)")
    p.add_argument("--pair", type=int, default=17, choices=list(PAIRS), help="the teacher of the student rows "
                                                                             "(17 -> 9, 29 -> 17)")
    p.add_argument("--rows", nargs="*", default=["scratch", "kd", "lit+ft"], choices=["scratch", "kd", "lit+ft"])
    p.add_argument("--teacher-epochs", type=int, default=None, help="default: the recipe's (15)")
    p.add_argument("--lit-epochs", type=int, default=None, help="default: the recipe's (10)")
    p.add_argument("--ft-epochs", type=int, default=None, help="default: the recipe's (5)")
    p.add_argument("--ft-lr", type=float, default=None, help="the fine-tune's lr (default: the recipe's, 0.05)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--work", default="runs/vdcnn")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="print the tables only")
    args = p.parse_args(argv)
    results_path = Path(args.results)
    results = load_results(results_path)
    if args.report:
        print(report(results))
        return
    from litcache import ExtractOptions, extract, load_recipe

    recipe = load_recipe(Path(__file__).parents[1] / "pipelines" / "reviews_vdcnn.py")
    work = Path(args.work)
    labels = recipe.load_split("test").labels
    results["test_majority_accuracy"] = max(labels.mean(), 1 - labels.mean()).item()

    def record(key: str, run) -> dict:
        done = key in results["runs"]
        row = run_once(results, results_path, key, run)
        if not done:
            print(f"=== {key}: test accuracy {row['test_accuracy']:.4f}", flush=True)
        return row

    # Keys and folders name the epochs, so a run of other lengths never reuses these.
    teacher_epochs = args.teacher_epochs or recipe.teacher_training.epochs
    for depth in sorted(set(args.teachers) | {args.pair}, reverse=True):
        record(f"teacher{depth}-e{teacher_epochs}",
               lambda: run_teacher(recipe, depth, work / f"e{teacher_epochs}", 0, teacher_epochs))
    teacher = results["runs"][f"teacher{args.pair}-e{teacher_epochs}"]["checkpoint"]
    os.environ["LITCACHE_VDCNN_TEACHER"] = str(args.pair)
    work = work / f"e{teacher_epochs}"
    store = str(work / f"train-teacher{args.pair}.zarr")
    extract(recipe, store, ExtractOptions(views=1), teacher_checkpoint=teacher, resume=True, progress=False)
    student, d = PAIRS[args.pair], recipe.distill
    lit_epochs, ft_epochs = args.lit_epochs or d.lit.epochs, args.ft_epochs or d.finetune.epochs
    epochs = lit_epochs + ft_epochs
    ft_lr = args.ft_lr or d.finetune.lr
    for seed in args.seeds:
        for row in args.rows:
            pair = f"{args.pair}-e{teacher_epochs}-{student}-e{lit_epochs}+{ft_epochs}"
            key = f"{pair}/{row}-ftlr{ft_lr:g}/seed{seed}" if row == "lit+ft" else f"{pair}/{row}/seed{seed}"
            run_dir = work / pair / row.replace("+", "-") / f"seed{seed}"
            if row == "scratch":
                record(key, lambda: run_scratch(recipe, student, epochs, seed, run_dir))
            elif row == "kd":
                record(key, lambda: run_kd(recipe, store, student, run_dir, seed, epochs))
            else:
                record(key, lambda: run_lit_finetune(recipe, store, student, run_dir, seed, lit_epochs, ft_epochs,
                                                     ft_lr))
    print(report(results))


def run_kd(recipe, store: str, student: str, out: Path, seed: int, epochs: int) -> dict:
    """KD from the store on the teacher's schedule (lr 0.05, x0.5 every 3 epochs; gamma: the LIT phase's 0.5)."""
    t = recipe.teacher_training
    result = run_blocks(recipe, store, student, out, mode="kd", seed=seed, epochs=epochs, lr=t.lr,
                        milestones=t.milestones)
    return _last(result["history"])


def run_lit_finetune(recipe, store: str, student: str, out: Path, seed: int, lit_epochs: int, ft_epochs: int,
                     ft_lr: float) -> dict:
    """LIT, then the fine-tune from its student; fine-tunes at other rates share the LIT phase."""
    lit = run_blocks(recipe, store, student, out / "lit", mode="lit", seed=seed, epochs=lit_epochs)
    ft = run_blocks(recipe, store, student, out / f"ft-lr{ft_lr:g}", mode="finetune", seed=seed, epochs=ft_epochs,
                    init=lit["checkpoint"], lr=ft_lr)
    record = _last(lit["history"] + ft["history"])
    record["lit_phase_accuracy"] = _last(lit["history"])["test_accuracy"]
    return record


def _spread(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}, sd {statistics.stdev(values):.2f})"


def report(results: dict) -> str:
    runs = results["runs"]
    lines = []
    if "test_majority_accuracy" in results:
        lines += [f"majority class of the test split: {100 * results['test_majority_accuracy']:.2f}%", ""]
    lines += ["| teacher | params | epochs | test accuracy (last epoch) | best epoch | training time |",
              "|---|---|---|---|---|---|"]
    for key in sorted(k for k in runs if k.startswith("teacher")):
        r = runs[key]
        lines.append(f"| VDCNN-{r['depth']} | {r['params']:,} | {r['epochs']} | {100 * r['test_accuracy']:.2f} | "
                     f"{100 * r['best_test_accuracy_over_epochs']:.2f} | {r['train_seconds'] / 60:.0f} min |")
    groups: dict[tuple[str, str], list[dict]] = {}
    for key, r in runs.items():
        if "/" in key:
            pair, row, _ = key.split("/")
            groups.setdefault((pair, row), []).append(r)
    lines += ["", "| pair | row | seeds | test accuracy, mean (min-max) | after the LIT phase | time / seed |",
              "|---|---|---|---|---|---|"]
    for (pair, row), rs in sorted(groups.items()):
        lit = [r["lit_phase_accuracy"] for r in rs if "lit_phase_accuracy" in r]
        lines.append(f"| {pair} | {row} | {len(rs)} | {_spread([r['test_accuracy'] for r in rs])} | "
                     f"{_spread(lit) if lit else '-'} | {statistics.mean(r['train_seconds'] for r in rs) / 60:.0f} "
                     "min |")
    return "\n".join(lines)


if __name__ == "__main__":
    set_torch_threads()
    main()
