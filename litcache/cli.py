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
from .audit import store_info, verify_store
from .errors import LitcacheError
from .extract import ExtractOptions, extract, human_bytes
from .recipe import load_recipe
from .precision import PRECISIONS
from .recipe import SCHEDULES
from .store import CODECS, DTYPES
from .sweep import SWEEP_MODES
from .train import MODES


def _friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LitcacheError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted. Committed work is kept; run the same command with --resume to continue.", err=True)
            sys.exit(130)
    return wrapper


#: --precision, on every command that runs a network.
_precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default=None,
    help="How networks compute: auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16, or fp16 "
         "(CUDA only, with a gradient scaler). Weights, optimizer state and losses stay float32.  [default: the recipe's, auto]")


def _schedule_options(fn):
    """The optimizer and schedule flags shared by train-teacher and train-blocks (defaults: the recipe's)."""
    for option in reversed([
        click.option("--momentum", type=click.FloatRange(min=0), help="Default: the recipe's."),
        click.option("--weight-decay", type=click.FloatRange(min=0), help="Default: the recipe's."),
        click.option("--milestones", help="Comma-separated epochs where the lr is multiplied by gamma (multistep), "
                                          "e.g. 100,150. Default: the recipe's."),
        click.option("--schedule", type=click.Choice(SCHEDULES),
                     help="Learning-rate schedule: multistep (milestones), cosine or onecycle, the last two with "
                          "--warmup. Default: the recipe's."),
        click.option("--warmup", type=click.FloatRange(0, 1, max_open=True),
                     help="Fraction of the steps spent warming up (cosine, onecycle). Default: the recipe's."),
        click.option("--nesterov/--no-nesterov", default=None, help="Nesterov momentum (SGD). Default: the recipe's."),
    ]):
        fn = option(fn)
    return fn


def _parse_milestones(milestones: str | None) -> tuple[int, ...] | None:
    if milestones is None:
        return None
    try:
        return tuple(int(m) for m in milestones.split(",") if m.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {milestones!r}", param_hint="--milestones")


def _logger(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="litcache")
def main() -> None:
    """LIT depth compression with a cache of teacher activations.

    \b
    litcache train-teacher pipelines/mnist_resnet.py --out runs/mnist/teacher.pt
    litcache extract pipelines/mnist_resnet.py --teacher runs/mnist/teacher.pt --out runs/mnist/train.zarr
    litcache info runs/mnist/train.zarr
    litcache verify runs/mnist/train.zarr
    """


@main.command("train-teacher")
@click.argument("recipe")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (atomically, every epoch).")
@click.option("--epochs", type=click.IntRange(min=1), help="Default: the recipe's.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the recipe's.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Default: the recipe's.")
@_schedule_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("--resume", is_flag=True, help="Continue the training saved in --out.")
@click.option("--student", help="Train this student variant from scratch instead (the baseline LIT is compared with).")
@click.option("-q", "--quiet", is_flag=True)
@_friendly_errors
def train_teacher_cmd(recipe, out, seed, device, precision, resume, student, quiet, milestones, **hyper):
    """Train RECIPE's teacher with cross-entropy and the recipe's augmentation.

    Example: litcache train-teacher pipelines/mnist_resnet.py --out runs/mnist/teacher.pt
    """
    from .teacher import train_teacher

    r = load_recipe(recipe)
    if student:
        r.student_builder(student)
    config = r.teacher_training.with_flags(**hyper, milestones=_parse_milestones(milestones))
    result = train_teacher(r, out, config=config, seed=seed, resume=resume,
                           device=device, precision=precision, student=student, log=_logger(quiet))
    last = result["history"][-1] if result["history"] else {}
    click.echo(f"{'student ' + student if student else 'teacher'} checkpoint {out}: test accuracy {last.get('test_accuracy', float('nan')):.4f}, "
               f"weights hash {result['weights_hash']}")


@main.command("extract")
@click.argument("recipe")
@click.option("--out", required=True, type=click.Path(), help="Store directory to create, resume or check.")
@click.option("--teacher", "teacher_checkpoint", type=click.Path(), help="Teacher checkpoint (default: the recipe's).")
@click.option("--split", default="train", show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=1, show_default=True, help="Augmented views per sample.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float16", show_default=True,
              help="How activations are stored (independent of --precision, how the teacher computes).")
@click.option("--codec", type=click.Choice(CODECS), default="zstd", show_default=True)
@click.option("--keep-bits", type=int, help="Lossy: round activations to N mantissa bits (float16 has 10, bfloat16 7, "
              "float32 23) so they compress further; relative error at most 2^-(N+1) (normal values). Default: exact.")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--shard-rows", type=click.IntRange(min=1), help="Multiple of --chunk-rows (default: about 64 MB of rows).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every view and the row order.")
@click.option("--shuffle/--no-shuffle", default=True, show_default=True,
              help="Store rows in a seeded permutation of the samples, so chunks mix classes.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Finish an interrupted extraction into --out.")
@click.option("--overwrite", is_flag=True, help="Replace a store made from something else.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Extract on a local dask cluster of N single-threaded processes (1: in this process).")
@click.option("--scheduler", help="Extract on the running dask cluster at ADDRESS (e.g. tcp://host:8786).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the store identity.")
@_friendly_errors
def extract_cmd(recipe, out, teacher_checkpoint, resume, overwrite, workers, scheduler, quiet, verbose, **options):
    """Run RECIPE's teacher once and store its section boundaries, logits and labels in a Zarr store.

    Example: litcache extract pipelines/mnist_resnet.py --teacher runs/mnist/teacher.pt --out runs/mnist/train.zarr --views 4
    """
    r = load_recipe(recipe)
    result = extract(r, out, ExtractOptions(**options), teacher_checkpoint=teacher_checkpoint, resume=resume,
                     overwrite=overwrite, progress=not quiet, log=_logger(quiet), workers=workers, scheduler=scheduler)
    if verbose:
        click.echo(json.dumps(store_info(out)["manifest"]["identity"], indent=2), err=True)
    if not quiet:
        click.echo(f"{result.status}: {out} ({result.rows} rows)")


@main.command("info")
@click.argument("store", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_friendly_errors
def info_cmd(store, as_json):
    """Describe STORE: identity, layout, arrays with their stored size and compression ratio.

    Example: litcache info runs/mnist/train.zarr --json
    """
    info = store_info(store)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    m = info["manifest"]
    ident, layout = m["identity"], m["layout"]
    state = "complete" if info["complete"] else f"INCOMPLETE ({info['committed_shards']}/{layout['num_shards']} shards; resume with --resume)"
    lines = [
        f"store        {info['path']}  (format {m['format']} v{m['format_version']}, {state})",
        f"recipe       {ident['recipe']}  (hash {ident['recipe_hash']}, {m['recipe']['source']})",
        f"teacher      {m['teacher']['checkpoint']}  (weights hash {ident['teacher_hash']})",
        f"data         split {ident['split']}, {ident['samples']} samples x {ident['views']} views = {layout['rows']} rows "
        f"(fingerprint {ident['data_fingerprint']}, seed {ident['seed']})",
        f"transforms   {json.dumps(ident['transforms'])}",
        f"values       {ident['dtype']}, " + (f"rounded to {ident['keep_bits']} mantissa bits (lossy)" if ident.get("keep_bits")
                                             else "exact in that dtype"),
        f"computed     teacher forward in {ident.get('precision', 'fp32')}"
        + (f", {'channels_last' if m['compute']['channels_last'] else 'contiguous'} on {m['compute']['device']}" if "compute" in m else ""),
        f"layout       {layout['chunk_rows']} rows/chunk, {layout['shard_rows']} rows/shard, {layout['num_shards']} shards, {layout['row_order']}",
        f"created      {m.get('created')}   completed {m.get('completed', '-')}",
        "versions     " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "arrays:",
    ]
    for name, a in info["arrays"].items():
        ratio = f"{a['ratio']:.2f}x" if a["ratio"] else "-"
        lines.append(f"  {name:<16} {str(tuple(a['shape'])):<22} {a['dtype']:<9} {a['codec']:<5} "
                     f"{human_bytes(a['stored_bytes']):>10} of {human_bytes(a['raw_bytes']):>10}  {ratio}")
    total_ratio = info["raw_bytes"] / info["stored_bytes"] if info["stored_bytes"] else 0
    lines.append(f"total        {human_bytes(info['stored_bytes'])} stored, {human_bytes(info['raw_bytes'])} raw, "
                 f"{total_ratio:.2f}x; {info['raw_bytes'] / max(layout['rows'], 1):.0f} raw bytes/row")
    click.echo("\n".join(lines))


@main.command("verify")
@click.argument("store", type=click.Path())
@click.option("--replay", type=click.IntRange(min=0), default=0, show_default=True,
              help="Re-run the teacher on N random rows' recorded views and compare.")
@click.option("--recipe", help="Recipe for --replay (default: the one recorded in the store).")
@click.option("--teacher", "teacher_checkpoint", type=click.Path(), help="Teacher checkpoint for --replay (default: the recorded one).")
@click.option("--seed", type=int, default=0, show_default=True, help="Which rows --replay picks.")
@click.option("--json", "as_json", is_flag=True)
@_friendly_errors
def verify_cmd(store, replay, recipe, teacher_checkpoint, seed, as_json):
    """Recompute every shard's checksum of STORE (and optionally replay rows); exit 1 on any failure.

    Example: litcache verify runs/mnist/train.zarr --replay 32
    """
    r = None
    if replay:
        from .store import read_manifest

        r = load_recipe(recipe or read_manifest(store)["recipe"]["source"])
    report = verify_store(store, replay=replay, recipe=r, teacher_checkpoint=teacher_checkpoint, seed=seed)
    if as_json:
        click.echo(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        click.echo(f"{report.path}: {report.shards_checked} shards checked, {len(report.checksum_failures)} checksum failures"
                   + (f"; {report.replayed_rows} rows replayed, {len(report.replay_failures)} differ "
                      f"(max relative error {max(report.replay_max_error.values(), default=0):.2g})" if replay else ""))
        for problem in report.checksum_failures + report.replay_failures:
            click.echo(f"  {problem}")
    if not report.ok:
        raise click.ClickException(f"store {store} failed verification: "
                                   + (report.checksum_failures + report.replay_failures)[0])


@main.command("train-blocks")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(), help="A complete store made by `litcache extract`.")
@click.option("--student", "students", required=True, multiple=True, help="Student variant; repeat to train several.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder; each student gets OUT/STUDENT/.")
@click.option("--mode", type=click.Choice(MODES), default="lit", show_default=True)
@click.option("--block", type=click.IntRange(min=1), help="--mode ir: train only section I.")
@click.option("--init", type=click.Path(dir_okay=False), help="Start from this student checkpoint (required by finetune).")
@click.option("--epochs", type=click.IntRange(min=1), help="Default: the recipe's (lit or finetune phase).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the recipe's.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Default: the recipe's.")
@_schedule_options
@click.option("--alpha", type=click.FloatRange(0, 1), help="Weight of the hard-label term in KD. Default: the recipe's.")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), help="KD temperature. Default: the recipe's.")
@click.option("--beta", type=click.FloatRange(0, 1), help="Weight of KD against the IR losses (lit). Default: the recipe's.")
@click.option("--loss-scale", type=click.FloatRange(min=0, min_open=True),
              help="Factor on the whole LIT-phase loss (the CIFAR recipes' 0.5 is the released code's /2). Default: the recipe's.")
@click.option("--hint-boundary", type=click.IntRange(min=1), help="--mode hints: the boundary to regress (default: middle).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--views", type=click.IntRange(min=1),
              help="Train on the first K of the store's views only (default: all), e.g. to measure what fewer views give.")
@click.option("--buffer-chunks", type=click.IntRange(min=1), default=4, show_default=True, help="Chunks mixed in the shuffle buffer.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("--amp", is_flag=True, hidden=True, help="Old spelling of --precision bf16.")
@click.option("--no-verify", "no_verify", is_flag=True, help="Skip the store's checksum verification before training.")
@click.option("--no-eval", "no_eval", is_flag=True, help="Skip the per-epoch test accuracy.")
@click.option("--online-teacher", type=click.Path(dir_okay=False),
              help="Online LIT, the baseline for comparisons: run this teacher (the store's, same weights hash) on every "
                   "batch instead of reading its boundaries; the store gives its layout and view seeds only.")
@click.option("--fresh-views", is_flag=True,
              help="With --online-teacher: a fresh augmentation of every sample each epoch (the original LIT regime) "
                   "instead of the store's K views.")
@click.option("--recalibrate-bn", is_flag=True,
              help="--mode finetune: re-estimate the sections' BatchNorm statistics along the student's own path "
                   "before the first epoch (logged with the test accuracy before and after).")
@click.option("--resume", is_flag=True, help="Continue from OUT/STUDENT/last.pt.")
@click.option("-q", "--quiet", is_flag=True)
@_friendly_errors
def train_blocks_cmd(recipe, store_path, students, out, resume, quiet, milestones, no_verify, no_eval, **options):
    """Train LIT students of RECIPE from a store; the teacher never runs (except with --online-teacher).

    Example: litcache train-blocks pipelines/mnist_resnet.py --store runs/mnist/train.zarr --student resnet8 --out runs/mnist/lit
    """
    from .train import BlockTrainOptions, train_blocks

    options["milestones"] = _parse_milestones(milestones)
    r = load_recipe(recipe)
    results = train_blocks(r, store_path, students, out, BlockTrainOptions(**options, verify=not no_verify, evaluate=not no_eval),
                           resume=resume, log=_logger(quiet))
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

    Example: litcache assemble runs/b1/resnet8/student.pt runs/b2/resnet8/student.pt runs/b3/resnet8/student.pt --out student.pt
    """
    from .student import assemble

    result = assemble(parts, out)
    click.echo(f"assembled {out} from " + ", ".join(f"section {i}: {p}" for i, p in result["sections"].items()))


@main.command("sweep")
@click.argument("recipe")
@click.option("--store", "store_path", required=True, type=click.Path(), help="A complete store made by `litcache extract`.")
@click.option("--student", "students", required=True, multiple=True, help="Student variant; repeat to sweep several.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Sweep folder; each variant gets OUT/VARIANT/.")
@click.option("--seed", "seeds", type=int, multiple=True, help="Training seed; repeat to sweep.  [default: 0]")
@click.option("--mode", type=click.Choice(SWEEP_MODES), default="lit", show_default=True,
              help="ir: one task per (variant, section), then assembled.")
@click.option("--epochs", type=click.IntRange(min=1), multiple=True, help="Repeat any hyperparameter to sweep its values.")
@click.option("--batch-size", type=click.IntRange(min=1), multiple=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), multiple=True)
@click.option("--momentum", type=click.FloatRange(min=0), multiple=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), multiple=True)
@click.option("--alpha", type=click.FloatRange(0, 1), multiple=True)
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), multiple=True)
@click.option("--beta", type=click.FloatRange(0, 1), multiple=True)
@click.option("--workers", type=click.IntRange(min=1),
              help="Local dask cluster of N single-threaded processes; 1: in this process, no cluster.  [default: one per core]")
@click.option("--scheduler", help="Use the running dask cluster at ADDRESS instead (e.g. tcp://host:8786).")
@click.option("--teacher", type=click.Path(dir_okay=False), help="Teacher checkpoint: its test accuracy is marked on the plot.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("-q", "--quiet", is_flag=True)
@_friendly_errors
def sweep_cmd(recipe, store_path, students, out, seeds, mode, workers, scheduler, teacher, device, precision, quiet, **grid):
    """Train every combination of students, seeds and hyperparameter values from one store as dask
    tasks, evaluate each, and write OUT/results.csv, OUT/results.json and OUT/pareto.png.

    Rerunning skips the variants already trained. Exits 1 if any variant failed; the others are kept.

    Example: litcache sweep pipelines/mnist_resnet.py --store runs/mnist/train.zarr --student resnet8 --student resnet14 --lr 0.05 --lr 0.1 --out runs/mnist/sweep
    """
    from .sweep import sweep

    try:
        result = sweep(load_recipe(recipe), store_path, students, out, seeds=seeds or (0,), grid=grid, mode=mode,
                       workers=workers, scheduler=scheduler, teacher=teacher, device=device, precision=precision,
                       log=_logger(quiet))
    except KeyboardInterrupt:  # before the generic handler, whose advice (--resume) is extract's
        click.echo("Error: interrupted. Finished variants are kept; run the same command again to train the rest.", err=True)
        sys.exit(130)
    for row in result.rows:
        if row["status"] != "failed":
            click.echo(f"{row['variant']}: {row['status']}, test accuracy {row['accuracy']:.4f}, params {row['params']:,}, "
                       f"MACs/sample {row['macs'] / 1e6:.2f}M, depth {row['depth']}")
    click.echo(f"results: {result.results_csv}, {result.results_json}, {result.pareto_png}")
    for row in result.failed:
        click.echo(f"Error: variant {row['variant']} failed: {row['error']}", err=True)
    if result.failed:
        sys.exit(1)


@main.command("evaluate")
@click.argument("recipe")
@click.option("--student", type=click.Path(dir_okay=False), help="Student checkpoint to evaluate.")
@click.option("--teacher", type=click.Path(dir_okay=False), help="Teacher checkpoint to evaluate the same way.")
@click.option("--split", default="test", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("--json", "as_json", is_flag=True)
@_friendly_errors
def evaluate_cmd(recipe, student, teacher, split, batch_size, device, precision, as_json):
    """Accuracy on RECIPE's real split, parameters, multiply-adds, depth, compression and CPU latency.

    Example: litcache evaluate pipelines/mnist_resnet.py --student runs/mnist/lit/resnet8/student.pt --teacher runs/mnist/teacher.pt
    """
    from .evaluate import evaluate

    if not student and not teacher:
        raise click.UsageError("give --student CKPT, --teacher CKPT, or both")
    report = evaluate(load_recipe(recipe), student, teacher, split=split, device=device, batch_size=batch_size,
                      precision=precision)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for role in ("teacher", "student"):
        if role in report:
            m = report[role]
            if report.get("task") == "generation":
                quality = (f"MSE vs teacher {m['mse_vs_teacher']:.4g}, PSNR {m['psnr_vs_teacher_db']} dB"
                           if "mse_vs_teacher" in m else "the reference")
            else:
                quality = f"top-1 {m['accuracy']:.4f}"
            line = (f"{role:<8} {quality} on {m['samples']} {split} samples  params {m['params']:,}  "
                    f"MACs/sample {m['macs_per_sample'] / 1e6:.2f}M  depth {m['depth']}  "
                    f"CPU {m['cpu_latency_ms_per_batch']:.1f} ms/batch of {m['latency_batch_size']}"
                    + (f"  ({m['compute']})" if m.get("compute") else ""))
            if role == "student":
                line += (f"  compression x{m['compression_by_depth']} depth, x{m['compression_by_params']} params, "
                         f"x{m['compression_by_macs']} MACs")
                if m.get("samples_png"):
                    line += f"  samples: {m['samples_png']}"
            click.echo(line)


@main.command("bench")
@click.argument("recipe")
@click.option("--store", "store_path", type=click.Path(), help="Measure this store (default: extract a temporary one).")
@click.option("--teacher", type=click.Path(dir_okay=False), help="Teacher checkpoint (default: the store's or the recipe's).")
@click.option("--student", help="Student variant for the training steps (default: the recipe's first).")
@click.option("--samples", type=click.IntRange(min=2), default=1024, show_default=True, help="Rows of the temporary store.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_precision_option
@click.option("--loader-workers", type=click.IntRange(min=0), multiple=True,
              help="Time store reads with this many DataLoader workers; repeat to compare (default: 0).")
@click.option("--json", "as_json", is_flag=True)
@_friendly_errors
def bench_cmd(recipe, store_path, teacher, student, samples, batch_size, device, precision, loader_workers, as_json):
    """Measure teacher, store reads, student steps and storage on this machine; print the bottleneck
    and after how many student epochs a store pays for itself.

    Example: litcache bench pipelines/mnist_resnet.py --store runs/mnist_resnet/train.zarr
    """
    from .bench import bench

    r = load_recipe(recipe)
    if student:
        r.student_builder(student)
    report = bench(r, store_path, teacher=teacher, student=student, samples=samples, batch_size=batch_size,
                   device=device, precision=precision, loader_workers=loader_workers or (0,), log=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    extract_rate = f"{report['extract_rows_per_s']:,.0f}" if report["extract_rows_per_s"] else "-"
    lines = [
        f"device {report['device']}, student {report['student']}, batch {report['batch_size']}, {report['compute']}",
        f"  teacher forward          {report['teacher_forward_rows_per_s']:>10,.0f} rows/s   (extraction {extract_rate} rows/s)",
        f"  store read + decode      {report['store_read_rows_per_s']:>10,.0f} rows/s   ({report['store_read_mb_per_s']:,.0f} MB/s decoded)",
        f"  student LIT step, store  {report['student_step_rows_per_s_from_store']:>10,.0f} rows/s",
        f"  student LIT step, memory {report['student_step_rows_per_s_from_memory']:>10,.0f} rows/s   "
        f"(store/memory time {report['loader_overhead']:.2f})",
        f"  training bottleneck: {report['training_bottleneck']}",
        f"  the student consumes {report['student_consumes_mb_per_s']:,.0f} MB/s of decoded rows; the reader delivers "
        + ", ".join(f"{r['mb_per_s']:,.0f} MB/s with {r['loader_workers']} loader workers" for r in report["store_read_by_workers"])
        + (f"; {report['decode_workers_needed']} loader workers keep it fed" if report["decode_workers_needed"] is not None
           else "; none of these keeps it fed: try more --loader-workers"),
        "  bytes per row (boundaries):   " + "   ".join(
            f"{s['dtype']}+{s['codec']} {s['bytes_per_row']:,.0f} ({s['ratio_vs_float32']:.1f}x)" for s in report["storage"])
        + ("" if any(s["dtype"] == "float32" for s in report["storage"]) else "   (float32 rows need a float32 store)"),
    ]
    if report["break_even_epochs"] is not None:
        lines.append(f"  online/cached time per epoch {report['online_over_cached_per_epoch']:.2f}: extraction pays for itself after "
                     f"{report['break_even_epochs']:.1f} student epochs (variants x epochs over the same rows)")
    else:
        lines.append("  a cached epoch is not cheaper than an online one here: the store does not pay off on this machine")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
