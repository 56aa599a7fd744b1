"""A block library from one store (issue 26): CIFAR-10, the ResNet-56 teacher (9 blocks per stage),
candidates of 0-7 blocks per stage trained once, searched under three MAC budgets against the uniform
LIT student of the same MACs, and the predictor's rank correlation.

    tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C runs/data/cifar10-jpeg
    python benchmarks/library_bench.py --cifar-dir runs/data/cifar10-jpeg --subset 25000 --seeds 0 1 2
    python benchmarks/library_bench.py --analyse      # the predictors compared, from what the runs left
    python benchmarks/library_bench.py --report

Steps, each kept under --work and recorded in benchmarks/results/library.json as it finishes (a rerun
continues where it stopped; a run killed mid-training resumes from its last epoch):

  stores    the training store (--subset images, --views views; the fidelity bench's) and the held-out
            store the candidates are scored on: the recipe's "val" split, --val training images outside
            the subset (the test split is only ever the final measurement)
  library   per seed: `litcache library --depths` (default 0,1,2,3,5,7: a least-squares map, and 5 depths
            trained IR-only for --lit-epochs, as the LIT phase of the uniform student trains)
  uniform   per seed and budget: the uniform student of that budget trained as fidelity_bench trains its
            LIT row (--mode lit for --lit-epochs, then --mode finetune for --ft-epochs)
  uniform-ir  per seed and budget: the same student with an IR-only first phase (--mode ir, all sections at
            once), the library candidates' loss: it tells how much of a library mix's lead over the uniform
            LIT student is the loss (LIT's beta 0.75 gives the IR terms a quarter of the weight IR-only gives
            them) and how much is training sections apart; the fair baseline of the search
  search    per seed and budget: `litcache search --budget macs=<the uniform student's> --top N`, every
            pick and (at the headline budget) every uniform mix of the library fine-tuned exactly as the
            uniform student is, then evaluated on the 10k test split

Budgets: the MACs of ResNet-20 (the headline), ResNet-14 and ResNet-32 (2 and 5 blocks per stage).
The report prints the cost table (the library's training compute against whole students), the quality
table (searched against uniform, per budget, over seeds: the last epoch, never the best), the rank
correlation of predicted and measured accuracy over every assembled student, and draws the Pareto plot
(benchmarks/results/library.png).

``--analyse`` compares predictors over the assembled students of every finished seed (rank correlation
with the accuracy measured after the fine-tune), into benchmarks/results/library-predictors.json: the
search's additive ones (the candidates' swap KL, swap accuracy and normalised boundary error, summed over
sections) and the assembled student's own KL from the teacher on the held-out rows before any fine-tune
(one forward of each mix: what a search could re-rank its top picks by, catching the sections' interplay
that sums miss).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from _common import load_results, save_results, set_torch_threads  # beside this script

RESULTS = Path(__file__).parent / "results" / "library.json"
#: Budget name -> blocks per stage of the uniform student whose MACs it is.
BUDGETS = {"resnet20": 3, "resnet14": 2, "resnet32": 5}
HEADLINE = "resnet20"


def _training(args, lr: float, epochs: int) -> dict:
    return dict(epochs=epochs, batch_size=args.batch_size, lr=lr, schedule="cosine", weight_decay=args.weight_decay,
                momentum=0.9)


def run_uniform(args, recipe, store: str, student: str, seed: int, work: Path, mode: str = "lit") -> dict:
    """The uniform LIT student, as fidelity_bench's lit-kK row trains it: LIT, then fine-tune. With ``mode="ir"``
    the first phase is IR only (beta 0), all sections at once: the library's loss, trained jointly."""
    from litcache.training.blocks import BlockTrainOptions, train_blocks

    common = dict(seed=seed, verify=False)
    [lit] = train_blocks(recipe, store, [student], work / mode, BlockTrainOptions(
        mode=mode, **_training(args, args.lit_lr, args.lit_epochs), **common), resume=True, log=print)
    [ft] = train_blocks(recipe, store, [student], work / ("ft" if mode == "lit" else f"ft-{mode}"), BlockTrainOptions(
        mode="finetune", init=lit["checkpoint"], **_training(args, args.ft_lr, args.ft_epochs), **common),
        resume=True, log=print)
    history = [h for h in ft["history"] if "test_accuracy" in h]
    return {"test_accuracy": history[-1]["test_accuracy"],
            "lit_seconds": sum(h["seconds"] for h in lit["history"]),
            "train_seconds": sum(h["seconds"] for h in lit["history"]) + sum(h["seconds"] for h in ft["history"]),
            "checkpoint": ft["checkpoint"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", help="ImageFolder CIFAR-10, e.g. unpacked ../shared/data/cifar10-jpeg.tar.gz")
    p.add_argument("--teacher", default="../shared/teachers/cifar10_resnet56.pt")
    p.add_argument("--teacher-depth", type=int, default=56)
    p.add_argument("--subset", type=int, default=25000, help="class-balanced training subset")
    p.add_argument("--val", type=int, default=2000, help="held-out training images outside the subset")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--depths", default="0,1,2,3,5,7")
    p.add_argument("--lit-epochs", type=int, default=15)
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lit-lr", type=float, default=0.2, help="before loss_scale 0.5, as fidelity_bench")
    p.add_argument("--ft-lr", type=float, default=0.02)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--top", type=int, default=4, help="picks assembled and measured per budget")
    p.add_argument("--score-rows", type=int, default=1000, help="--analyse: held-out rows of the assembled KL")
    p.add_argument("--budgets", nargs="*", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--workers", type=int, default=None, help="library tasks: dask workers (default: one per core)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--work", default="runs/library")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="print the tables and draw the plot only")
    p.add_argument("--analyse", action="store_true", help="compare the predictors over the finished seeds")
    args = p.parse_args(argv)
    results_path = Path(args.results)
    results = load_results(results_path)
    predictors_path = results_path.with_name(results_path.stem + "-predictors.json")
    if args.analyse:
        analyse(results, predictors_path, args.score_rows, Path(args.work), args.budgets)
    if args.report or args.analyse:
        print(report(results, results_path.with_suffix(".png"), load_results(predictors_path)))
        return
    if not args.cifar_dir:
        p.error("--cifar-dir is required to train")
    os.environ["LITCACHE_CIFAR10_DIR"] = str(Path(args.cifar_dir).resolve())
    os.environ["LITCACHE_CIFAR_TEACHER"] = str(args.teacher_depth)
    os.environ["LITCACHE_CIFAR10_TRAIN_SUBSET"] = str(args.subset)
    os.environ["LITCACHE_CIFAR10_VAL"] = str(args.val)
    from litcache import ExtractOptions, extract, load_recipe
    from litcache.library import LibraryOptions, build_library, search
    from litcache.training.metrics import model_stats

    recipe = load_recipe(Path(__file__).parents[1] / "pipelines" / "cifar10_resnet.py")
    size = f"subset{args.subset}-k{args.views}-e{args.lit_epochs}+{args.ft_epochs}"
    work = Path(args.work) / size
    store, heldout = str(work / f"train_k{args.views}.zarr"), str(work / f"val{args.val}.zarr")
    extract(recipe, store, ExtractOptions(views=args.views), teacher_checkpoint=args.teacher, resume=True,
            progress=False)
    extract(recipe, heldout, ExtractOptions(split="val", views=1), teacher_checkpoint=args.teacher, resume=True,
            progress=False)
    sample = recipe.load_split("test")[0][0][None]

    def record(key: str, values: dict, t: float) -> None:
        results["runs"][key] = {**values, "wall_seconds": time.perf_counter() - t}
        save_results(results_path, results)
        print(f"=== {key}", flush=True)

    for seed in args.seeds:
        library_dir = work / f"library-seed{seed}"
        key = f"{size}/library/seed{seed}"
        t = time.perf_counter()
        library = build_library(recipe, store, heldout, library_dir, LibraryOptions(
            depths=(args.depths,), training=_training(args, args.lit_lr, args.lit_epochs), seed=seed,
            workers=args.workers), log=print)
        if key not in results["runs"]:
            record(key, {"candidates": library["candidates"], "teacher": library["teacher"],
                         "train_seconds": sum(c["train_seconds"] for c in library["candidates"])}, t)
        for budget in args.budgets:
            student = f"mix-{BUDGETS[budget]}-{BUDGETS[budget]}-{BUDGETS[budget]}"
            macs = model_stats(recipe.student_builder(student)(), sample)["macs_per_sample"]
            key = f"{size}/uniform/{budget}/seed{seed}"
            if key not in results["runs"]:
                t = time.perf_counter()
                record(key, {**run_uniform(args, recipe, store, student, seed, work / f"uniform-{budget}-seed{seed}"),
                             "macs": macs, "student": student}, t)
            key = f"{size}/uniform-ir/{budget}/seed{seed}"
            if key not in results["runs"]:
                t = time.perf_counter()
                record(key, {**run_uniform(args, recipe, store, student, seed, work / f"uniform-{budget}-seed{seed}",
                                           mode="ir"), "macs": macs, "student": student}, t)
            key = f"{size}/search/{budget}/seed{seed}"
            if key not in results["runs"]:
                t = time.perf_counter()
                found = search(library_dir, f"macs={macs}", top=args.top, finetune_epochs=args.ft_epochs,
                               finetune=_training(args, args.ft_lr, args.ft_epochs), uniform=budget == HEADLINE,
                               out=work / f"search-{budget}-seed{seed}", seed=seed, log=print)
                record(key, {"budget_macs": macs, "students": found["students"],
                             "rank_correlation": found["rank_correlation"]}, t)
    print(report(results, results_path.with_suffix(".png"), load_results(predictors_path)))


def assembled_kl(recipe, checkpoint: str, heldout, rows: int) -> float:
    """The mean KL from the teacher's stored logits of a whole assembled student (stem skipped: its input is the
    stored stem output) over the first ``rows`` held-out rows: the library's Scorer, given the student's sections
    in place of the teacher's, swapping none."""
    from litcache.library.scores import HeldOutRows, Scorer
    from litcache.sections import cut_sections
    from litcache.training.student import load_student

    sectioned = cut_sections(load_student(checkpoint, recipe), recipe)
    return Scorer(HeldOutRows(heldout, rows), sectioned.sections, sectioned.head, "classification").reference["kl"]


def analyse(results: dict, path: Path, rows: int, work_root: Path, budgets: list[str]) -> None:
    """Each predictor's rank correlation with the measured accuracy, per finished seed (see the docstring)."""
    from litcache import load_recipe, open_store
    from litcache.library import read_library
    from litcache.library.search import spearman

    runs, out = results["runs"], load_results(path)
    for key in sorted(k for k in runs if k.split("/")[1] == "library"):
        size, _, seed = key.split("/")
        searches = {k.split("/")[2]: r for k, r in runs.items()
                    if k.startswith(f"{size}/search/") and k.endswith(f"/{seed}")}
        if not set(budgets) <= set(searches) or f"{size}/{seed}" in out["runs"]:
            continue
        work = work_root / size
        library = read_library(work / f"library-{seed}")
        recipe = load_recipe(library["recipe"]["source"])
        heldout = open_store(library["heldout"]["path"])
        candidates = {(c["section"], c["depth"]): c for c in library["candidates"]}
        students = {}
        for budget, r in sorted(searches.items()):
            for x in r["students"]:
                students.setdefault(x["student"], (x, work / f"search-{budget}-{seed}" / x["student"] / "assembled.pt"))
        table = []
        for name, (x, assembled) in sorted(students.items()):
            picks = [candidates[(i, d)] for i, d in enumerate(recipe_mix_depths(name), start=1)]
            table.append({"student": name, "accuracy": x["accuracy"], "macs": x["macs"],
                          "kl_sum": sum(p["swap_kl_delta"] for p in picks),
                          "accuracy_sum": -sum(p["swap_accuracy_delta"] for p in picks),
                          "boundary_sum": sum(p["boundary_normalised"] for p in picks),
                          "assembled_kl": assembled_kl(recipe, str(assembled), heldout, rows)})
            print(f"{seed} {name}: assembled KL {table[-1]['assembled_kl']:.4f}, accuracy {x['accuracy']:.4f}")
        accuracy = [r["accuracy"] for r in table]
        correlations = {k: spearman([-r[k] for r in table], accuracy)
                        for k in ("kl_sum", "accuracy_sum", "boundary_sum", "assembled_kl")}
        # Within a budget the picks differ by little: the predictors' rank correlation over each budget's picks.
        within = {}
        for r in searches.values():
            picks = [table_row for table_row in table
                     if table_row["student"] in {x["student"] for x in r["students"] if x["kind"] == "searched"}]
            for k in correlations:
                within.setdefault(k, []).append(spearman([-t[k] for t in picks], [t["accuracy"] for t in picks]))
        out["runs"][f"{size}/{seed}"] = {"students": table, "rank_correlation": correlations,
                                          "within_budgets": within, "score_rows": rows}
        save_results(path, out)


def recipe_mix_depths(name: str) -> list[int]:
    """mix-3-0-5 -> [3, 0, 5]."""
    return [int(d) for d in name.split("-")[1:]]


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def report(results: dict, png: Path, predictors: dict | None = None) -> str:
    """The cost table, the quality table and the rank correlations; draws the Pareto plot."""
    from litcache.library.search import spearman

    runs = results["runs"]
    sizes = sorted({k.split("/")[0] for k in runs})
    lines = []
    for size in sizes:
        libraries = {k: r for k, r in runs.items() if k.startswith(f"{size}/library/")}
        uniform = {k: r for k, r in runs.items() if k.startswith(f"{size}/uniform/")}
        uniform_ir = {k: r for k, r in runs.items() if k.startswith(f"{size}/uniform-ir/")}
        searches = {k: r for k, r in runs.items() if k.startswith(f"{size}/search/")}
        lines += [f"## {size}", "", "| cost (training seconds) | value |", "|---|---|"]
        for key, lib in sorted(libraries.items()):
            cands = {c["candidate"]: c for c in lib["candidates"]}
            trained = [c for c in lib["candidates"] if c["kind"] == "trained"]
            seed = key.rsplit("seed", 1)[1]
            lines.append(f"| library, seed {seed}: {len(trained)} trained candidates | {lib['train_seconds']:,.0f} |")
            per_section = {}
            for c in lib["candidates"]:
                per_section.setdefault(c["section"], []).append(c)
            mixes = 1
            for options in per_section.values():
                mixes *= len(options)
            # A whole student of a mix trains its sections together on the same rows: its IR epochs cost about
            # what its sections cost alone (the uniform LIT rows below measure the KD term's extra).
            whole = sum(sum(c["train_seconds"] for c in combo) for combo in _product(per_section))
            lines.append(f"| {mixes} mixes trained as whole students (sum of their sections' seconds) | {whole:,.0f} |")
            for budget, depth in BUDGETS.items():
                u = uniform.get(f"{size}/uniform/{budget}/seed{seed}")
                parts = [cands.get(f"s{i}-d{depth}") for i in (1, 2, 3)]
                if u and all(parts):
                    alone = sum(c["train_seconds"] for c in parts)
                    lines.append(f"| uniform LIT {budget}, LIT phase (its sections alone in the library: "
                                 f"{alone:,.0f}) | {u['lit_seconds']:,.0f} |")
        lines += ["", "| budget (MACs) | uniform LIT student | the same shape, IR-only first phase | library mix of "
                      "the uniform shape | searched #1 (after the same fine-tune) | picks | searched - uniform LIT | "
                      "searched - uniform IR-only |", "|---|---|---|---|---|---|---|---|"]
        for budget, depth in BUDGETS.items():
            u = {k.rsplit("seed", 1)[1]: r for k, r in uniform.items() if k.split("/")[2] == budget}
            u_ir = {k.rsplit("seed", 1)[1]: r["test_accuracy"] for k, r in uniform_ir.items()
                    if k.split("/")[2] == budget}
            s = {k.rsplit("seed", 1)[1]: r for k, r in searches.items() if k.split("/")[2] == budget}
            best = {seed: next(x for x in r["students"] if x["rank"] == 1) for seed, r in s.items()}
            shape = f"mix-{depth}-{depth}-{depth}"
            # The library's mix of the uniform shape is measured by whichever search of that seed assembled it.
            same_shape = []
            for seed in sorted(s):
                found = [x["accuracy"] for k, r in sorted(searches.items()) if k.endswith(f"seed{seed}")
                         for x in r["students"] if x["student"] == shape]
                same_shape += found[:1]
            deltas = [best[seed]["accuracy"] - u[seed]["test_accuracy"] for seed in sorted(set(best) & set(u))]
            deltas_ir = [best[seed]["accuracy"] - u_ir[seed] for seed in sorted(set(best) & set(u_ir))]
            u_ir = [u_ir[k] for k in sorted(u_ir)]
            u, best = [u[k] for k in sorted(u)], [best[k] for k in sorted(best)]
            if u or s:
                macs = u[0]["macs"] if u else next(iter(s.values()))["budget_macs"]
                lines.append(f"| {budget} ({macs / 1e6:.1f}M) | {_spread([r['test_accuracy'] for r in u])} | "
                             f"{_spread(u_ir)} | {_spread(same_shape)} | "
                             f"{_spread([b['accuracy'] for b in best])} | {', '.join(b['student'] for b in best)} | "
                             f"{_spread(deltas) if deltas else '-'} | {_spread(deltas_ir) if deltas_ir else '-'} |")
        lines += ["", "| seed | assembled students | rank correlation (predicted KL vs measured accuracy) | "
                      "within each budget's picks (mean over budgets) |", "|---|---|---|---|"]
        for seed in sorted({k.rsplit("seed", 1)[1] for k in searches}):
            rows, within = {}, []
            for k, r in searches.items():
                if k.endswith(f"seed{seed}"):
                    rows.update({x["student"]: x for x in r["students"]})
                    picks = [x for x in r["students"] if x["kind"] == "searched"]
                    if len(picks) > 2:
                        within.append(spearman([-x["predicted_loss"] for x in picks], [x["accuracy"] for x in picks]))
            rho = spearman([-x["predicted_loss"] for x in rows.values()], [x["accuracy"] for x in rows.values()])
            lines.append(f"| {seed} | {len(rows)} | {rho:.3f} | "
                         f"{statistics.mean(within):.2f} ({', '.join(f'{w:.2f}' for w in within)}) |"
                         if within else f"| {seed} | {len(rows)} | {rho:.3f} | - |")
        analysed = {k: r for k, r in (predictors or {}).get("runs", {}).items() if k.startswith(f"{size}/")}
        if analysed:
            names = {"kl_sum": "swap KL, summed (the search's)", "accuracy_sum": "swap accuracy loss, summed",
                     "boundary_sum": "normalised boundary error, summed",
                     "assembled_kl": "the assembled mix's KL, before the fine-tune"}
            lines += ["", "| predictor | rank correlation with the fine-tuned accuracy, per seed | within each "
                          "budget's picks (mean) |", "|---|---|---|"]
            for k, label in names.items():
                rhos = [f"{r['rank_correlation'][k]:.3f}" for _, r in sorted(analysed.items())]
                within = [statistics.mean(r["within_budgets"][k]) for _, r in sorted(analysed.items())]
                lines.append(f"| {label} | {', '.join(rhos)} | {', '.join(f'{w:.2f}' for w in within)} |")
        _plot(uniform, uniform_ir, searches, png, size)
    return "\n".join(lines)


def _product(per_section: dict) -> list[tuple]:
    import itertools

    return list(itertools.product(*(per_section[i] for i in sorted(per_section))))


def _plot(uniform: dict, uniform_ir: dict, searches: dict, png: Path, title: str) -> None:
    """Uniform students per budget as mean and min-max over seeds; every measured library mix as a point."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for runs, color, label in ((uniform, "tab:blue", "uniform LIT students"),
                               (uniform_ir, "tab:purple", "uniform students, IR-only first phase")):
        by_macs = {}
        for r in runs.values():
            by_macs.setdefault(r["macs"], []).append(r["test_accuracy"])
        if by_macs:
            xs = sorted(by_macs)
            mean = [statistics.mean(by_macs[x]) for x in xs]
            spread = [[m - min(by_macs[x]) for x, m in zip(xs, mean)], [max(by_macs[x]) - m for x, m in zip(xs, mean)]]
            ax.errorbar(xs, mean, yerr=spread, fmt="s-", color=color, capsize=3,
                        label=f"{label} (mean, min-max over seeds)")
    mixes = [x for r in searches.values() for x in r["students"]]
    # The axis spans the budgets' students; far weaker uniform mixes (maps only, 1 block a stage) are named below.
    floor = min([r["test_accuracy"] for r in (*uniform.values(), *uniform_ir.values())]
                + [x["accuracy"] for x in mixes if x["kind"] == "searched"], default=0.0) - 0.02
    for kind, color, marker in (("uniform", "tab:green", "^"), ("searched", "tab:red", "o")):
        points = [(x["macs"], x["accuracy"]) for x in mixes if x["kind"] == kind and x["accuracy"] >= floor]
        if points:
            ax.scatter([x for x, _ in points], [y for _, y in points], color=color, marker=marker,
                       label=f"library mixes: {kind} (every seed)", alpha=0.5)
    below = {}
    for x in mixes:
        if x["accuracy"] < floor:
            below.setdefault(x["student"], set()).add(round(100 * x["accuracy"]))
    if below:
        ax.set_ylim(bottom=floor)
        ax.set_title("below the axis: " + ", ".join(f"{name} ({min(a)}-{max(a)}%)" if len(a) > 1 else
                                                    f"{name} ({min(a)}%)" for name, a in sorted(below.items())),
                     fontsize=8)
    ax.set_xlabel("multiply-adds per image")
    ax.set_ylabel("test accuracy (last epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"Block library, CIFAR-10 ResNet-56 teacher ({title})", fontsize=10)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    set_torch_threads()
    main()
