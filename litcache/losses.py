"""The LIT objective (Koratana et al., ICML 2019), as in the authors' released code."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ir_loss", "kd_loss", "lit_loss"]


def ir_loss(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Intermediate-representation loss of one section: MSE, mean over every element."""
    return F.mse_loss(student_out, teacher_out)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, tau: float) -> torch.Tensor:
    """``alpha * CE(s, y) + (1 - alpha) * tau^2 * softCE(softmax(t / tau), log_softmax(s / tau))``."""
    hard = F.cross_entropy(student_logits, labels)
    soft_targets = F.softmax(teacher_logits / tau, dim=1)
    soft = -(soft_targets * F.log_softmax(student_logits / tau, dim=1)).sum(dim=1).mean()
    return alpha * hard + (1.0 - alpha) * tau * tau * soft


def lit_loss(kd: torch.Tensor | None, irs: list[torch.Tensor], beta: float) -> torch.Tensor:
    """``beta * KD + (1 - beta) * sum_i IR_i``; with beta = 0 the KD term is not needed at all."""
    total = (1.0 - beta) * torch.stack(irs).sum() if irs else torch.zeros(())
    return total + beta * kd if kd is not None and beta > 0 else total
