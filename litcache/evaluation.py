"""`litcache evaluate`: accuracy on the recipe's real split, size, cost, depth and CPU latency.

Generation recipes (``Recipe.task == "generation"``) have no labels to score: their students are
measured against the teacher's outputs on the held-out split instead (MSE, PSNR and SSIM), and a PNG
of a few (input, teacher, student) rows is written next to the student checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .errors import OptionError
from .extraction.teacher import load_teacher
from .models.hf import HFCausalLM
from .recipe import Recipe
from .runtime.devices import resolve_device
from .runtime.eval_mode import evaluating
from .runtime.precision import Compute, as_compute, resolve_compute
from .training.metrics import accuracy, cpu_latency, model_stats, perplexity
from .training.student import load_student

__all__ = ["evaluate_model", "evaluate", "evaluate_generation", "reconstruction_error", "psnr", "ssim",
           "format_evaluation"]


def _cpu_compute(precision: str, model: nn.Module) -> Compute:
    """What CPU latency is measured in: the same request on the CPU (fp16 is CUDA-only: fp32 there)."""
    return resolve_compute("fp32" if precision == "fp16" else precision, "cpu", model)


def evaluate_model(model: nn.Module, dataset: Dataset, device: str = "auto", batch_size: int = 256,
                   precision: str = "auto", task: str = "classification") -> dict:
    dev = resolve_device(device)
    batch = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
    stats = model_stats(model.cpu(), batch)
    latency_compute = _cpu_compute(precision, model)
    latency = cpu_latency(model, batch, compute=latency_compute)
    compute = resolve_compute(precision, dev, model)
    compute.model(model)
    score = ({"perplexity": round(perplexity(model, dataset, compute, batch_size), 4)} if task == "language_model"
             else {"accuracy": accuracy(model, dataset, compute, batch_size)})
    if isinstance(model, HFCausalLM):
        score.update(generation_speed(model, dataset[0][0].unsqueeze(0)[:, :GENERATION_PROMPT_TOKENS], dev))
    return {**stats, **score, "samples": len(dataset),
            "compute": compute.describe(), "cpu_latency_compute": latency_compute.describe(),
            "cpu_latency_ms_per_batch": round(latency * 1000, 3), "latency_batch_size": len(batch)}


#: Generation speed of a Hugging Face model: the first tokens of the split's first row as the prompt,
#: then this many new tokens, greedy, batch 1, with the KV cache.
GENERATION_PROMPT_TOKENS, GENERATION_NEW_TOKENS = 16, 64


@torch.inference_mode()
def generation_speed(model: HFCausalLM, prompt: torch.Tensor, device: torch.device,
                     new_tokens: int = GENERATION_NEW_TOKENS) -> dict:
    """New tokens per second of greedy generation with the KV cache (float32, batch 1, after a warm-up),
    as a user serves the model with ``generate``."""
    hf = model.hf.to(device).eval()
    prompt = prompt.to(device)
    # Within the model's positions (GPT-2's learned position table ends there).
    new_tokens = min(new_tokens, getattr(hf.config, "max_position_embeddings", 10**9) - prompt.shape[1])
    settings = {"do_sample": False, "use_cache": True, "pad_token_id": 0}
    hf.generate(prompt, max_new_tokens=4, min_new_tokens=4, **settings)  # warm-up
    t = time.perf_counter()
    out = hf.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **settings)
    seconds = time.perf_counter() - t
    generated = out.shape[1] - prompt.shape[1]
    return {"generation_tokens_per_s": round(generated / seconds, 1), "generation_new_tokens": generated,
            "generation_prompt_tokens": prompt.shape[1]}


def evaluate(recipe: Recipe, student: str | Path | None = None, teacher: str | Path | None = None, *,
             split: str = "test", device: str = "auto", batch_size: int = 256, precision: str | None = None) -> dict:
    """Evaluate a student checkpoint and/or the teacher on the recipe's real ``split`` (not a store)."""
    recipe.check_split_name(split)
    precision = precision or recipe.precision
    if recipe.task == "generation":
        return evaluate_generation(recipe, student, teacher, split=split, device=device, batch_size=batch_size,
                                   precision=precision)
    dataset = recipe.load_split(split)
    report: dict = {"recipe": recipe.name, "split": split, "task": recipe.task}
    sample = torch.stack([dataset[0][0]])
    teacher_stats = model_stats(recipe.build_teacher(), sample)  # architecture only: no weights needed
    if teacher is not None:
        model, _, path = load_teacher(recipe, teacher)
        report["teacher"] = {"checkpoint": path,
                             **evaluate_model(model, dataset, device, batch_size, precision, recipe.task)}
    if student is not None:
        model = load_student(student, recipe)
        result = {"checkpoint": str(student),
                  **evaluate_model(model, dataset, device, batch_size, precision, recipe.task)}
        result["compression_by_depth"] = round(teacher_stats["depth"] / result["depth"], 3)
        result["compression_by_params"] = round(teacher_stats["params"] / result["params"], 3)
        result["compression_by_macs"] = round(teacher_stats["macs_per_sample"] / result["macs_per_sample"], 3)
        report["student"] = result
    return report


#: Generation outputs are assumed to lie in [-1, 1] (a tanh, as in StarGAN): PSNR uses this
#: peak-to-peak range, which equals the usual PSNR of the images mapped to [0, 1].
GENERATION_RANGE = 2.0
#: Rows of the (input, teacher, student) PNG grid.
GRID_ROWS = 4
#: Latency batch of generation models: image-to-image models are far costlier per sample.
GENERATION_LATENCY_BATCH = 8


def _stats_and_latency(model: nn.Module, dataset: Dataset, batch_size: int) -> dict:
    batch = torch.stack([dataset[i][0] for i in range(min(batch_size, len(dataset)))])
    return {**model_stats(model.cpu(), batch), "cpu_latency_ms_per_batch": round(cpu_latency(model, batch) * 1000, 3),
            "latency_batch_size": len(batch), "samples": len(dataset)}


def psnr(mse: float, peak_to_peak: float = GENERATION_RANGE) -> float | None:
    """PSNR in dB for outputs spanning ``peak_to_peak``; None when the outputs are identical."""
    return round(10 * math.log10(peak_to_peak**2 / mse), 3) if mse > 0 else None


def ssim(a: torch.Tensor, b: torch.Tensor, peak_to_peak: float = GENERATION_RANGE, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Per-image structural similarity (Wang et al. 2004) of two batches (N, C, H, W): the mean over channels
    and positions of the Gaussian-windowed SSIM map (window 11, sigma 1.5, K1 0.01, K2 0.03; "valid"
    positions only). Images smaller than the window use a window of their size."""
    window = min(window, a.shape[-2], a.shape[-1])
    coords = torch.arange(window, dtype=torch.float64, device=a.device) - (window - 1) / 2
    g = torch.exp(-coords**2 / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).to(torch.float32)
    channels = a.shape[1]
    kernel = kernel.expand(channels, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=channels)

    a, b = a.float(), b.float()
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * peak_to_peak) ** 2, (0.03 * peak_to_peak) ** 2
    maps = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return maps.flatten(1).mean(1)


@torch.inference_mode()
def reconstruction_error(student: nn.Module, teacher: nn.Module, dataset: Dataset,
                         compute: Compute | torch.device | str = "cpu",
                         batch_size: int = 64, keep: int = GRID_ROWS) -> tuple[float, list[tuple[torch.Tensor, ...]]]:
    """Mean squared error of the student's outputs against the teacher's over ``dataset``, and the
    first ``keep`` (input, teacher output, student output) triples for a picture."""
    mse, _, kept = reconstruction_scores(student, teacher, dataset, compute, batch_size, keep)
    return mse, kept


@torch.inference_mode()
def reconstruction_scores(student: nn.Module, teacher: nn.Module, dataset: Dataset,
                          compute: Compute | torch.device | str = "cpu", batch_size: int = 64,
                          keep: int = GRID_ROWS) -> tuple[float, float | None, list[tuple[torch.Tensor, ...]]]:
    """(MSE, mean SSIM or None where the outputs are not images, kept triples) of the student against the teacher."""
    compute = as_compute(compute)
    total, count, ssim_total, images, kept = 0.0, 0, 0.0, 0, []
    with evaluating(student, teacher):
        for x, _ in DataLoader(dataset, batch_size=batch_size):
            x = compute.input(x)
            with compute.autocast():
                t, s = teacher(x).float(), student(x).float()
            if t.shape != s.shape:
                raise OptionError(f"Expected the student's output shape {tuple(t.shape[1:])} (the teacher's), "
                                  f"got {tuple(s.shape[1:])} instead.")
            total += F.mse_loss(s, t, reduction="sum").item()
            count += t.numel()
            if t.dim() == 4:
                ssim_total += ssim(s, t).sum().item()
                images += len(t)
            for i in range(min(len(x), keep - len(kept))):
                kept.append((x[i].cpu().contiguous(), t[i].cpu().contiguous(), s[i].cpu().contiguous()))
    return total / max(count, 1), (ssim_total / images if images else None), kept


def _to_rgb(image: torch.Tensor):
    """(C, H, W) in [-1, 1] -> (H, W, 3) uint8 from its first 3 channels; None if it is not an image."""
    import numpy as np

    if image.dim() != 3 or image.shape[0] < 3 or not image.is_floating_point():
        return None
    rgb = ((image[:3].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())


def save_grid(triples: list[tuple[torch.Tensor, ...]], path: str | Path, gap: int = 2) -> Path | None:
    """A PNG with one row per sample: input image (its first 3 channels), teacher output, student output.
    Tensors that are not images are left out; None (and no file) when nothing is an image."""
    import numpy as np
    from PIL import Image

    rows = []
    for triple in triples:
        tiles = [t for t in (_to_rgb(x) for x in triple) if t is not None]
        if not tiles:
            continue
        h = max(t.shape[0] for t in tiles)
        spacer = np.full((h, gap, 3), 255, np.uint8)
        row = [piece for tile in tiles for piece in (tile, spacer)][:-1]
        rows.append(np.concatenate(row, axis=1))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path = Path(path)
    Image.fromarray(np.concatenate(rows, axis=0)[:-gap]).save(path)
    return path


def evaluate_generation(recipe: Recipe, student: str | Path | None = None, teacher: str | Path | None = None, *,
                        split: str = "test", device: str = "auto", batch_size: int = 64,
                        precision: str = "auto") -> dict:
    """Score a generation student against its teacher's outputs on ``split`` (the teacher is required)."""
    recipe.check_split_name(split)
    if teacher is None and recipe.teacher_checkpoint is None:
        raise OptionError(f"Recipe {recipe.name!r} is a generation recipe: its students are scored against the "
                          "teacher's outputs, so evaluate needs the teacher checkpoint. Give it with --teacher.")
    dev = resolve_device(device)
    dataset = recipe.load_split(split)
    teacher_model, _, teacher_path = load_teacher(recipe, teacher)
    latency_batch = min(batch_size, GENERATION_LATENCY_BATCH)
    teacher_stats = _stats_and_latency(teacher_model, dataset, latency_batch)
    report: dict = {"recipe": recipe.name, "split": split, "task": "generation",
                    "teacher": {"checkpoint": teacher_path, **teacher_stats}}
    if student is not None:
        model = load_student(student, recipe)
        result = {"checkpoint": str(student), **_stats_and_latency(model, dataset, latency_batch)}
        compute = resolve_compute(precision, dev, model)
        result["compute"] = compute.describe()
        mse, mean_ssim, triples = reconstruction_scores(compute.model(model), compute.model(teacher_model), dataset,
                                                        compute, batch_size)
        result["mse_vs_teacher"] = mse
        result["psnr_vs_teacher_db"] = psnr(mse)
        result["ssim_vs_teacher"] = None if mean_ssim is None else round(mean_ssim, 5)
        grid = Path(student).with_name(f"{Path(student).stem}_{split}_samples.png")
        written = save_grid(triples, grid)
        result["samples_png"] = str(written) if written else None
        result["compression_by_depth"] = round(teacher_stats["depth"] / result["depth"], 3)
        result["compression_by_params"] = round(teacher_stats["params"] / result["params"], 3)
        result["compression_by_macs"] = round(teacher_stats["macs_per_sample"] / result["macs_per_sample"], 3)
        report["student"] = result
    return report


def format_evaluation(report: dict, split: str) -> list[str]:
    """The lines `litcache evaluate` prints for an :func:`evaluate` report: one per model."""
    lines = []
    for role in ("teacher", "student"):
        if role not in report:
            continue
        m = report[role]
        if report.get("task") == "generation":
            # evaluate gives no PSNR (None) for outputs identical to the teacher's: infinitely many dB.
            psnr = "inf" if m.get("psnr_vs_teacher_db") is None else m["psnr_vs_teacher_db"]
            quality = (f"MSE vs teacher {m['mse_vs_teacher']:.4g}, PSNR {psnr} dB" if "mse_vs_teacher" in m
                       else "the reference")
            if m.get("ssim_vs_teacher") is not None:
                quality += f", SSIM {m['ssim_vs_teacher']:.4f}"
        elif "perplexity" in m:
            quality = f"perplexity {m['perplexity']:.3f}"
            if "generation_tokens_per_s" in m:
                quality += f", generates {m['generation_tokens_per_s']:,.0f} tokens/s (KV cache, batch 1)"
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
        lines.append(line)
    return lines
