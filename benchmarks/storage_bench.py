"""Storage: bytes per row for each dtype, codec and lossy rounding, and the student accuracy each yields.

    python benchmarks/storage_bench.py --recipe pipelines/mnist_resnet.py --teacher runs/mnist_resnet/teacher.pt

1. Bytes: a small store per (dtype, codec), plus float16 + zstd with `--keep-bits` for each value
   of --keep-bits; bytes per row and the ratio against the same boundaries as raw float32. The
   lossless codecs of one dtype must decode to identical values (checked), so they train identical
   students: accuracy depends on the values stored, not on the codec.
2. Accuracy: for every distinct set of stored values (float32, float16, bfloat16, float16 rounded
   to each --keep-bits), a full store, a LIT student and its fine-tuning, then top-1 on the recipe's
   test split. float32 is trained with every --seeds value: their spread is the noise band the
   other rows are judged against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from litcache import ExtractOptions, extract, load_recipe, open_store
from litcache.store.arrays import store_sizes
from litcache.training.blocks import BlockTrainOptions, train_blocks
from litcache.training.metrics import accuracy
from litcache.training.student import load_student

DTYPES = ("float32", "float16", "bfloat16")
CODECS = ("zstd", "lz4", "none")


def bytes_table(recipe, teacher: str | None, samples: int, keep_bits: list[int], work: Path) -> list[dict]:
    """Bytes per row of small stores; also checks that lossless codecs store identical values."""
    rows = []
    configs = [(d, c, None) for d in DTYPES for c in CODECS] + [("float16", "zstd", k) for k in keep_bits]
    for dtype, codec, keep in configs:
        out = work / f"bytes-{dtype}-{codec}-{keep}.zarr"
        extract(recipe, out, ExtractOptions(limit=samples, dtype=dtype, codec=codec, keep_bits=keep),
                teacher_checkpoint=teacher, progress=False, log=lambda m: None)
        store = open_store(out)
        sizes = store_sizes(store)
        bnd = store.boundary_names
        raw32 = sum(4 * int(np.prod(store.manifest.arrays[n].shape)) for n in bnd)
        stored = sum(sizes[n] for n in bnd)
        rows.append({"dtype": dtype, "codec": codec, "keep_bits": keep, "rows": store.rows,
                     "bytes_per_row": sum(sizes.values()) / store.rows, "boundary_bytes_per_row": stored / store.rows,
                     "fraction_of_float32": stored / raw32, "ratio_vs_float32": raw32 / stored})
    for dtype in DTYPES:  # lossless codecs: the same values, so the same students
        stores = [open_store(work / f"bytes-{dtype}-{codec}-None.zarr") for codec in CODECS]
        for name in stores[0].boundary_names:
            first = np.asarray(stores[0].array(name)[...])
            if not all(np.array_equal(first, np.asarray(s.array(name)[...])) for s in stores[1:]):
                raise SystemExit(f"{dtype}: codecs {CODECS} decode {name} differently; they should be lossless")
    return rows


def train_and_score(recipe, store: Path, store_options: ExtractOptions, seed: int, student: str,
                    lit_epochs: int | None, ft_epochs: int | None, work: Path, test_set) -> dict:
    """LIT, fine-tune, test top-1 of the fine-tuned student trained from ``store``."""
    tag = f"{store.stem}-s{seed}"
    t = time.perf_counter()
    quiet = lambda m: None  # noqa: E731
    lit = train_blocks(recipe, store, [student], work / f"{tag}-lit",
                       BlockTrainOptions(mode="lit", epochs=lit_epochs, seed=seed, verify=False, evaluate=False),
                       log=quiet)[0]
    ft = train_blocks(recipe, store, [student], work / f"{tag}-ft",
                      BlockTrainOptions(mode="finetune", epochs=ft_epochs, init=lit["checkpoint"], seed=seed,
                                        verify=False, evaluate=False), log=quiet)[0]
    return {"dtype": store_options.dtype, "keep_bits": store_options.keep_bits, "seed": seed,
            "lit_accuracy": accuracy(load_student(lit["checkpoint"]), test_set),
            "accuracy": accuracy(load_student(ft["checkpoint"]), test_set), "train_seconds": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--teacher", default=None)
    p.add_argument("--student", default=None, help="default: the recipe's first student")
    p.add_argument("--bytes-limit", type=int, default=1024, help="samples (1 view) in each bytes-per-row store")
    p.add_argument("--limit", type=int, default=None, help="samples in each accuracy store (default: all)")
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--keep-bits", default="7,5,3", help="float16 mantissa bits to keep, comma separated")
    p.add_argument("--seeds", default="0,1,2", help="float32 student seeds: the noise band")
    p.add_argument("--lit-epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--ft-epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--json", dest="json_out", help="also write the results here")
    args = p.parse_args()
    recipe = load_recipe(args.recipe)
    student = args.student or next(iter(recipe.students))
    keep_bits = [int(k) for k in args.keep_bits.split(",") if k]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    results: dict = {"recipe": recipe.name, "student": student, "threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["bytes"] = bytes_table(recipe, args.teacher, args.bytes_limit, keep_bits, work)
        print(f"1. bytes per row ({args.bytes_limit} samples x 1 view; "
              "boundaries against the same values as raw float32)")
        print(f"   {'dtype':<9}{'codec':<6}{'keep':>5}{'bytes/row':>11}{'of float32':>12}{'ratio':>8}")
        for r in results["bytes"]:
            print(f"   {r['dtype']:<9}{r['codec']:<6}{r['keep_bits'] or '-':>5}{r['bytes_per_row']:>11,.0f}"
                  f"{r['fraction_of_float32']:>11.1%}{r['ratio_vs_float32']:>7.2f}x")
        print("   lossless codecs of each dtype decode to identical values (checked): accuracy below is per dtype")

        if not args.skip_accuracy:
            test_set = recipe.load_split("test")
            # float32 with every seed (the noise band), every other set of values with the first seed.
            plans = [(ExtractOptions(views=args.views, limit=args.limit, dtype="float32"), seeds)]
            plans += [(ExtractOptions(views=args.views, limit=args.limit, dtype=d), seeds[:1])
                      for d in ("float16", "bfloat16")]
            plans += [(ExtractOptions(views=args.views, limit=args.limit, dtype="float16", keep_bits=k), seeds[:1])
                      for k in keep_bits]
            scored = []
            for options, run_seeds in plans:
                store = work / f"{options.dtype}-k{options.keep_bits}.zarr"
                extract(recipe, store, options, teacher_checkpoint=args.teacher, progress=False, log=lambda m: None)
                scored += [train_and_score(recipe, store, options, seed, student, args.lit_epochs, args.ft_epochs, work,
                                           test_set)
                           for seed in run_seeds]
            results["accuracy"] = scored
            base = [r["accuracy"] for r in scored if r["dtype"] == "float32"]
            mean, spread = statistics.mean(base), (max(base) - min(base))
            results["float32_mean"], results["float32_spread"] = mean, spread
            print(f"2. student accuracy ({student}: LIT then fine-tune; {args.views} views; "
                  f"test split of {len(test_set)})")
            print(f"   float32 over seeds {seeds}: mean {mean:.2%}, spread {spread:.2%} (the noise band)")
            print(f"   {'values':<22}{'seed':>5}{'LIT':>9}{'LIT+ft':>9}{'vs float32 mean':>17}")
            for r in scored:
                values = r["dtype"] + (f" keep {r['keep_bits']} bits" if r["keep_bits"] else "")
                print(f"   {values:<22}{r['seed']:>5}{r['lit_accuracy']:>9.2%}{r['accuracy']:>9.2%}"
                      f"{r['accuracy'] - mean:>+16.2%}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
