"""Does reduced precision cost accuracy? LIT + fine-tune from one store at --precision fp32 and bf16,
over several seeds: bf16's mean should lie within fp32's seed band.

    python benchmarks/precision_bench.py --teacher runs/demo/teacher.pt

One store (the teacher computed in fp32, stored float16) serves every run, so the students differ
only in how they compute and in their seed. On a CPU without bf16 instructions bf16 is emulated
(correct but several times slower than fp32): the accuracies still answer the question.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from litcache import BlockTrainOptions, ExtractOptions, extract, load_recipe, train_blocks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None)
    p.add_argument("--student", default="resnet8")
    p.add_argument("--limit", type=int, default=1000, help="training samples")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--lit-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--json", dest="json_out", default=str(Path(__file__).parent / "results" / "precision.json"))
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = {"log": lambda m: None}
    runs = []
    with tempfile.TemporaryDirectory(prefix="litcache-precision-") as tmp:
        store = Path(tmp) / "store.zarr"
        extract(recipe, store, ExtractOptions(limit=args.limit, views=args.views, precision="fp32"),
                teacher_checkpoint=args.teacher, progress=False, **quiet)
        for precision in args.precisions.split(","):
            for seed in seeds:
                base = dict(seed=seed, precision=precision, verify=False)
                [lit] = train_blocks(recipe, store, [args.student], Path(tmp) / f"{precision}-{seed}-lit",
                                     BlockTrainOptions(mode="lit", epochs=args.lit_epochs, evaluate=False, **base),
                                     **quiet)
                [ft] = train_blocks(recipe, store, [args.student], Path(tmp) / f"{precision}-{seed}-ft",
                                    BlockTrainOptions(mode="finetune", epochs=args.ft_epochs, init=lit["checkpoint"],
                                                      **base), **quiet)
                seconds = sum(h["seconds"] for h in lit["history"] + ft["history"])
                runs.append({"precision": precision, "seed": seed, "test_accuracy": ft["history"][-1]["test_accuracy"],
                             "train_seconds": seconds})
                print(f"{precision} seed {seed}: test top-1 {runs[-1]['test_accuracy']:.4f} "
                      f"({seconds:.0f} s of training)", flush=True)
    summary = {}
    for precision in args.precisions.split(","):
        accs = [r["test_accuracy"] * 100 for r in runs if r["precision"] == precision]
        summary[precision] = {"mean": statistics.mean(accs), "min": min(accs), "max": max(accs)}
        print(f"{precision}: mean {summary[precision]['mean']:.2f}%, band {summary[precision]['min']:.2f}-"
              f"{summary[precision]['max']:.2f}% over seeds {args.seeds}")
    if {"fp32", "bf16"} <= set(summary):
        inside = summary["fp32"]["min"] <= summary["bf16"]["mean"] <= summary["fp32"]["max"]
        print(f"bf16 mean {'within' if inside else 'OUTSIDE'} the fp32 seed band")
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in vars(args).items() if k != "json_out"}
    Path(args.json_out).write_text(json.dumps({"options": options, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
