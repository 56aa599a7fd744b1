"""The comparison the LIT paper makes, from one store: scratch, KD, hints, LIT, LIT + fine-tune.

    python benchmarks/baselines.py --recipe pipelines/mnist_resnet.py --store runs/mnist_resnet/train.zarr \
        --teacher runs/mnist_resnet/teacher.pt --student resnet8 --epochs 6 --finetune-epochs 3 --out runs/baselines

Same student, same epochs and lr schedule (the recipe's LIT phase) for every method; scratch
trains on raw images with the recipe's augmentation (`train-teacher --student`), the others read
only the store. Prints a table of test accuracy and wall time per method.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from litcache import BlockTrainOptions, evaluate, load_recipe, train_blocks, train_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--store", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", default="resnet8")
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's LIT epochs")
    p.add_argument("--finetune-epochs", type=int, default=None, help="default: the recipe's fine-tune epochs")
    p.add_argument("--out", default="runs/baselines")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    out = Path(args.out)
    lit_phase = recipe.distill.lit
    epochs = args.epochs or lit_phase.epochs
    quiet = {"log": lambda m: None}
    results, seconds = {}, {}

    def timed(name, fn):
        t = time.perf_counter()
        checkpoint = fn()
        seconds[name] = time.perf_counter() - t
        results[name] = evaluate(recipe, checkpoint, None)["student"]["accuracy"]
        print(f"{name:<18} test top-1 {results[name]:.4f}   {seconds[name]:.0f} s", flush=True)

    scratch_config = replace(lit_phase, epochs=epochs)
    timed("scratch", lambda: train_teacher(recipe, _fresh(out / "scratch.pt"), config=scratch_config,
                                          student=args.student, **quiet)["checkpoint"])
    for mode in ("kd", "hints", "lit"):
        timed(mode, lambda mode=mode: train_blocks(recipe, args.store, [args.student], _fresh_dir(out / mode),
                                                   BlockTrainOptions(mode=mode, epochs=epochs, evaluate=False),
                                                   **quiet)[0]["checkpoint"])
    lit_ckpt = out / "lit" / args.student / "student.pt"
    timed("lit + finetune", lambda: train_blocks(recipe, args.store, [args.student], _fresh_dir(out / "finetune"),
                                                 BlockTrainOptions(mode="finetune", init=str(lit_ckpt),
                                                                   epochs=args.finetune_epochs, evaluate=False),
                                                 **quiet)[0]["checkpoint"])
    teacher = evaluate(recipe, None, args.teacher)["teacher"]["accuracy"]
    print(f"{'teacher':<18} test top-1 {teacher:.4f}")
    (out / "baselines.json").write_text(json.dumps({"accuracy": results, "seconds": seconds, "teacher": teacher,
                                                    "epochs": epochs}, indent=2))


def _fresh(path: Path) -> Path:
    path.unlink(missing_ok=True)
    return path


def _fresh_dir(path: Path) -> Path:
    for stale in path.glob("*/*"):
        stale.unlink()
    return path


if __name__ == "__main__":
    main()
