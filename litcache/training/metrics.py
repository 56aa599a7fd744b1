"""What a model measures: top-1 accuracy, parameters, multiply-adds, depth and CPU latency.

Plain functions of a model and data, used by training (per-epoch test accuracy), evaluation and
the sweep; nothing here loads checkpoints.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.models.vision_transformer import EncoderBlock

from ..runtime.eval_mode import evaluating
from ..runtime.precision import Compute, as_compute
from ..store.layout import IGNORE_INDEX

__all__ = ["accuracy", "perplexity", "test_score", "depth", "model_stats", "cpu_latency"]


@torch.inference_mode()
def accuracy(model: nn.Module, dataset: Dataset, compute: Compute | torch.device | str = "cpu",
             batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (already on the device) over ``dataset``, computed as ``compute``
    says (a plain device: fp32)."""
    compute = as_compute(compute)
    correct = total = 0
    with evaluating(model):
        for x, y in DataLoader(dataset, batch_size=batch_size):
            with compute.autocast():
                pred = model(compute.input(x)).argmax(1).cpu()
            correct += (pred == torch.as_tensor(y)).sum().item()
            total += len(y)
    return correct / max(total, 1)


#: Transformer blocks, each counted as one layer of depth (as papers count a ViT's or GPT's depth).
#: A model's own block class can join by setting ``litcache_block = True``.
_BLOCK_TYPES = (EncoderBlock, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _is_block(module: nn.Module) -> bool:
    return isinstance(module, _BLOCK_TYPES) or getattr(module, "litcache_block", False)


@torch.inference_mode()
def perplexity(model: nn.Module, dataset: Dataset, compute: Compute | torch.device | str = "cpu",
               batch_size: int = 64) -> float:
    """exp(mean next-token negative log-likelihood) of a language model over the valid positions of
    ``dataset`` (targets padded with IGNORE_INDEX); lower is better, the vocabulary size is chance."""
    compute = as_compute(compute)
    nll, count = 0.0, 0
    with evaluating(model):
        for x, y in DataLoader(dataset, batch_size=batch_size):
            with compute.autocast():
                logits = model(compute.input(x)).float()
            y = y.to(logits.device)
            nll += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((y != IGNORE_INDEX).sum())
    return math.exp(nll / max(count, 1))


def test_score(model: nn.Module, dataset: Dataset, compute: Compute, task: str) -> dict:
    """The per-epoch test figure of a recipe's task: ``test_accuracy``, or a language model's ``test_perplexity``."""
    if task == "language_model":
        return {"test_perplexity": perplexity(model, dataset, compute)}
    return {"test_accuracy": accuracy(model, dataset, compute)}


def depth(model: nn.Module) -> int:
    """Layers on the longest path, counted as papers count them: a transformer's blocks (ViT-8 -> 8);
    otherwise convs + linears outside shortcuts (ResNet-20 -> 20)."""
    blocks = sum(1 for m in model.modules() if _is_block(m))
    if blocks:
        return blocks
    return sum(1 for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear, nn.ConvTranspose2d))
               and "shortcut" not in name and "downsample" not in name)


@torch.inference_mode()
def model_stats(model: nn.Module, sample: torch.Tensor) -> dict:
    """Parameters, multiply-adds per sample (convolutions, linears and attention) and depth."""
    macs = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal macs
        if isinstance(module, nn.ConvTranspose2d):
            macs += inputs[0][0].numel() * module.weight[0].numel()  # weight (in, out/groups, kh, kw)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)):
            macs += output[0].numel() * module.weight[0].numel()  # weight[0]: in/groups * kernel size
        elif isinstance(module, nn.Linear):
            macs += output[0].numel() * module.in_features
        elif isinstance(module, nn.MultiheadAttention):  # its projections are called functionally, not as modules
            tokens, width = inputs[0].shape[-2:] if module.batch_first else (inputs[0].shape[0], inputs[0].shape[-1])
            macs += 4 * tokens * width * width + 2 * tokens * tokens * width  # q, k, v, out; q k^T and attention @ v
        elif callable(getattr(module, "attention_macs", None)):
            # a model's own attention (scaled_dot_product_attention)
            macs += module.attention_macs(inputs, output)

    counted = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.MultiheadAttention)
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, counted) or callable(getattr(m, "attention_macs", None))]
    try:
        with evaluating(model):
            model(sample[:1])
    finally:
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
