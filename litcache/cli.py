"""The `litcache` command line: each command wraps one library call.

Library errors become one ``Error: ...`` line and exit code 1 here, at the edge, and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import asdict, replace

import click

from . import __version__
from .audit import store_info, verify_store
from .errors import LitcacheError
from .extract import ExtractOptions, extract
from .recipe import load_recipe
from .store import CODECS, DTYPES


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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="Continue the training saved in --out.")
@click.option("-q", "--quiet", is_flag=True)
@_friendly_errors
def train_teacher_cmd(recipe, out, epochs, batch_size, lr, seed, device, resume, quiet):
    """Train RECIPE's teacher with cross-entropy and the recipe's augmentation.

    Example: litcache train-teacher pipelines/mnist_resnet.py --out runs/mnist/teacher.pt
    """
    from .teacher import train_teacher

    r = load_recipe(recipe)
    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "lr": lr}.items() if v is not None}
    result = train_teacher(r, out, config=replace(r.teacher_training, **overrides), seed=seed, resume=resume,
                           device=device, log=_logger(quiet))
    last = result["history"][-1] if result["history"] else {}
    click.echo(f"teacher checkpoint {out}: test accuracy {last.get('test_accuracy', float('nan')):.4f}, "
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
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default="float16", show_default=True)
@click.option("--codec", type=click.Choice(CODECS), default="zstd", show_default=True)
@click.option("--chunk-rows", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--shard-rows", type=click.IntRange(min=1), help="Multiple of --chunk-rows (default: about 64 MB of rows).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every view.")
@click.option("--loader-workers", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Finish an interrupted extraction into --out.")
@click.option("--overwrite", is_flag=True, help="Replace a store made from something else.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or log lines.")
@click.option("-v", "--verbose", is_flag=True, help="Also print the store identity.")
@_friendly_errors
def extract_cmd(recipe, out, teacher_checkpoint, resume, overwrite, quiet, verbose, **options):
    """Run RECIPE's teacher once and store its section boundaries, logits and labels in a Zarr store.

    Example: litcache extract pipelines/mnist_resnet.py --teacher runs/mnist/teacher.pt --out runs/mnist/train.zarr --views 4
    """
    r = load_recipe(recipe)
    result = extract(r, out, ExtractOptions(**options), teacher_checkpoint=teacher_checkpoint, resume=resume,
                     overwrite=overwrite, progress=not quiet, log=_logger(quiet))
    if verbose:
        click.echo(json.dumps(store_info(out)["manifest"]["identity"], indent=2), err=True)
    if not quiet:
        click.echo(f"{result.status}: {out} ({result.rows} rows)")


def _format_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n:.1f} TB"


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
        f"layout       {layout['chunk_rows']} rows/chunk, {layout['shard_rows']} rows/shard, {layout['num_shards']} shards, {layout['row_order']}",
        f"created      {m.get('created')}   completed {m.get('completed', '-')}",
        f"versions     " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "arrays:",
    ]
    for name, a in info["arrays"].items():
        ratio = f"{a['ratio']:.2f}x" if a["ratio"] else "-"
        lines.append(f"  {name:<16} {str(tuple(a['shape'])):<22} {a['dtype']:<9} {a['codec']:<5} "
                     f"{_format_bytes(a['stored_bytes']):>10} of {_format_bytes(a['raw_bytes']):>10}  {ratio}")
    total_ratio = info["raw_bytes"] / info["stored_bytes"] if info["stored_bytes"] else 0
    lines.append(f"total        {_format_bytes(info['stored_bytes'])} stored, {_format_bytes(info['raw_bytes'])} raw, "
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


if __name__ == "__main__":
    main()
