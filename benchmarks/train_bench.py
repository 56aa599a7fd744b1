"""Training: LIT steps fed from the store, from the same rows in memory, and online (teacher each step).

    python benchmarks/train_bench.py --recipe pipelines/mnist_resnet.py --store runs/mnist_resnet/train.zarr \
        --teacher runs/mnist_resnet/teacher.pt --student resnet8 --epochs 1

The three runs share the student initialisation, the sampler (same rows, same order), the loss
code (`litcache.training.step.step_losses`) and the optimizer; only where the teacher's boundaries come
from differs. Printed: rows/s of each, the loader ratio (store / memory time, median over --repeats
rotated runs), and the cost of
cached LIT (extraction once, from the store's manifest, + E epochs) against online LIT.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from litcache import ChunkShuffleSampler, MemoryDataset, StoreDataset, load_recipe, open_store
from litcache.runtime.precision import resolve_compute
from litcache.training.config import LossWeights, Phase
from litcache.training.dataset import make_loader
from litcache.training.online import OnlineTeacherDataset
from litcache.training.step import set_train_mode, step_losses, trainable_parameters
from litcache.training.student import build_student


def run(split, batches, epochs: int, sampler, config, compute) -> float:
    """Seconds for ``epochs`` epochs of LIT steps over the batches that ``batches(epoch)`` yields."""
    optimizer = torch.optim.SGD(trainable_parameters(split, Phase("lit")), lr=0.01, momentum=0.9)
    set_train_mode(split, Phase("lit"))
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in batches():
            batch = {k: compute.input(v) for k, v in batch.items()}
            with compute.autocast():
                loss, _ = step_losses(split, batch, Phase("lit"), LossWeights.from_record(config))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="pipelines/mnist_resnet.py")
    p.add_argument("--store", required=True)
    p.add_argument("--teacher", default=None)
    p.add_argument("--student", default="resnet8")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="each source this many times, in rotated order")
    p.add_argument("--precision", default=None, help="default: the recipe's (auto)")
    args = p.parse_args()

    recipe = load_recipe(args.recipe)
    store = open_store(args.store)
    layout = store.manifest.layout
    config = {"alpha": recipe.distill.alpha, "tau": recipe.distill.tau, "beta": recipe.distill.beta,
              "loss_scale": recipe.distill.loss_scale}
    compute = resolve_compute(args.precision or recipe.precision, "cpu", recipe.students[args.student]())
    fields = [*store.boundary_names, "logits", "labels"]
    sampler = ChunkShuffleSampler.for_store(store, args.batch_size, num_workers=args.loader_workers)

    def fresh_student():
        torch.manual_seed(0)
        model, split = build_student(recipe, args.student, store.module_state("stem"), store.module_state("head"))
        compute.model(model)
        return split

    dataset = StoreDataset(store, fields, cache_chunks=10)
    memory = MemoryDataset.from_store(dataset)
    online = OnlineTeacherDataset(recipe, store, args.teacher or store.manifest.teacher.checkpoint, fields, "cpu",
                                  precision=store.manifest.precision)
    loaders = {"store": make_loader(dataset, sampler, num_workers=args.loader_workers),
               "memory": make_loader(memory, sampler),
               "online": make_loader(online, sampler)}

    rows = len(dataset) // layout.views * args.epochs
    runs = {name: [] for name in loaders}
    for repeat in range(args.repeats):
        # Rotate the order each repeat, so no source always runs first (or last) on a noisy machine.
        order = list(loaders)[repeat % 3:] + list(loaders)[:repeat % 3]
        for name in order:
            runs[name].append(run(fresh_student(), lambda: iter(loaders[name]), args.epochs, sampler, config, compute))
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    ratios = [s / m for s, m in zip(runs["store"], runs["memory"])]
    print(f"LIT {args.student} from {args.store}: {rows} rows ({args.epochs} epochs x {rows // args.epochs}), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {compute.describe()}, "
          f"{args.loader_workers} loader workers, median of {args.repeats} repeats")
    for name, s in seconds.items():
        print(f"   {name:<7} {rows / s:>8,.0f} rows/s  ({s:.1f} s; runs {', '.join(f'{t:.1f}' for t in runs[name])})")
    print(f"   loader ratio store/memory time = {statistics.median(ratios):.2f} (median of the per-repeat ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; target <= 1.10)")
    extract_s = store.manifest.timing.seconds if store.manifest.timing else None
    if extract_s:
        per_epoch_online = seconds["online"] / args.epochs
        per_epoch_cached = seconds["store"] / args.epochs
        saving = per_epoch_online - per_epoch_cached
        print(f"   extraction of this store took {extract_s:.1f} s for {layout.rows} rows ({layout.views} views)")
        if saving > 0:
            print(f"   online/cached epoch time = {per_epoch_online / per_epoch_cached:.2f}; the extraction pays "
                  f"for itself after {extract_s / saving:.1f} student epochs (variants x epochs)")
        else:
            print("   cached epochs are not faster than online ones here: the store does not pay off on this machine")


if __name__ == "__main__":
    main()
