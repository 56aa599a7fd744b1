"""The `litcache` command line: each command wraps one library call.

Library errors become one ``Error: ...`` line and exit code 1 here, at the edge, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict

import click

from . import __version__
from .cli_options import (
    device_option,
    distill_options,
    echo_json,
    emit_report,
    logger,
    one_store,
    parse_milestones,
    parse_teacher_layers,
    precision_option,
    report_options,
    store_and_recipe,
    store_flag,
    training_options,
    worker_device_option,
)
from .errors import LitcacheError, OptionError
from .extraction.plan import ExtractOptions
from .extraction.replay import verify_store
from .extraction.run import extract
from .recipe import IR_LOSSES, STUDENT_INITS, load_recipe
from .runtime.devices import resolve_device
from .runtime.seeds import SEED_MAX
from .store.encoding import AUTO_CODEC, CODECS, DTYPES
from .store.location import access_error
from .store.verify import format_store_info, store_info
from .sweeps import SWEEP_MODES
from .training.config import MODES

#: Every command's --seed: 0 .. 2^32 - 1 (``litcache.runtime.seeds``).
SEED = click.IntRange(0, SEED_MAX)


def _friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LitcacheError as exc:
            raise click.ClickException(str(exc)) from None
        except Exception as exc:
            refused = access_error(exc)  # a remote store's filesystem without credentials: one line, no traceback
            if refused is None:
                raise
            raise click.ClickException(str(refused)) from None
        except KeyboardInterrupt:
            click.echo(_interrupted_message(click.get_current_context(silent=True)), err=True)
            sys.exit(130)
    return wrapper


def _interrupted_message(ctx: click.Context | None) -> str:
    # Only a command that can continue its work says how; the others have nothing to resume.
    if ctx is not None and any(param.name == "resume" for param in ctx.command.params):
        return "Error: interrupted. Committed work is kept; run the same command with --resume to continue."
    return "Error: interrupted."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="litcache")
def main() -> None:
    """LIT depth compression with a cache of teacher activations.

    \b
    litcache show pipelines/mnist_resnet.py
    litcache train-teacher pipelines/mnist_resnet.py --out runs/mnist/teacher.pt
    litcache extract pipelines/mnist_resnet.py --teacher runs/mnist/teacher.pt --out runs/mnist/train.zarr
    litcache info runs/mnist/train.zarr
    litcache verify runs/mnist/train.zarr

    A store may also be an fsspec URL (s3://bucket/train.zarr, gs://..., memory://...) for extract,
    info, verify, train-blocks, sweep and bench; install the filesystem's package (s3fs, gcsfs) and
    give its storage options as a JSON object in LITCACHE_STORAGE_OPTIONS, e.g.
    LITCACHE_STORAGE_OPTIONS='{"endpoint_url": "http://127.0.0.1:9000"}'.

    Every command that reports takes --json (one JSON document on stdout) and -q.
    """


@main.command("train-teacher")
@click.argument("recipe")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint to write (atomically, every epoch).")
@training_options(epochs_note=" (of the teacher's training)")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
@precision_option
@click.option("--resume", is_flag=True, help="Continue the training saved in --out.")
@click.option("--student", help="Train this student variant from scratch instead (the baseline LIT is compared with).")
@report_options
@_friendly_errors
def train_teacher_cmd(recipe, out, seed, device, precision, resume, student, quiet, as_json, milestones, **hyper):
    """Train RECIPE's teacher with cross-entropy and the recipe's augmentation.

    Example: litcache train-teacher pipelines/mnist_resnet.py --out runs/mnist/teacher.pt
    """
    from .training.teacher import train_teacher

    r = load_recipe(recipe)
    if student:
        r.student_builder(student)
    config = r.teacher_training.with_flags(**hyper, milestones=parse_milestones(milestones))
    result = train_teacher(r, out, config=config, seed=seed, resume=resume,
                           device=device, precision=precision, student=student, log=logger(quiet))
    if as_json:
        return echo_json(result)
    if quiet:
        return
    last = result["history"][-1] if result["history"] else {}
    click.echo(f"{'student ' + student if student else 'teacher'} checkpoint {out}: test accuracy "
               f"{last.get('test_accuracy', float('nan')):.4f}, weights hash {result['weights_hash']}")


@main.command("extract")
@click.argument("recipe")
@click.option("--out", required=True, type=click.Path(), help="Store directory to create, resume or check.")
@click.option("--teacher", "teacher_checkpoint", type=click.Path(),
              help="Teacher checkpoint or Hugging Face model directory (default: the recipe's).")
@click.option("--split", default="train", show_default=True)
@click.option("--views", type=click.IntRange(min=1),
              help="Augmented views per sample. [default: the recipe's views, 1 unless it sets more]")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@precision_option
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float16", show_default=True,
              help="How activations are stored (independent of --precision, how the teacher computes).")
@click.option("--codec", type=click.Choice([*CODECS, AUTO_CODEC]), default=AUTO_CODEC, show_default=True,
              help="auto: the strongest codec whose encoding keeps up with the teacher on this machine (measured "
                   "when the store is created; the store records the codec chosen).")
@click.option("--writer-threads", type=click.IntRange(min=1),
              help="Threads that encode and write shards. [default: the cores the teacher leaves free, or all of them "
                   "between batches when a CPU teacher uses every core]")
@click.option("--keep-bits", type=int, help="Lossy: round activations to N mantissa bits (float16 has 10, bfloat16 7, "
              "float32 23) so they compress further; relative error at most 2^-(N+1) (normal values). Default: exact.")
@click.option("--logit-topk", type=click.IntRange(min=1),
              help="Keep only the K largest logits of every position and their indices (a language model's logits over "
                   "the vocabulary are too large to keep whole); KD then runs over those K. Default: every logit.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--shard-rows", type=click.IntRange(min=1),
              help="Multiple of --chunk-rows (default: about 64 MB of rows).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seeds every view and the row order.")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True,
              help="Store rows in a seeded permutation of the samples, so chunks mix classes.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Finish an interrupted extraction into --out. Committed shards whose "
              "files are missing or of another size are extracted again (on a complete store too).")
@click.option("--repair", is_flag=True, help="--resume, and also read every committed shard: those whose checksums "
              "fail are extracted again, the rest kept.")
@click.option("--overwrite", is_flag=True, help="Replace a store made from something else.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Extract on a local dask cluster of N single-threaded processes (1: in this process).")
@click.option("--scheduler", help="Extract on the running dask cluster at ADDRESS (e.g. tcp://host:8786).")
@report_options
@click.option("-v", "--verbose", is_flag=True, help="Also print the store identity (on stderr).")
@_friendly_errors
def extract_cmd(recipe, out, teacher_checkpoint, resume, repair, overwrite, workers, scheduler, quiet, as_json,
                verbose, **options):
    """Run RECIPE's teacher once and store its section boundaries, logits and labels in a Zarr store.

    Example: litcache extract pipelines/mnist_resnet.py --teacher runs/mnist/teacher.pt --out runs/mnist/train.zarr
    --views 4
    """
    r = load_recipe(recipe)
    options["views"] = options["views"] or r.views
    writer_threads = options.pop("writer_threads")
    result = extract(r, out, ExtractOptions(**options), teacher_checkpoint=teacher_checkpoint, resume=resume,
                     repair=repair, overwrite=overwrite, progress=not quiet, log=logger(quiet), workers=workers,
                     scheduler=scheduler, writer_threads=writer_threads)
    if verbose:
        click.echo(json.dumps(store_info(out)["manifest"].identity.to_dict(), indent=2), err=True)
    if as_json:
        echo_json(result)
    elif not quiet:
        click.echo(f"{result.status}: {out} ({result.rows} rows)")


@main.command("info")
@click.argument("store", type=click.Path(), required=False)
@store_flag
@report_options
@_friendly_errors
def info_cmd(store, store_option, as_json, quiet):
    """Describe STORE: identity, layout, arrays with their stored size and compression ratio.

    Example: litcache info runs/mnist/train.zarr --json
    """
    info = store_info(one_store(store, store_option))
    emit_report(info, as_json, quiet, format_store_info)


@main.command("verify")
@click.argument("store", type=click.Path(), required=False)
@click.argument("recipe", required=False)
@store_flag
@click.option("--replay", type=click.IntRange(min=0), default=0, show_default=True,
              help="Re-run the teacher on N random rows' recorded views and compare.")
@click.option("--recipe", "recipe_option", help="The same as RECIPE.")
@click.option("--teacher", "teacher_checkpoint", type=click.Path(),
              help="Teacher checkpoint for --replay (default: the recorded one).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Which rows --replay picks.")
@report_options
@_friendly_errors
def verify_cmd(store, recipe, store_option, replay, recipe_option, teacher_checkpoint, seed, as_json, quiet):
    """Recompute every shard's checksum of STORE (and optionally replay rows); exit 1 on any failure.

    RECIPE (or --recipe) is the recipe --replay runs; default: the one recorded in the store. The
    store may also be given as --store, the spelling of train-blocks: verify RECIPE --store STORE.

    Example: litcache verify runs/mnist/train.zarr --replay 32
    """
    store, recipe = store_and_recipe(store, recipe, store_option, recipe_option)
    r = None
    if replay:
        from .store.manifest import read_manifest

        r = load_recipe(recipe or read_manifest(store).recipe.source)
    report = verify_store(store, replay=replay, recipe=r, teacher_checkpoint=teacher_checkpoint, seed=seed)
    if as_json:
        echo_json({**asdict(report), "ok": report.ok})
    elif not quiet:
        click.echo(f"{report.path}: {report.shards_checked} shards checked, "
                   f"{len(report.checksum_failures)} checksum failures"
                   + (f"; {report.replayed_rows} rows replayed, {len(report.replay_failures)} differ "
                      f"(max relative error {max(report.replay_max_error.values(), default=0):.2g})" if replay else ""))
        for problem in report.checksum_failures + report.replay_failures:
            click.echo(f"  {problem}")
        if report.debris_note:
            click.echo(f"  note: {report.debris_note}")
    if not report.ok:
        raise click.ClickException(f"store {store} failed verification: "
                                   + (report.checksum_failures + report.replay_failures)[0])


@main.command("train-blocks")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(),
              help="A complete store made by `litcache extract`.")
@click.option("--student", "students", required=True, multiple=True, help="Student variant; repeat to train several.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder; each student gets OUT/STUDENT/.")
@click.option("--mode", type=click.Choice(MODES),
              help="What trains: lit (IR losses and KD), ir (IR only), finetune (KD end to end from --init), kd, "
                   "hints. [default: the recipe's DistillConfig.mode: lit, or kd where that measured better]")
@click.option("--block", "section", type=click.IntRange(min=1), help="--mode ir: train only section I.")
@click.option("--init", type=click.Path(dir_okay=False),
              help="Start from this student checkpoint (required by finetune).")
@training_options(epochs_note=" (of the lit phase, or of finetune with --mode finetune)")
@distill_options()
@click.option("--ir-loss", type=click.Choice(IR_LOSSES),
              help="IR loss per section: mse (the paper's), cosine along the feature axis, or relative (the MSE over "
                   "the target's mean square, Puzzle's normalised MSE). [default: the recipe's]")
@click.option("--student-init", type=click.Choice(STUDENT_INITS),
              help="Sections start from scratch, or from evenly spaced teacher blocks kept in the store "
                   "(teacher-blocks; sections must be runs of blocks). --init replaces either. [default: the recipe's]")
@click.option("--teacher-layers", callback=lambda ctx, param, value: parse_teacher_layers(value),
              help="With teacher-blocks: the teacher blocks the student's blocks start from, numbered across the "
                   "teacher, one per student block, e.g. 1,3,5,7. [default: evenly spaced in each section, the first "
                   "one first: every other block for half the depth] Recorded in the checkpoint's config.")
@click.option("--train-head/--freeze-head", "train_head", default=None,
              help="Train the (teacher's) head with the sections, or keep it frozen. [default: kd and hints train it; "
                   "lit and finetune keep it frozen, as the released LIT code]")
@click.option("--hint-boundary", type=click.IntRange(min=1),
              help="--mode hints: the boundary to regress (default: middle).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--views", type=click.IntRange(min=1),
              help="Train on the first K of the store's views only (default: all), e.g. to measure what "
                   "fewer views give.")
@click.option("--buffer-chunks", type=click.IntRange(min=1), default=4, show_default=True,
              help="Chunks mixed in the shuffle buffer.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True)
@device_option
@precision_option
@click.option("--amp", is_flag=True, hidden=True, help="Old spelling of --precision bf16.")
@click.option("--no-verify", "no_verify", is_flag=True, help="Skip the store's checksum verification before training.")
@click.option("--no-eval", "no_eval", is_flag=True, help="Skip the per-epoch test accuracy.")
@click.option("--online-teacher", type=click.Path(dir_okay=False),
              help="Online LIT, the baseline for comparisons: run this teacher (the store's, same weights hash) on "
                   "every batch instead of reading its boundaries; the store gives its layout and view seeds only.")
@click.option("--fresh-views", is_flag=True,
              help="With --online-teacher: a fresh augmentation of every sample each epoch (the original LIT regime) "
                   "instead of the store's K views.")
@click.option("--recalibrate-bn", is_flag=True,
              help="--mode finetune: re-estimate the sections' BatchNorm statistics along the student's own path "
                   "before the first epoch (logged with the test accuracy before and after).")
@click.option("--resume", is_flag=True, help="Continue from OUT/STUDENT/last.pt.")
@report_options
@_friendly_errors
def train_blocks_cmd(recipe, store_path, students, out, resume, quiet, as_json, milestones, no_verify, no_eval,
                     **options):
    """Train LIT students of RECIPE from a store; the teacher never runs (except with --online-teacher).

    Example: litcache train-blocks pipelines/mnist_resnet.py --store runs/mnist/train.zarr --student resnet8
    --out runs/mnist/lit
    """
    from .training.blocks import BlockTrainOptions, train_blocks

    options["milestones"] = parse_milestones(milestones)
    r = load_recipe(recipe)
    options["mode"] = options["mode"] or r.distill.mode
    results = train_blocks(r, store_path, students, out,
                           BlockTrainOptions(**options, verify=not no_verify, evaluate=not no_eval),
                           resume=resume, log=logger(quiet))
    if as_json:
        return echo_json(results)
    if quiet:
        return
    for result in results:
        last = result["history"][-1] if result["history"] else {}
        acc = f", test accuracy {last['test_accuracy']:.4f}" if "test_accuracy" in last else ""
        click.echo(f"{result['student']}: {result['checkpoint']}{acc}")


@main.command("assemble")
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False))
@_friendly_errors
def assemble_cmd(parts, out):
    """Join sections trained separately (--mode ir --block I) into one student checkpoint.

    Example: litcache assemble runs/b1/resnet8/student.pt runs/b2/resnet8/student.pt runs/b3/resnet8/student.pt
    --out student.pt
    """
    from .training.student import assemble

    result = assemble(parts, out)
    click.echo(f"assembled {out} from " + ", ".join(f"section {i}: {p}" for i, p in result["sections"].items()))


@main.command("sweep")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(),
              help="A complete store made by `litcache extract`.")
@click.option("--student", "students", required=True, multiple=True, help="Student variant; repeat to sweep several.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Sweep folder; each variant gets OUT/VARIANT/.")
@click.option("--seed", "seeds", type=SEED, multiple=True, help="Training seed; repeat to sweep.  [default: 0]")
@click.option("--mode", type=click.Choice(SWEEP_MODES), default="lit", show_default=True,
              help="ir: one task per (variant, section), then assembled.")
@training_options(sweep=True, epochs_note=" (of the lit phase)")
@distill_options(sweep=True)
@click.option("--workers", type=click.IntRange(min=1),
              help="Local dask cluster of N single-threaded processes; 1: in this process, no cluster.  "
                   "[default: one per core]")
@click.option("--scheduler", help="Use the running dask cluster at ADDRESS instead (e.g. tcp://host:8786).")
@click.option("--teacher", type=click.Path(),
              help="Teacher checkpoint (or HF model directory): its test accuracy is marked on the plot.")
@worker_device_option
@precision_option
@report_options
@_friendly_errors
def sweep_cmd(recipe, store_path, students, out, seeds, mode, workers, scheduler, teacher, device, precision, quiet,
              as_json, milestones, **grid):
    """Train every combination of students, seeds and hyperparameter values from one store as dask
    tasks, evaluate each, and write OUT/results.csv, OUT/results.json and OUT/pareto.png.

    Rerunning skips the variants already trained. Exits 1 if any variant failed; the others are kept.

    Example: litcache sweep pipelines/mnist_resnet.py --store runs/mnist/train.zarr --student resnet8
    --student resnet14 --lr 0.05 --lr 0.1 --out runs/mnist/sweep
    """
    from .sweeps import sweep

    if scheduler is None:  # the tasks run on this machine: its device must exist
        resolve_device(device)
    grid["milestones"] = parse_milestones(milestones)
    try:
        result = sweep(load_recipe(recipe), store_path, students, out, seeds=seeds or (0,), grid=grid, mode=mode,
                       workers=workers, scheduler=scheduler, teacher=teacher, device=device, precision=precision,
                       log=logger(quiet))
    except KeyboardInterrupt:  # sweep has no --resume: a rerun is how it continues
        click.echo("Error: interrupted. Finished variants are kept; run the same command again to train the rest.",
                   err=True)
        sys.exit(130)
    if as_json:
        echo_json({"variants": result.rows, "teacher": result.teacher, "results_csv": result.results_csv,
                    "results_json": result.results_json, "pareto_png": result.pareto_png, "failed": len(result.failed)})
    elif not quiet:
        for row in result.rows:
            if row["status"] != "failed":
                click.echo(f"{row['variant']}: {row['status']}, test accuracy {row['accuracy']:.4f}, params "
                           f"{row['params']:,}, MACs/sample {row['macs'] / 1e6:.2f}M, depth {row['depth']}")
        click.echo(f"results: {result.results_csv}, {result.results_json}, {result.pareto_png}")
    for row in result.failed:
        click.echo(f"Error: variant {row['variant']} failed: {row['error']}", err=True)
    if result.failed:
        sys.exit(1)


@main.command("library")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(),
              help="The store the candidates train from (`litcache extract`).")
@click.option("--heldout", "heldout_path", required=True, type=click.Path(),
              help="A store of held-out rows of the same teacher to score candidates on: a validation split, e.g. "
                   "`litcache extract RECIPE --split val --out H` (not the split search measures on).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The library folder.")
@click.option("--depths", multiple=True,
              help="Candidate depths: '1,2,3' for every section, '2:1,3' for section 2; repeat. 0 is the training-free "
                   "candidate (a least-squares map, or the section skipped). [default: the recipe's students' depths, "
                   "the teacher's own, and 0 where the family has it]")
@training_options(epochs_note=" of each trained candidate (IR only)")
@click.option("--student-init", type=click.Choice(STUDENT_INITS),
              help="Trained candidates start from scratch or from evenly spaced teacher blocks. "
                   "[default: the recipe's]")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--score-rows", type=click.IntRange(min=0), default=512, show_default=True,
              help="Held-out rows each candidate is scored on (0: all).")
@click.option("--fit-rows", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Training rows a least-squares map is fitted on (0: all).")
@click.option("--latency-rows", type=click.IntRange(min=1), default=32, show_default=True,
              help="Rows of the batch whose CPU latency is measured.")
@click.option("--teacher", type=click.Path(),
              help="The store's teacher (checkpoint or HF directory), where the store keeps no section weights.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Local dask cluster of N single-threaded processes; 1: in this process.  [default: one per core]")
@click.option("--scheduler", help="Use the running dask cluster at ADDRESS instead.")
@worker_device_option
@report_options
@_friendly_errors
def library_cmd(recipe, store_path, heldout_path, out, depths, student_init, seed, score_rows, fit_rows, latency_rows,
                teacher, workers, scheduler, device, quiet, as_json, milestones, **training):
    """Train a block library: each section's candidates once from one store, scored on held-out rows.

    Writes OUT/library.json and OUT/library.csv; candidates made before with the same store and settings
    are kept, and a killed run resumes.

    Example: litcache library pipelines/cifar10_resnet.py --store runs/c10/train.zarr --heldout runs/c10/val.zarr
    --depths 1,2,3,5,7 --out runs/c10/library
    """
    from .library import LibraryOptions, build_library

    if scheduler is None:
        resolve_device(device)
    training["milestones"] = parse_milestones(milestones)
    options = LibraryOptions(depths=tuple(depths), training=training, student_init=student_init, seed=seed,
                             score_rows=score_rows, fit_rows=fit_rows, latency_rows=latency_rows, device=device,
                             workers=workers, scheduler=scheduler, teacher=teacher)
    library = build_library(load_recipe(recipe), store_path, heldout_path, out, options, log=logger(quiet))
    if as_json:
        return echo_json(library)
    if quiet:
        return
    for c in library["candidates"]:
        click.echo(f"{c['candidate']}: {c['kind']}, params {c['params']:,}, MACs {c['macs']:,}, boundary error "
                   f"{c['boundary_normalised']:.3%}, KL swapped in {c['swap_kl']:.4g}")
    click.echo(f"library: {out}/library.json, {out}/library.csv")


@main.command("search")
@click.argument("library", type=click.Path(file_okay=False))
@click.option("--budget", required=True, help="macs=X, params=X (X may end in K, M, G) or latency=Xms.")
@click.option("--top", type=click.IntRange(min=1), default=1, show_default=True,
              help="Assemble and measure the N best mixes under the budget (to check the predictor).")
@click.option("--predictor", type=click.Choice(("kl", "accuracy", "boundary")), default="kl", show_default=True,
              help="A candidate's score, summed over a mix: the KL it adds swapped alone into the teacher, the "
                   "accuracy (or log-perplexity) it loses there, or its normalised boundary error.")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Fine-tune each assembled mix with KD from the library's store for E epochs (0: none).")
@click.option("--no-uniform", "no_uniform", is_flag=True, help="Do not assemble the uniform mixes to compare with.")
@click.option("--split", default="test", show_default=True, help="The recipe's split students are evaluated on.")
@click.option("--store", "store_path", type=click.Path(), help="The library's store, if it moved.")
@click.option("--out", type=click.Path(file_okay=False), help="[default: LIBRARY/search/BUDGET-PREDICTOR]")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
@report_options
@_friendly_errors
def search_cmd(library, budget, top, predictor, finetune_epochs, no_uniform, split, store_path, out, seed, device,
               quiet, as_json):
    """Pick the best mix of LIBRARY's candidates under a budget, assemble, fine-tune and evaluate it.

    Writes OUT/search.json, OUT/search.csv and OUT/pareto.png: each pick's predicted and measured quality,
    against the uniform mixes, and the predictor's rank correlation.

    Example: litcache search runs/c10/library --budget macs=41M --top 5 --finetune-epochs 10
    """
    from .library import search

    result = search(library, budget, top=top, predictor=predictor, finetune_epochs=finetune_epochs,
                    uniform=not no_uniform, out=out, split=split, store=store_path, seed=seed, device=device,
                    log=logger(quiet))
    if as_json:
        return echo_json(result)
    if quiet:
        return
    for r in result["students"]:
        score = f"accuracy {r['accuracy']:.4f}" if r.get("accuracy") is not None else \
            f"perplexity {r.get('perplexity', float('nan')):.4f}"
        click.echo(f"{r['student']} ({r['kind']}): predicted loss {r['predicted_loss']:.4g}, {score}, "
                   f"MACs {r['macs']:,}, params {r['params']:,}")
    click.echo(f"rank correlation of predicted and measured quality: {result['rank_correlation']}")
    click.echo(f"search: {result['out']}")


@main.command("evaluate")
@click.argument("recipe")
@click.option("--student-checkpoint", type=click.Path(dir_okay=False),
              help="Student checkpoint to evaluate (OUT/STUDENT/student.pt of train-blocks).")
# The old spelling; elsewhere --student names a variant, here it took a checkpoint.
@click.option("--student", "student_alias", type=click.Path(dir_okay=False), hidden=True)
@click.option("--teacher", type=click.Path(),
              help="Teacher checkpoint (or Hugging Face model directory) to evaluate the same way.")
@click.option("--split", default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@device_option
@precision_option
@report_options
@_friendly_errors
def evaluate_cmd(recipe, student_checkpoint, student_alias, teacher, split, batch_size, device, precision, as_json,
                 quiet):
    """Accuracy on RECIPE's real split, parameters, multiply-adds, depth, compression and CPU latency.

    Example: litcache evaluate pipelines/mnist_resnet.py --student-checkpoint runs/mnist/lit/resnet8/student.pt
    --teacher runs/mnist/teacher.pt
    """
    from .evaluation import evaluate, format_evaluation

    if student_checkpoint and student_alias and student_checkpoint != student_alias:
        raise OptionError(f"Expected one student checkpoint, got {student_checkpoint!r} (--student-checkpoint) and "
                          f"{student_alias!r} (--student, its old spelling) instead. Give --student-checkpoint only.")
    student = student_checkpoint or student_alias
    if not student and not teacher:
        raise click.UsageError("give --student-checkpoint CKPT, --teacher CKPT, or both")
    report = evaluate(load_recipe(recipe), student, teacher, split=split, device=device, batch_size=batch_size,
                      precision=precision)
    emit_report(report, as_json, quiet, lambda r: "\n".join(format_evaluation(r, split)))


@main.command("bench")
@click.argument("recipe")
@click.option("--store", "store_path", type=click.Path(), help="Measure this store (default: extract a temporary one).")
@click.option("--teacher", type=click.Path(),
              help="Teacher checkpoint or HF model directory (default: the store's or the recipe's).")
@click.option("--student", help="Student variant for the training steps (default: the recipe's first).")
@click.option("--samples", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Rows of the temporary store.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@device_option
@precision_option
@click.option("--loader-workers", type=click.IntRange(min=0), multiple=True,
              help="Time store reads with this many DataLoader workers; repeat to compare (default: 0).")
@report_options
@_friendly_errors
def bench_cmd(recipe, store_path, teacher, student, samples, batch_size, device, precision, loader_workers, as_json,
              quiet):
    """Measure teacher, store reads, student steps and storage on this machine; print the bottleneck
    and after how many student epochs a store pays for itself.

    Example: litcache bench pipelines/mnist_resnet.py --store runs/mnist_resnet/train.zarr
    """
    from .bench import bench, format_bench

    r = load_recipe(recipe)
    if student:
        r.student_builder(student)
    report = bench(r, store_path, teacher=teacher, student=student, samples=samples, batch_size=batch_size,
                   device=device, precision=precision, loader_workers=loader_workers or (0,), log=logger(quiet))
    emit_report(report, as_json, quiet, format_bench)


@main.command("baseline")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(), help="The store to read boundaries from.")
@click.option("--student", required=True, help="The student variant (its layers per section).")
@click.option("--method", type=click.Choice(["layer-drop", "linear-map"]), default="layer-drop", show_default=True,
              help="layer-drop: keep the teacher layers whose output is closest to the stored boundary; linear-map: "
                   "then fit a least-squares map merged into the last kept layer's MLP (Hugging Face recipes).")
@click.option("--rows", type=click.IntRange(min=0), default=1024, show_default=True,
              help="Stored rows to choose layers and fit the map on (0: all).")
@click.option("--out", required=True, type=click.Path(), help="Writes OUT/STUDENT/student.pt.")
@report_options
@_friendly_errors
def baseline_cmd(recipe, store_path, student, method, rows, out, as_json, quiet):
    """A student made from the store without training (the baselines LIT is compared with): teacher
    layers chosen by their stored boundary error, optionally with a least-squares linear map.

    Example: litcache baseline pipelines/hf_causal_lm.py --store runs/hf/train.zarr --student layers4
    --method linear-map --out runs/hf/linear-map
    """
    from .baselines import make_baseline

    report = make_baseline(load_recipe(recipe), store_path, student, method, out, rows=rows,
                           log=(lambda m: None) if quiet or as_json else click.echo)
    emit_report(report, as_json, quiet, lambda r: f"{r['method']} student written to {r['checkpoint']}")


@main.command("export")
@click.argument("recipe")
@click.option("--student-checkpoint", type=click.Path(dir_okay=False),
              help="Student checkpoint (OUT/STUDENT/student.pt of train-blocks).")
@click.option("--teacher-checkpoint", type=click.Path(dir_okay=False),
              help="Or a teacher checkpoint of train-teacher, to export the teacher.")
@click.option("--out", required=True, type=click.Path(), help="The Hugging Face model directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it is a directory already.")
@report_options
@_friendly_errors
def export_cmd(recipe, student_checkpoint, teacher_checkpoint, out, overwrite, as_json, quiet):
    """Write a student (or teacher) of a Hugging Face recipe as an HF model directory (config, safetensors
    weights, tokenizer) that AutoModelForCausalLM.from_pretrained loads; checked by loading it back.

    Example: litcache export pipelines/hf_causal_lm.py --student-checkpoint runs/hf/lit/layers4/student.pt
    --out runs/hf/student-hf
    """
    from .export import export_student, export_teacher

    if bool(student_checkpoint) == bool(teacher_checkpoint):
        raise click.UsageError("give one of --student-checkpoint CKPT and --teacher-checkpoint CKPT")
    r = load_recipe(recipe)
    report = (export_student(r, student_checkpoint, out, overwrite=overwrite) if student_checkpoint
              else export_teacher(r, teacher_checkpoint, out, overwrite=overwrite))
    emit_report(report, as_json, quiet, lambda r: (
        f"exported {r['student'] or 'the teacher'} ({r['model_type']}, {r['num_hidden_layers']} layers, "
        f"{r['parameters']:,} parameters) to {r['out']}; from_pretrained loads it whole, logits within "
        f"{r['max_logit_difference']:.2g} of litcache's"))


@main.command("show")
@click.argument("recipe")
@click.option("--no-build", is_flag=True, help="Do not build the models (no parameter or block counts).")
@report_options
@_friendly_errors
def show_cmd(recipe, no_build, as_json, quiet):
    """List RECIPE's students, splits, sections and the defaults it trains and extracts with.

    Example: litcache show pipelines/mnist_resnet.py --json
    """
    from .show import format_recipe, show_recipe

    info = show_recipe(load_recipe(recipe), build=not no_build)
    emit_report(info, as_json, quiet, lambda i: "\n".join(format_recipe(i)))


if __name__ == "__main__":
    main()
