"""The option sets the `litcache` commands share, and how a command reports: one definition per
flag, so the same thing has the same shape and help on every command."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, is_dataclass
from pathlib import Path

import click

from .errors import LitcacheError, OptionError
from .recipe import SCHEDULES
from .runtime.devices import parse_device, resolve_device
from .runtime.precision import PRECISIONS

#: What every flag that a recipe sets says about its default.
RECIPE_DEFAULT = "default: the recipe's value"

#: --precision, on every command that runs a network.
precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default=None,
    help="How networks compute: auto (bf16 where the hardware runs it natively, else fp32), fp32, bf16, or fp16 "
         f"(CUDA only, with a gradient scaler). Weights, optimizer state and losses stay float32.  [{RECIPE_DEFAULT}, "
         "auto unless the recipe sets one]")


def check_device_string(ctx, param, value: str) -> str:
    """--device is auto or any torch device string (a usage error otherwise)."""
    try:
        if value != "auto":
            parse_device(value)
    except OptionError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def check_device(ctx, param, value: str) -> str:
    """--device is auto or any torch device string; one that does not exist here fails before any work."""
    check_device_string(ctx, param, value)
    try:
        resolve_device(value)
    except LitcacheError as exc:
        raise click.ClickException(str(exc)) from None
    return value


#: --device, on every command that runs a network.
device_option = click.option(
    "--device", default="auto", show_default=True, callback=check_device,
    help="auto (CUDA when present, else the CPU) or a torch device: cpu, cuda, cuda:1, mps.")
#: sweep's --device: its tasks may run on the workers of a --scheduler on other machines, so only
#: the string is checked while parsing (sweep checks the device here when it runs the tasks here).
worker_device_option = click.option(
    "--device", default="auto", show_default=True, callback=check_device_string,
    help="auto (CUDA when present, else the CPU) or a torch device: cpu, cuda, cuda:1, mps; "
         "with --scheduler, as the workers have it.")


def default_note(sweep: bool) -> str:
    return f"Repeat to sweep several values; {RECIPE_DEFAULT}." if sweep else f"{RECIPE_DEFAULT.capitalize()}."


def all_of(options: list):
    """One decorator applying ``options`` in order (as if stacked above the command)."""
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def training_options(sweep: bool = False, epochs_note: str = ""):
    """The optimizer and schedule flags of every command that trains: train-teacher, train-blocks and
    (each repeatable, to sweep its values) sweep. Every default is the recipe's."""
    many = {"multiple": True} if sweep else {}
    default = default_note(sweep)
    options = [
        click.option("--epochs", type=click.IntRange(min=1), help=f"Epochs{epochs_note}. {default}", **many),
        click.option("--batch-size", type=click.IntRange(min=1), help=f"Rows per step. {default}", **many),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), help=f"Peak learning rate. {default}",
                     **many),
        click.option("--momentum", type=click.FloatRange(min=0), help=f"SGD momentum (Adam's beta1). {default}",
                     **many),
        click.option("--weight-decay", type=click.FloatRange(min=0), help=f"L2 weight decay. {default}", **many),
        click.option("--milestones", help="Comma-separated epochs where the lr is multiplied by gamma (multistep), "
                                          f"e.g. 100,150. {default}", **many),
        click.option("--schedule", type=click.Choice(SCHEDULES),
                     help="Learning-rate schedule: multistep (milestones), cosine or onecycle, the last two with "
                          f"--warmup. {default}", **many),
        click.option("--warmup", type=click.FloatRange(0, 1, max_open=True),
                     help=f"Fraction of the steps spent warming up (cosine, onecycle). {default}", **many),
        click.option("--nesterov/--no-nesterov", default=None, help=f"Nesterov momentum (SGD). {default}", **many),
    ]
    return all_of(options)


def distill_options(sweep: bool = False):
    """LIT's loss weights, on train-blocks and (repeatable) sweep. Every default is the recipe's."""
    many = {"multiple": True} if sweep else {}
    default = default_note(sweep)
    options = [
        click.option("--alpha", type=click.FloatRange(0, 1), help=f"Weight of the hard-label term in KD. {default}",
                     **many),
        click.option("--tau", type=click.FloatRange(min=0, min_open=True), help=f"KD temperature. {default}", **many),
        click.option("--beta", type=click.FloatRange(0, 1), help=f"Weight of KD against the IR losses (lit). {default}",
                     **many),
        click.option("--loss-scale", type=click.FloatRange(min=0, min_open=True),
                     help="Factor on the whole LIT-phase loss (the CIFAR recipes' 0.5 is the released "
                          f"code's /2). {default}",
                     **many),
    ]
    return all_of(options)


def report_options(fn):
    """--json and -q, on every command that reports."""
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress or log lines, no text report: errors only "
                                                          "(with --json, the JSON document still).")(fn)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print the report as one JSON document on stdout (log lines go to stderr).")(fn)


def plain(value):
    """``value`` as JSON data: dataclasses and paths unpacked, non-finite floats as null (JSON has none)."""
    if callable(getattr(value, "to_dict", None)):  # the store manifest: as zarr.json holds it
        value = value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy and torch scalars
        return plain(value.item())
    return value


def echo_json(value) -> None:
    click.echo(json.dumps(plain(value), indent=2, allow_nan=False))


def emit_report(report, as_json: bool, quiet: bool, text) -> None:
    """A command's report: one JSON document with --json, nothing with -q, else ``text(report)``."""
    if as_json:
        echo_json(report)
    elif not quiet:
        click.echo(text(report))


def parse_teacher_layers(value: str | None) -> tuple[int, ...] | None:
    """--teacher-layers "0,3,5,7" -> (0, 3, 5, 7)."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated teacher block numbers, e.g. 0,3,5,7, got {value!r} "
                                 "instead.") from None


def parse_milestones(milestones: str | None) -> tuple[int, ...] | None:
    if milestones is None:
        return None
    if not isinstance(milestones, str):  # sweep: one value per --milestones
        return tuple(parse_milestones(m) for m in milestones)
    try:
        return tuple(int(m) for m in milestones.split(",") if m.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {milestones!r}", param_hint="--milestones")


def logger(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


def one_store(positional: str | None, option: str | None) -> str:
    """STORE given positionally or as --store (the spelling of train-blocks and sweep), not both differently."""
    if positional is not None and option is not None and positional != option:
        raise OptionError(f"Expected one store, got {positional!r} (STORE) and {option!r} (--store) instead. "
                          "Give it once, as STORE or as --store.")
    if positional is None and option is None:
        raise click.UsageError("Missing the store: give it as STORE or --store.")
    return positional if positional is not None else option


#: --store (dest store_option), where STORE may also be given positionally (info, verify).
store_flag = click.option("--store", "store_option", type=click.Path(),
                             help="The store (the same as STORE; the spelling of train-blocks and sweep).")


def is_recipe_ref(ref: str) -> bool:
    """A recipe file (.py) or module:attr, as opposed to a store path or URL."""
    return ref.endswith(".py") or (":" in ref and "://" not in ref and not Path(ref).exists())


def store_and_recipe(first: str | None, second: str | None, store_option: str | None,
                      recipe_option: str | None) -> tuple[str, str | None]:
    """verify's STORE [RECIPE], where STORE may be --store and RECIPE --recipe; with --store, a lone
    positional recipe is RECIPE, as in `litcache train-blocks RECIPE --store STORE`."""
    if (store_option is not None and second is None and first is not None and first != store_option
            and is_recipe_ref(first)):
        first, second = None, first
    store = one_store(first, store_option)
    if second is not None and recipe_option is not None and second != recipe_option:
        raise OptionError(f"Expected one recipe, got {second!r} (RECIPE) and {recipe_option!r} (--recipe) instead. "
                          "Give it once.")
    return store, second if second is not None else recipe_option
