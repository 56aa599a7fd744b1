"""What a model measures: top-1 accuracy, parameters, multiply-adds, depth and CPU latency.

Plain functions of a model and data, used by training (per-epoch test accuracy), evaluation and
the sweep; nothing here loads checkpoints.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from .precision import Compute, as_compute

__all__ = ["accuracy", "depth", "model_stats", "cpu_latency"]


@torch.inference_mode()
def accuracy(model: nn.Module, dataset: Dataset, compute: Compute | torch.device | str = "cpu", batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (already on the device) over ``dataset``, computed as ``compute``
    says (a plain device: fp32)."""
    compute = as_compute(compute)
    was = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size):
            with compute.autocast():
                pred = model(compute.input(x)).argmax(1).cpu()
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
        if isinstance(module, nn.ConvTranspose2d):
            macs += inputs[0][0].numel() * module.weight[0].numel()  # weight (in, out/groups, kh, kw)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            macs += output[0].numel() * module.weight[0].numel()  # weight[0]: in/groups * kernel size
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
def cpu_latency(model: nn.Module, batch: torch.Tensor, repeats: int = 5, compute: Compute | None = None) -> float:
    """Median seconds per forward of ``batch`` on the CPU (after one warm-up), computed as
    ``compute`` says (default fp32, contiguous). Leaves the model on the CPU in its own layout."""
    compute = compute or as_compute("cpu")
    model = compute.model(model.cpu().eval())
    batch = compute.input(batch)
    try:
        with compute.autocast():
            model(batch)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                model(batch)
                times.append(time.perf_counter() - t)
    finally:
        model.to(memory_format=torch.contiguous_format)
    return statistics.median(times)
