"""StarGAN on real emoji (issue 28): the teacher (6 residual blocks) trained adversarially, its LIT student (2
blocks, IR only, beta 0) from the store, and a scratch generator of 2 blocks trained adversarially the same way.

    make emoji-data
    python benchmarks/stargan_bench.py --seeds 0 1 2          # resumable: rerun to continue
    python benchmarks/stargan_bench.py --report

Recipe pipelines/emoji_stargan.py (316 emoji x 6 skin tones, 32x32, held out by whole emoji; first conv 32
filters). Steps, each recorded in benchmarks/results/stargan.json as it finishes:

  teacher     `train_stargan.py train` (6 blocks), --iterations (StarGAN's losses and optimiser)
  classifier  `train_stargan.py classifier`: the tone classifier that judges translations (its accuracy on
              the held-out emoji's real images is reported)
  store       extract of the recipe's training rows (every image with every other target tone)
  lit         `train-blocks --mode ir` of the 2-block student for --lit-epochs, per seed
  scratch     `train_stargan.py train --blocks 2` for the teacher's --iterations, per seed: the adversarial
              baseline at the teacher's budget (more generator updates than the LIT student's epochs)
  score       `train_stargan.py score` of every trained generator: MSE, PSNR and SSIM against the teacher
              on the held-out rows, the classifier's accuracy on the target tone, and a PNG grid

The report prints one table: teacher, scratch and LIT rows with their spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _common import load_results, run_once, set_torch_threads  # beside this script

RESULTS = Path(__file__).parent / "results" / "stargan.json"
PIPELINES = Path(__file__).parents[1] / "pipelines"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=6000, help="adversarial iterations (teacher and scratch)")
    p.add_argument("--classifier-epochs", type=int, default=15)
    p.add_argument("--lit-epochs", type=int, default=10)
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    # The adversarial runs (teacher, scratch) compute in fp32; the store and the LIT student do too unless asked,
    # so that a CPU with bf16 instructions (where the recipe's "auto" picks bf16) gives the same table.
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="the store's and the LIT student's compute (default fp32, as the adversarial runs)")
    p.add_argument("--work", default="runs/stargan")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    results_path = Path(args.results)
    results = load_results(results_path)
    if args.report:
        print(report(results))
        return
    from litcache import BlockTrainOptions, ExtractOptions, evaluate, extract, load_recipe, train_blocks
    from litcache.recipe import import_beside

    train_stargan = import_beside(str(PIPELINES / "train_stargan.py"), "train_stargan")
    recipe = load_recipe(PIPELINES / "emoji_stargan.py")
    work = Path(args.work)
    teacher, judge = work / "teacher" / "generator.pt", work / "classifier.pt"

    def step(key: str, run) -> dict:
        return run_once(results, results_path, key, run)

    def adversarial(out: Path, blocks: int, seed: int) -> dict:
        code = train_stargan.main(["train", "--out", str(out), "--blocks", str(blocks), "--seed", str(seed),
                                   "--iterations", str(args.iterations)])
        if code:
            raise SystemExit(code)
        log = json.loads((out / "log.json").read_text())
        return {"checkpoint": str(out / "generator.pt"), "train_seconds": log["seconds"], "blocks": blocks,
                "iterations": args.iterations, "last_log": log["log"][-1]}

    step("teacher", lambda: adversarial(work / "teacher", 6, 0))
    step("classifier", lambda: train_stargan.classifier(argparse.Namespace(
        recipe=str(PIPELINES / "emoji_stargan.py"), out=str(judge), epochs=args.classifier_epochs, seed=0)))
    store = str(work / "train.zarr")
    extract(recipe, store, ExtractOptions(views=1, precision=args.precision), teacher_checkpoint=str(teacher),
            resume=True, progress=False)
    for seed in args.seeds:
        def lit() -> dict:
            [result] = train_blocks(recipe, store, ["blocks2"], work / f"lit-seed{seed}", BlockTrainOptions(
                mode="ir", epochs=args.lit_epochs, seed=seed, evaluate=False, verify=False, precision=args.precision),
                resume=True, log=print)
            report_ = evaluate(recipe, result["checkpoint"], str(teacher), precision=args.precision)["student"]
            return {"checkpoint": result["checkpoint"], "train_seconds": sum(h["seconds"] for h in result["history"]),
                    "epochs": args.lit_epochs, "precision": args.precision, "evaluate": {k: report_[k] for k in (
                        "mse_vs_teacher", "psnr_vs_teacher_db", "ssim_vs_teacher", "compression_by_depth",
                        "compression_by_params", "compression_by_macs", "params", "macs_per_sample")}}

        step(f"lit/seed{seed}", lit)
        step(f"scratch/seed{seed}", lambda: adversarial(work / f"scratch2-seed{seed}", 2, seed))
        step(f"score/seed{seed}", lambda: train_stargan.score(argparse.Namespace(
            recipe=str(PIPELINES / "emoji_stargan.py"), teacher=str(teacher), classifier=str(judge),
            generator=[f"lit={results['runs'][f'lit/seed{seed}']['checkpoint']}",
                       f"scratch={results['runs'][f'scratch/seed{seed}']['checkpoint']}"],
            out=str(work / f"scores-seed{seed}.json"), grid=str(work / f"grid-seed{seed}.png"), grid_rows=12,
            seed=seed)))
    print(report(results))


def _spread(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(results: dict) -> str:
    runs = results["runs"]
    scores = [r for k, r in sorted(runs.items()) if k.startswith("score/")]
    lines = []
    if "classifier" in runs:
        c = runs["classifier"]
        lines.append(f"tone classifier on the held-out emoji's real images: {100 * c['test_accuracy']:.2f}% "
                     f"({c['test_images']} images)")
    lines += ["", "| generator | seeds | MSE vs teacher | PSNR (dB) | SSIM | tone accuracy (classifier) | "
              "training |", "|---|---|---|---|---|---|---|"]
    if scores:
        t, tone = runs["teacher"], _spread([s["teacher"]["tone_accuracy"] for s in scores])
        lines.append(f"| teacher, 6 blocks | - | - | - | - | {tone} | {t['iterations']} adversarial iterations, "
                     f"{t['train_seconds'] / 60:.0f} min |")
    for name, what in (("scratch", "2 blocks, adversarial, the teacher's iterations"),
                       ("lit", "2 blocks, LIT (IR only) from the store")):
        rows = [s[name] for s in scores if name in s]
        if not rows:
            continue
        train = [r["train_seconds"] for k, r in runs.items() if k.startswith(f"{name}/")]
        lines.append(f"| {what} | {len(rows)} | {_spread([r['mse_vs_teacher'] for r in rows])} | "
                     f"{_spread([r['psnr_vs_teacher_db'] for r in rows], 2)} | "
                     f"{_spread([r['ssim_vs_teacher'] for r in rows])} | "
                     f"{_spread([r['tone_accuracy'] for r in rows])} | {statistics.mean(train) / 60:.0f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    set_torch_threads()
    main()
