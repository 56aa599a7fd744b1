"""The LIT objective (Koratana et al., ICML 2019), as in the authors' released code.

Rows of tokens (a language model's (N, T) targets, padded with ``IGNORE_INDEX``; boundaries
(N, T, hidden)) count their valid positions only: the IR losses take a (N, T) ``mask``, and KD
treats every valid position as one example. A store may keep only the teacher's top-k logits per
position (values and vocabulary indices): KD then compares the teacher's softmax over those k with
the student's log-probabilities gathered at the same indices, which with k = vocabulary is exactly
the full KD.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..store.layout import IGNORE_INDEX

__all__ = ["ir_loss", "kd_loss", "lit_loss", "supervised_loss"]

def ir_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, kind: str = "mse",
            mask: torch.Tensor | None = None, feature_axis: int = 1) -> torch.Tensor:
    """Intermediate-representation loss of one section: MSE, mean over every element (the paper's);
    ``cosine``: 1 - cosine similarity of the feature vectors along ``feature_axis``, mean over
    positions (the channels of a map, axis 1; the hidden size of a residual stream, axis -1); or
    ``relative``: the MSE divided by the target's mean square, ``||s - t||^2 / ||t||^2`` over the
    batch (Puzzle's normalised MSE): every section weighs the same whatever its stream's scale."""
    if mask is not None:  # token rows: only the valid positions, (N, T, hidden) -> (valid, hidden)
        student_out, teacher_out = student_out[mask], teacher_out[mask]
        feature_axis = -1
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student_out, teacher_out, dim=feature_axis, eps=1e-6)).mean()
    if kind == "relative":
        return F.mse_loss(student_out, teacher_out) / teacher_out.float().pow(2).mean().clamp_min(1e-12)
    return F.mse_loss(student_out, teacher_out)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, tau: float, teacher_indices: torch.Tensor | None = None) -> torch.Tensor:
    """``alpha * CE(s, y) + (1 - alpha) * tau^2 * softCE(softmax(t / tau), log_softmax(s / tau))``.

    Token rows ((N, T, vocab) student logits, (N, T) labels) average over the valid positions.
    ``teacher_indices`` (same shape as ``teacher_logits``): the teacher's logits are its top-k at
    these vocabulary indices, renormalised over the k."""
    if student_logits.dim() == 3:
        valid = labels != IGNORE_INDEX
        student_logits, teacher_logits, labels = student_logits[valid], teacher_logits[valid], labels[valid]
        if teacher_indices is not None:
            teacher_indices = teacher_indices[valid]
    hard = supervised_loss(student_logits, labels)
    soft_targets = F.softmax(teacher_logits / tau, dim=1)
    log_student = F.log_softmax(student_logits / tau, dim=1)
    if teacher_indices is not None:
        log_student = log_student.gather(1, teacher_indices.long())
    soft = -(soft_targets * log_student).sum(dim=1).mean()
    return alpha * hard + (1.0 - alpha) * tau * tau * soft


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against the labels: per row, or per valid position of token rows."""
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits, labels)


def lit_loss(kd: torch.Tensor | None, irs: list[torch.Tensor], beta: float) -> torch.Tensor:
    """``beta * KD + (1 - beta) * sum_i IR_i``; with beta = 0 the KD term is not needed at all."""
    total = (1.0 - beta) * torch.stack(irs).sum() if irs else torch.zeros(())
    return total + beta * kd if kd is not None and beta > 0 else total
