"""Training: LIT steps fed from the store, from the same rows in memory, and online (teacher each step).

    python benchmarks/train_bench.py --recipe pipelines/mnist_resnet.py --store runs/mnist_resnet/train.zarr \
        --teacher runs/mnist_resnet/teacher.pt --student resnet8 --epochs 1

The three runs share the student initialisation, the sampler (same rows, same order), the loss
code (`litcache.train.step_losses`) and the optimizer; only where the teacher's boundaries come
from differs. Printed: rows/s of each, the loader ratio (memory / store time), and the cost of
cached LIT (extraction once, from the store's manifest, + E epochs) against online LIT.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from litcache import ChunkShuffleSampler, MemoryDataset, StoreDataset, load_recipe, open_store
from litcache.data import ViewRows
from litcache.dataset import make_loader
from litcache.sections import split_model
from litcache.student import build_student
from litcache.teacher import load_teacher
from litcache.train import step_losses


def run(split, batches, epochs: int, sampler, config) -> float:
    """Seconds for ``epochs`` epochs of LIT steps over the batches that ``batches(epoch)`` yields."""
    params = [p for s in split.sections for p in s.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    split.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in batches():
            batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}
            loss, _ = step_losses(split, batch, "lit", config)
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
    args = p.parse_args()

    recipe = load_recipe(args.recipe)
    store = open_store(args.store)
    layout, ident = store.manifest["layout"], store.manifest["identity"]
    config = {"alpha": recipe.distill.alpha, "tau": recipe.distill.tau, "beta": recipe.distill.beta}
    fields = [*store.boundary_names, "logits", "labels"]
    sampler = ChunkShuffleSampler.for_store(store, args.batch_size, num_workers=args.loader_workers)

    def fresh_student():
        torch.manual_seed(0)
        return build_student(recipe, args.student, store.module_state("stem"), store.module_state("head"))[1]

    dataset = StoreDataset(store, fields, cache_chunks=10)
    store_loader = make_loader(dataset, sampler, num_workers=args.loader_workers)
    memory = MemoryDataset.from_store(dataset)
    memory_loader = make_loader(memory, sampler)

    teacher, _, _ = load_teacher(recipe, args.teacher or store.manifest["teacher"]["checkpoint"])
    teacher_split = split_model(teacher, recipe).eval()
    views = ViewRows.from_identity(recipe.load_split(ident["split"]), ident, recipe.augmentation_for(ident["split"]))
    view_loader = DataLoader(views, batch_sampler=sampler, num_workers=args.loader_workers)

    def online_batches():
        for x, y, *_ in view_loader:
            with torch.inference_mode():
                outs, logits = teacher_split.boundaries(x)
            yield {**{f"boundaries/{i}": t.clone() for i, t in enumerate(outs)}, "logits": logits.clone(), "labels": y}

    rows = len(dataset) // layout["views"] * args.epochs
    seconds = {
        "store": run(fresh_student(), lambda: iter(store_loader), args.epochs, sampler, config),
        "memory": run(fresh_student(), lambda: iter(memory_loader), args.epochs, sampler, config),
        "online": run(fresh_student(), online_batches, args.epochs, sampler, config),
    }
    print(f"LIT {args.student} from {args.store}: {rows} rows ({args.epochs} epochs x {rows // args.epochs}), "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.loader_workers} loader workers")
    for name, s in seconds.items():
        print(f"   {name:<7} {rows / s:>8,.0f} rows/s  ({s:.1f} s)")
    print(f"   loader ratio store/memory time = {seconds['store'] / seconds['memory']:.2f}")
    extract_s = store.manifest.get("timing", {}).get("seconds")
    if extract_s:
        per_epoch_online = seconds["online"] / args.epochs
        per_epoch_cached = seconds["store"] / args.epochs
        saving = per_epoch_online - per_epoch_cached
        print(f"   extraction of this store took {extract_s:.1f} s for {layout['rows']} rows ({layout['views']} views)")
        if saving > 0:
            print(f"   online/cached epoch time = {per_epoch_online / per_epoch_cached:.2f}; the extraction pays for itself "
                  f"after {extract_s / saving:.1f} student epochs (variants x epochs)")
        else:
            print("   cached epochs are not faster than online ones here: the store does not pay off on this machine")


if __name__ == "__main__":
    main()
