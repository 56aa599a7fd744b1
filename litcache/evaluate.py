"""`litcache evaluate`: accuracy on the recipe's real split, size, cost, depth and CPU latency."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .data import resolve_device
from .recipe import Recipe
from .student import load_student
from .teacher import load_teacher

__all__ = ["accuracy", "model_stats", "evaluate_model", "evaluate"]


@torch.inference_mode()
def accuracy(model: nn.Module, dataset: Dataset, device: torch.device | str = "cpu", batch_size: int = 256) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            pred = model(x.to(device)).argmax(1).cpu()
            correct += (pred == torch.as_tensor(y)).sum().item()
            total += len(y)
    finally:
        model.train(was)
    return correct / max(total, 1)


def depth(model: nn.Module) -> int:
    """Weighted layers on the longest path, counted as papers count ResNet depth: convs + linears
    outside shortcuts (ResNet-20 -> 20)."""
    return sum(1 for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear, nn.ConvTranspose2d)) and "shortcut" not in name and "downsample" not in name)


@torch.inference_mode()
def model_stats(model: nn.Module, sample: torch.Tensor) -> dict:
    """Parameters, multiply-adds per sample (convolutions and linears) and depth."""
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)):
            kernel = module.weight[0].numel()  # in_channels/groups * kernel size
            macs += output[0].numel() * kernel
        elif isinstance(module, nn.Linear):
            macs += output[0].numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        model(sample[:1])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {"params": sum(p.numel() for p in model.parameters()), "macs_per_sample": macs, "depth": depth(model)}


@torch.inference_mode()
def cpu_latency(model: nn.Module, batch: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds per forward of ``batch`` on the CPU (after one warm-up)."""
    model = model.cpu().eval()
    model(batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def evaluate_model(model: nn.Module, dataset: Dataset, device: str = "auto", batch_size: int = 256) -> dict:
    dev = resolve_device(device)
    batch = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
    stats = model_stats(model.cpu(), batch)
    latency = cpu_latency(model, batch)
    model.to(dev)
    return {**stats, "accuracy": accuracy(model, dataset, dev, batch_size), "samples": len(dataset),
            "cpu_latency_ms_per_batch": round(latency * 1000, 3), "latency_batch_size": len(batch)}


def evaluate(recipe: Recipe, student: str | Path | None = None, teacher: str | Path | None = None, *,
             split: str = "test", device: str = "auto", batch_size: int = 256) -> dict:
    """Evaluate a student checkpoint and/or the teacher on the recipe's real ``split`` (not a store)."""
    recipe.check_split_name(split)
    dataset = recipe.load_split(split)
    report: dict = {"recipe": recipe.name, "split": split}
    sample = torch.stack([dataset[0][0]])
    teacher_stats = model_stats(recipe.build_teacher(), sample)  # architecture only: no weights needed
    if teacher is not None:
        model, _, path = load_teacher(recipe, teacher)
        report["teacher"] = {"checkpoint": path, **evaluate_model(model, dataset, device, batch_size)}
    if student is not None:
        model = load_student(student, recipe)
        result = {"checkpoint": str(student), **evaluate_model(model, dataset, device, batch_size)}
        result["compression_by_depth"] = round(teacher_stats["depth"] / result["depth"], 3)
        result["compression_by_params"] = round(teacher_stats["params"] / result["params"], 3)
        result["compression_by_macs"] = round(teacher_stats["macs_per_sample"] / result["macs_per_sample"], 3)
        report["student"] = result
    return report
