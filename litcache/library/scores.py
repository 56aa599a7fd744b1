"""How a library scores a candidate on held-out stored rows, and what it costs.

- **Boundary error**: the candidate's output against its section's stored output, as the mean squared
  error per value and normalised by the stored output's mean square (0: exact; 1: as far off as zeros).
- **Swapped into the teacher**: its section's stored input -> the candidate -> the teacher's later
  sections and head. Against the stored teacher logits, the KL divergence (KD's soft term at tau 1,
  over the stored top-k where the store keeps top-k); against the stored labels, accuracy (classifiers)
  or perplexity (language models); a generator's output error instead. The teacher's own figures on
  the same rows are the reference every delta is taken from.
- **Cost**: parameters, multiply-adds per row (on a stored row), and the CPU latency of a batch (one thread).

Nothing here runs the teacher's stem: every forward starts from a stored boundary.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.eval_mode import evaluating
from ..store.arrays import Store
from ..store.layout import IGNORE_INDEX, token_mask
from ..training.dataset import StoreDataset
from ..training.metrics import cpu_latency
from ..training.step import TOPK_FIELDS

__all__ = ["HeldOutRows", "Scorer", "latency_ms"]


class HeldOutRows:
    """Batches of the first ``rows`` rows of a held-out store: the boundaries, the teacher's logits (or
    top-k), the labels, and the lengths of token rows."""

    def __init__(self, store: Store, rows: int, batch_size: int = 64) -> None:
        self.store, self.batch_size = store, batch_size
        self.rows = min(rows, store.rows) if rows > 0 else store.rows
        arrays = store.manifest.arrays
        self.topk = "logits" not in arrays and TOPK_FIELDS[0] in arrays
        fields = [*store.boundary_names, *(TOPK_FIELDS if self.topk else ["logits"]), "labels"]
        self.fields = fields + (["lengths"] if "lengths" in arrays else [])
        self.dataset = StoreDataset(store, self.fields)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, self.rows, self.batch_size):
            yield self.dataset.__getitems__(range(start, min(start + self.batch_size, self.rows)))

    def sample(self, boundary: int, rows: int = 1) -> torch.Tensor:
        """The first ``rows`` stored rows of ``boundary`` (a cost's input)."""
        name = self.store.boundary_names[boundary]
        return StoreDataset(self.store, [name]).__getitems__(range(min(rows, self.rows)))[name].float()


class Scorer:
    """Scores sections on held-out rows against the teacher's own (``sections``, ``head``: the teacher's)."""

    def __init__(self, rows: HeldOutRows, sections: Sequence[nn.Module], head: nn.Module, task: str) -> None:
        self.rows, self.sections, self.head, self.task = rows, list(sections), head, task
        self.reference = self._swap(None, None)

    def score(self, section: int, module: nn.Module) -> dict:
        """The figures of ``module`` in place of the teacher's section ``section`` (from 1), with their deltas
        from the teacher's own."""
        swapped = self._swap(section, module)
        out = {"boundary_mse": swapped.pop("boundary_mse"), "boundary_normalised": swapped.pop("boundary_normalised")}
        for key, value in swapped.items():
            out[f"swap_{key}"] = value
            out[f"swap_{key}_delta"] = value - self.reference[key]
        return out

    @torch.inference_mode()
    def _swap(self, section: int | None, module: nn.Module | None) -> dict:
        start = (section or 1) - 1
        names = self.rows.store.boundary_names
        sums = {"error": 0.0, "energy": 0.0, "values": 0, "kl": 0.0, "nll": 0.0, "correct": 0, "count": 0,
                "output_se": 0.0, "output_values": 0}
        modules = [*self.sections, self.head] + ([module] if module is not None else [])
        with evaluating(*modules):
            for batch in self.rows:
                h = batch[names[start]].float()
                mask = token_mask(batch["lengths"], h.shape[1]) if "lengths" in batch else None
                for i in range(start, len(self.sections)):
                    h = (module if module is not None and i == start else self.sections[i])(h)
                    if i == start and module is not None:
                        _boundary_sums(sums, h, batch[names[i + 1]].float(), mask)
                _output_sums(sums, self.head(h).float(), batch, self.rows.topk, self.task)
        figures = {"kl": sums["kl"] / max(sums["count"], 1)}
        if self.task == "generation":
            figures = {"output_mse": sums["output_se"] / max(sums["output_values"], 1)}
        elif self.task == "language_model":
            figures["perplexity"] = math.exp(sums["nll"] / max(sums["count"], 1))
        else:
            figures["accuracy"] = sums["correct"] / max(sums["count"], 1)
        if module is not None:
            figures["boundary_mse"] = sums["error"] / max(sums["values"], 1)
            figures["boundary_normalised"] = sums["error"] / max(sums["energy"], 1e-30)
        return figures


def _boundary_sums(sums: dict, out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is not None:
        out, target = out[mask], target[mask]
    sums["error"] += float(((out - target) ** 2).sum())
    sums["energy"] += float((target ** 2).sum())
    sums["values"] += out.numel()


def _output_sums(sums: dict, logits: torch.Tensor, batch: dict, topk: bool, task: str) -> None:
    if task == "generation":  # the generator's image against the teacher's stored one
        sums["output_se"] += float(((logits - batch["logits"].float()) ** 2).sum())
        sums["output_values"] += logits.numel()
        return
    labels = batch["labels"].long()
    teacher = (batch[TOPK_FIELDS[0]] if topk else batch["logits"]).float()
    indices = batch[TOPK_FIELDS[1]].long() if topk else None
    if logits.dim() == 3:  # token rows: every valid position is one example
        valid = labels != IGNORE_INDEX
        logits, labels, teacher = logits[valid], labels[valid], teacher[valid]
        indices = indices[valid] if indices is not None else None
    log_student = F.log_softmax(logits, dim=-1)
    log_teacher = F.log_softmax(teacher, dim=-1)
    gathered = log_student.gather(-1, indices) if indices is not None else log_student
    sums["kl"] += float((log_teacher.exp() * (log_teacher - gathered)).sum())
    sums["nll"] += float(F.nll_loss(log_student, labels, reduction="sum"))
    sums["correct"] += int((logits.argmax(-1) == labels).sum())
    sums["count"] += len(labels)


def latency_ms(module: nn.Module, rows: torch.Tensor, repeats: int = 9) -> float:
    """Median milliseconds of one forward of ``rows`` on one CPU thread, fp32: every latency a library adds up
    or compares is measured so, whatever thread count the measuring process has. Denormal floats are flushed
    while it measures: a small network's activations can hold them, which made one section 5x slower on its
    teacher's own outputs than on the same values read back from a store (torch's default, kept after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        return round(cpu_latency(module, rows, repeats=repeats) * 1000, 4)
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
