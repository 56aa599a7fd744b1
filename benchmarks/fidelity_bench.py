"""Does LIT from the cache work? CIFAR-10, ResNet-56 teacher -> ResNet-20 student, every method at
the same budget, against scratch, KD, FitNets hints and online LIT with fresh views.

    tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C runs/cifar10
    python benchmarks/fidelity_bench.py --cifar-dir runs/cifar10 --teacher ../shared/teachers/cifar10_resnet56.pt

``--recipe resnext`` runs the same protocol for the paper's ResNeXt system at CPU size
(pipelines/cifar10_resnext.py with LITCACHE_RESNEXT_SIZE=cpu: ResNeXt-110 4x4d -> ResNeXt-20), from a
teacher trained by `litcache train-teacher` (default runs/cifar10_resnext/teacher.pt), into
benchmarks/results/fidelity-resnext.json. Either way the teacher's test accuracy is measured once and
printed above the table.

Rows, each trained for the same number of epochs E = --lit-epochs + --ft-epochs over the same
training images (the full 50k split, or a class-balanced --subset) and scored on the full 10k test split:

  scratch      ResNet-20 from scratch, cross-entropy, a fresh crop + flip every epoch (train-teacher --student)
  kd           KD from the store (train-blocks --mode kd), all its views
  hints        FitNets from the store (--mode hints: half the epochs on the middle boundary, then KD)
  lit-kK       LIT (--mode lit) then fine-tune (--mode finetune) from the store, its first K views only
               (--views K): one store of max(K) views serves every K
  online       LIT then fine-tune with the teacher run on every batch and a fresh view every epoch
               (--online-teacher --fresh-views): the original LIT code's regime

Every run is one record of benchmarks/results/fidelity.json, written as soon as it finishes: a
rerun skips what is done (and a run killed midway resumes from its last epoch under --work), so the
bench can be run in several sittings. ``--only`` picks rows (``--only scratch`` needs neither the
teacher nor the store); ``--seeds`` the seeds. ``--report`` prints the table (mean, min and max over
seeds) and draws benchmarks/results/fidelity.png without training anything.

The LIT runs also record the student's test accuracy right after the LIT phase, and after a
BatchNorm recalibration along the student's own path (measured on a copy; the fine-tune starts
from the LIT weights as they are unless --recalibrate-bn).

Variants are rows of their own, named by a suffix: --beta B (``+betaB``: the LIT phase's KD weight,
a LIT phase of its own), and, sharing the row's LIT phase, --recalibrate-bn (``+recal``), --ft-lr
(``+ft-lrX``) and --ft-train-head (``+ft-head``: the fine-tune trains the head as well).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

from _common import load_results, save_results, set_torch_threads  # beside this script

ROWS = ("scratch", "kd", "hints", "lit-k1", "lit-k2", "lit-k4", "lit-k8", "online")
#: The fine-tune's default lr; a LIT row fine-tuned otherwise is a row of its own (see ft_variant).
FT_LR = 0.02
#: Every row's default weight decay; another --weight-decay makes rows of their own (see wd_variant).
WEIGHT_DECAY = 5e-4
#: The table's compute (what `auto` chose on the AVX2 CPU that ran it); a row computed otherwise is a
#: row of its own, on a store of its own (see precision_variant).
TABLE_PRECISION = "fp32"
RESULTS = Path(__file__).parent / "results" / "fidelity.json"
#: --recipe -> (recipe file, teacher, teacher depth, its environment variable, student, results file).
RECIPES = {
    "resnet": ("cifar10_resnet.py", "../shared/teachers/cifar10_resnet56.pt", 56, "LITCACHE_CIFAR_TEACHER",
               "resnet20", RESULTS),
    "resnext": ("cifar10_resnext.py", "runs/cifar10_resnext/teacher.pt", 110, "LITCACHE_RESNEXT_TEACHER",
                "resnext20", RESULTS.with_name("fidelity-resnext.json")),
}


def _accuracies(history: list[dict]) -> dict:
    """The headline (last epoch), the test-selected best epoch, and the training epochs' seconds
    (evaluation and pauses not included, unlike wall_seconds)."""
    accs = [h["test_accuracy"] for h in history if "test_accuracy" in h]
    return {"test_accuracy": accs[-1], "best_test_accuracy_over_epochs": max(accs),
            "train_seconds": sum(h["seconds"] for h in history)}


def _schedule(args, lr: float, epochs: int, batch_size: int) -> dict:
    return dict(epochs=epochs, batch_size=batch_size, lr=lr, schedule=args.schedule, warmup=args.warmup,
                weight_decay=args.weight_decay, momentum=0.9)


def run_scratch(args, recipe, seed: int, work: Path) -> dict:
    from litcache import TrainConfig
    from litcache.training.teacher import train_teacher

    config = TrainConfig(**_schedule(args, args.lr, args.lit_epochs + args.ft_epochs, args.batch_size))
    result = train_teacher(recipe, work / "student.pt", config=config, seed=seed, resume=True, student=args.student,
                           precision=args.precision, log=print)
    return _accuracies(result["history"])


def _blocks(args, recipe, store, out: Path, seed: int, **options) -> dict:
    from litcache.training.blocks import BlockTrainOptions, train_blocks

    base = dict(seed=seed, batch_size=args.batch_size, schedule=args.schedule, warmup=args.warmup,
                weight_decay=args.weight_decay, precision=args.precision, verify=False)
    [result] = train_blocks(recipe, store, [args.student], out, BlockTrainOptions(**{**base, **options}), resume=True,
                            log=print)
    return result


def _recalibration_probe(recipe, store, checkpoint: str, views: int | None, args) -> dict:
    """Test accuracy of the LIT student as trained, and after a BatchNorm recalibration along its own path."""
    from litcache import ChunkShuffleSampler, StoreDataset, open_store
    from litcache.runtime.precision import resolve_compute
    from litcache.sections import cut_sections
    from litcache.training.blocks import recalibrate_batchnorm
    from litcache.training.dataset import make_loader
    from litcache.training.metrics import accuracy
    from litcache.training.student import load_student

    model = load_student(checkpoint, recipe)
    compute = resolve_compute(args.precision or recipe.precision, "cpu", model)
    compute.model(model)
    test = recipe.load_split("test")
    before = accuracy(model, test, compute)
    s = open_store(store)
    recalibrated = copy.deepcopy(model)
    loader = make_loader(StoreDataset(s, ["boundaries/0"]), ChunkShuffleSampler.for_store(s, 256, views=views))
    recalibrate_batchnorm(cut_sections(recalibrated, recipe), loader, compute)
    return {"after_lit_accuracy": before, "after_lit_recalibrated_accuracy": accuracy(recalibrated, test, compute)}


def wd_variant(args) -> str:
    """"+wd0.001" for a --weight-decay other than the default. SGD decays by lr * weight_decay per step,
    so the LIT phase (lr 0.2 before its loss_scale 0.5) decays twice as fast as scratch, kd and hints
    at lr 0.1: their +wd0.001 rows match its decay."""
    return f"+wd{args.weight_decay:g}" if args.weight_decay != WEIGHT_DECAY else ""


def beta_variant(args) -> str:
    """"+beta0" for a LIT phase with another --beta than the recipe's (0.75 for the CIFAR recipes): its
    own row, trained in a folder of its own. beta 0 trains the blocks on the IR terms alone, as the
    block library does."""
    return f"+beta{args.beta:g}" if args.beta is not None else ""


def precision_variant(precision: str) -> str:
    """"+bf16" for a run computed other than in TABLE_PRECISION: a bf16 teacher stores other
    activations and a bf16 student trains otherwise, so such rows never mix with the table's."""
    return f"+{precision}" if precision != TABLE_PRECISION else ""


def ft_variant(args) -> str:
    """The suffix naming a LIT row's fine-tune settings other than the defaults: "+recal" when it
    starts from BatchNorm-recalibrated weights (--recalibrate-bn), "+ft-lr0.005" for another --ft-lr,
    "+ft-head" when the fine-tune also trains the head (--ft-train-head; the released LIT code keeps the
    teacher's head frozen)."""
    return "".join(("+recal" if args.recalibrate_bn else "",
                    f"+ft-lr{args.ft_lr:g}" if args.ft_lr != FT_LR else "",
                    "+ft-head" if args.ft_train_head else ""))


def run_lit(args, recipe, store, seed: int, work: Path, views: int | None, online: bool) -> dict:
    teacher = {"online_teacher": args.teacher, "fresh_views": True} if online else {}
    lit = _blocks(args, recipe, store, work / "lit", seed, mode="lit", epochs=args.lit_epochs, lr=args.lit_lr,
                  views=views, beta=args.beta, **teacher)
    probe = _recalibration_probe(recipe, store, lit["checkpoint"], views, args)
    print(f"after the LIT phase: test accuracy {probe['after_lit_accuracy']:.4f}, "
          f"{probe['after_lit_recalibrated_accuracy']:.4f} with BatchNorm recalibrated")
    # A fine-tune with other settings is its own run beside the plain one; all share the LIT phase.
    ft_dir = work / ("ft" + ft_variant(args).replace("+", "-"))
    ft = _blocks(args, recipe, store, ft_dir, seed, mode="finetune", epochs=args.ft_epochs, lr=args.ft_lr,
                 init=lit["checkpoint"], views=views, recalibrate_bn=args.recalibrate_bn,
                 train_head=True if args.ft_train_head else None, **teacher)
    lit_phase = _accuracies(lit["history"])
    record = {**_accuracies(ft["history"]), **probe, "lit_phase_accuracy": lit_phase["test_accuracy"]}
    record["train_seconds"] += lit_phase["train_seconds"]
    return record


def run_store_baseline(args, recipe, store, seed: int, work: Path, mode: str) -> dict:
    result = _blocks(args, recipe, store, work, seed, mode=mode, epochs=args.lit_epochs + args.ft_epochs, lr=args.lr)
    return _accuracies(result["history"])


def teacher_accuracy(recipe, checkpoint: str, precision: str | None) -> float:
    """The teacher's top-1 on the whole test split."""
    from litcache.extraction.teacher import load_teacher
    from litcache.runtime.precision import resolve_compute
    from litcache.training.metrics import accuracy

    model, _, _ = load_teacher(recipe, checkpoint)
    compute = resolve_compute(precision or recipe.precision, "cpu", model)
    return accuracy(compute.model(model), recipe.load_split("test"), compute)


def store_bytes(store: str) -> int:
    from litcache.store.verify import store_info

    return store_info(store)["stored_bytes"]


def _mean_percent(runs: list[dict], key: str) -> str:
    values = [r[key] * 100 for r in runs if key in r]
    return f"{statistics.mean(values):.2f}" if values else "-"


def report(results: dict, out_png: Path) -> str:
    """The table (markdown) over seeds, and the plot of accuracy against K with the online band."""
    rows: dict[str, list[dict]] = {}
    splits: dict[str, set[str]] = {}  # a row run with several LIT + FT splits is a line per split
    for record in results["runs"].values():
        splits.setdefault(record["row"], set()).add(record["epochs"])
    for record in results["runs"].values():
        row = record["row"]
        rows.setdefault(row if len(splits[row]) == 1 else f"{row} ({record['epochs']})", []).append(record)
    lines = [f"teacher {path}: test top-1 {100 * acc:.2f}%" for path, acc in results.get("teachers", {}).items()]
    lines += ["| row | views | epochs (LIT + FT) | seeds | test top-1 mean | min | max | "
             "best epoch (test-selected) mean | training time / seed | store bytes | precision | "
             "after the LIT phase, mean | the same, BatchNorm recalibrated |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    variants = sorted(set(rows) - set(ROWS))
    for row in ROWS + tuple(variants):
        runs = rows.get(row)
        if not runs:
            continue
        accs = [r["test_accuracy"] * 100 for r in runs]
        best = [r["best_test_accuracy_over_epochs"] * 100 for r in runs]
        summary[row] = (statistics.mean(accs), min(accs), max(accs))
        r0 = runs[0]
        lines.append(f"| {row} | {r0['views']} | {r0['epochs']} | {','.join(str(r['seed']) for r in runs)} | "
                     f"{statistics.mean(accs):.2f} | {min(accs):.2f} | {max(accs):.2f} | {statistics.mean(best):.2f} | "
                     f"{statistics.mean(r.get('train_seconds', r['wall_seconds']) for r in runs) / 60:.0f} min | "
                     f"{(r0['store_bytes'] / 1e9):.2f} GB | {r0['precision']} | "
                     f"{_mean_percent(runs, 'after_lit_accuracy')} | "
                     f"{_mean_percent(runs, 'after_lit_recalibrated_accuracy')} |")
    lit_ks = [(int(row.split("k")[1]), row) for row in ROWS if row.startswith("lit-") and row in summary]
    if lit_ks:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ks = [k for k, _ in lit_ks]
        ax.errorbar(ks, [summary[r][0] for _, r in lit_ks],
                    yerr=[[summary[r][0] - summary[r][1] for _, r in lit_ks],
                          [summary[r][2] - summary[r][0] for _, r in lit_ks]],
                    marker="o", capsize=3, label="LIT + fine-tune from the cache")
        for row, style in (("online", "tab:green"), ("scratch", "tab:red"), ("kd", "tab:purple"),
                           ("hints", "tab:brown")):
            if row in summary:
                mean, lo, hi = summary[row]
                ax.axhspan(lo, hi, color=style, alpha=0.15)
                ax.axhline(mean, color=style, label=f"{row} (band: min-max over seeds)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("stored views K")
        ax.set_ylabel("test top-1 (%)")
        disk = ax.twinx()
        store_gb = {int(row.split("k")[1]): rows[row][0]["store_bytes"] / 1e9 for _, row in lit_ks}
        disk.plot(list(store_gb), list(store_gb.values()), "k:", marker="s", label="disk for K views (GB, right)")
        disk.set_ylabel("store size for K views (GB)")
        handles = [h for a in (ax, disk) for h in a.get_legend_handles_labels()[0]]
        ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=7)
        fig.tight_layout()
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120)
        plt.close(fig)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir",
                   help="ImageFolder CIFAR-10 (train/, test/), e.g. unpacked ../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--recipe", choices=list(RECIPES), default="resnet",
                   help="resnet: cifar10_resnet.py; resnext: cifar10_resnext.py at LITCACHE_RESNEXT_SIZE=cpu")
    p.add_argument("--teacher", help="the teacher checkpoint (default: the shared ResNet-56, or "
                                     "runs/cifar10_resnext/teacher.pt)")
    p.add_argument("--teacher-depth", type=int, help="default 56 (resnet), 110 (resnext)")
    p.add_argument("--student", help="default resnet20 or resnext20")
    p.add_argument("--subset", type=int, default=0, help="class-balanced training subset (0: all 50k)")
    p.add_argument("--lit-epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="scratch, kd, hints")
    p.add_argument("--lit-lr", type=float, default=0.2, help="before loss_scale 0.5: 0.1 effective, as --lr")
    p.add_argument("--ft-lr", type=float, default=FT_LR)
    p.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--warmup", type=float, default=0.0)
    p.add_argument("--precision", default=None)
    p.add_argument("--beta", type=float, default=None,
                   help="the LIT phase's KD weight (default: the recipe's); 0 trains on the IR terms alone")
    p.add_argument("--recalibrate-bn", action="store_true")
    p.add_argument("--ft-train-head", action="store_true", help="the fine-tune trains the head too")
    p.add_argument("--max-views", type=int, default=8)
    p.add_argument("--only", nargs="*", choices=ROWS, help="rows to run (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--work", default="runs/fidelity")
    p.add_argument("--results", help="default benchmarks/results/fidelity.json (resnext: fidelity-resnext.json)")
    p.add_argument("--report", action="store_true", help="print the table and draw the plot only")
    args = p.parse_args()
    recipe_file, teacher, depth, depth_var, student, results_file = RECIPES[args.recipe]
    args.teacher, args.teacher_depth = args.teacher or teacher, args.teacher_depth or depth
    args.student, args.results = args.student or student, args.results or str(results_file)

    results_path = Path(args.results)
    results = load_results(results_path)
    too_many = [row for row in args.only or ROWS if row.startswith("lit-") and int(row.split("k")[1]) > args.max_views]
    if too_many:
        p.error(f"rows {too_many} use more views than the store's --max-views {args.max_views}")
    if args.report:
        print(report(results, results_path.with_suffix(".png")))
        return
    if not args.cifar_dir:
        p.error("--cifar-dir is required to train")
    os.environ["LITCACHE_CIFAR10_DIR"] = str(Path(args.cifar_dir).resolve())
    os.environ[depth_var] = str(args.teacher_depth)
    os.environ["LITCACHE_CIFAR10_TRAIN_SUBSET"] = str(args.subset)
    if args.recipe == "resnext":
        os.environ.setdefault("LITCACHE_RESNEXT_SIZE", "cpu")
    from litcache import ExtractOptions, extract, load_recipe
    from litcache.runtime.devices import resolve_device
    from litcache.runtime.precision import resolve_compute

    recipe = load_recipe(Path(__file__).parents[1] / "pipelines" / recipe_file)
    # Scratch rows need neither the teacher nor the store: `--only scratch` starts at once, e.g. beside the
    # teacher's own training.
    uses_teacher = any(row != "scratch" for row in args.only or ROWS)
    if uses_teacher and args.teacher not in results.setdefault("teachers", {}):
        results["teachers"][args.teacher] = teacher_accuracy(recipe, args.teacher, args.precision)
        save_results(results_path, results)
    # The compute the runs get: they train on the device train-blocks picks (CUDA when present).
    precision = resolve_compute(args.precision or recipe.precision, resolve_device("auto")).precision
    work = Path(args.work) / f"subset{args.subset or 50000}-e{args.lit_epochs}+{args.ft_epochs}"
    store = str(work / f"train_k{args.max_views}{precision_variant(precision).replace('+', '-')}.zarr")
    extract_seconds, full_bytes = 0.0, 0
    if uses_teacher:
        t = time.perf_counter()
        extract(recipe, store, ExtractOptions(views=args.max_views, precision=args.precision),
                teacher_checkpoint=args.teacher, resume=True, progress=False)
        extract_seconds = time.perf_counter() - t
        full_bytes = store_bytes(store)
    samples = len(recipe.load_split("train"))

    for seed in args.seeds:
        for row in args.only or ROWS:
            lit_row = row.startswith(("lit-", "online"))
            variant = wd_variant(args) + (beta_variant(args) if lit_row else "") + precision_variant(precision)
            name = row + variant + (ft_variant(args) if lit_row else "")
            key = f"subset{args.subset or 50000}/e{args.lit_epochs}+{args.ft_epochs}/{name}/seed{seed}"
            if key in results["runs"]:
                done_for = results["runs"][key].get("student", args.student)
                if done_for != args.student:  # keys name no student: another one would be skipped as done
                    p.error(f"{results_path} holds {key} for student {done_for}, not {args.student}: give "
                            f"{args.student} a --results and a --work of its own")
                continue
            views = int(row.split("k")[1]) if row.startswith("lit-") else (None if row == "online" else args.max_views)
            print(f"=== {key}", flush=True)
            t = time.perf_counter()
            run_dir = work / (row + variant) / f"seed{seed}"
            if row == "scratch":
                record = run_scratch(args, recipe, seed, run_dir)
            elif row in ("kd", "hints"):
                record = run_store_baseline(args, recipe, store, seed, run_dir, row)
            else:
                record = run_lit(args, recipe, store, seed, run_dir, views, online=row == "online")
            record.update(row=name, seed=seed,
                          views="fresh" if row == "online" else (views if row != "scratch" else "fresh"),
                          epochs=f"{args.lit_epochs} + {args.ft_epochs}" if row.startswith(("lit", "online")) else
                          str(args.lit_epochs + args.ft_epochs),
                          wall_seconds=time.perf_counter() - t, samples=samples, test_samples=10000,
                          precision=precision,
                          store_bytes=0 if row in ("scratch", "online") else
                          full_bytes * (views or args.max_views) // args.max_views,
                          store_extract_seconds=extract_seconds, student=args.student,
                          hyperparameters={k: getattr(args, k) for k in ("batch_size", "lr", "lit_lr", "ft_lr",
                                                                          "weight_decay", "schedule", "warmup",
                                                                          "recalibrate_bn", "beta",
                                                                          "ft_train_head")})
            results["runs"][key] = record
            save_results(results_path, results)
            print(f"=== {key}: test accuracy {record['test_accuracy']:.4f} in {record['wall_seconds'] / 60:.1f} min",
                  flush=True)
    print(report(results, results_path.with_suffix(".png")))


if __name__ == "__main__":
    set_torch_threads()
    main()
