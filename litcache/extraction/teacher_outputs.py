"""What a store keeps of the teacher's outputs on a batch, computed in one place for extraction,
``verify --replay`` and the online teacher, so the three agree field by field.

- ``boundaries/i``: the section outputs, as computed.
- ``logits``: the teacher's output; or, with ``logit_topk`` k, ``topk_values`` (the k largest
  logits of every position, largest first) and ``topk_indices`` (their vocabulary indices): a
  language model's (tokens x vocabulary) logits are too large to keep whole.
- Rows of tokens (labels (N, T), padded with ``IGNORE_INDEX``): ``lengths`` (valid positions per
  row), and every per-position output is zeroed past its row's length, so padding holds no values
  the losses could read (and compresses to nothing).
"""

from __future__ import annotations

import torch

from ..errors import RecipeError
from ..store.layout import IGNORE_INDEX, token_mask

__all__ = ["teacher_fields", "is_token_rows"]


def is_token_rows(labels: torch.Tensor) -> bool:
    """Whether a batch's labels are per-position targets (N, T) rather than one label per row."""
    return labels.dim() == 2


def teacher_fields(outs: list[torch.Tensor], logits: torch.Tensor, labels: torch.Tensor,
                   logit_topk: int | None = None) -> dict[str, torch.Tensor]:
    """{store array name: tensor} of one batch of the teacher's boundaries and logits."""
    fields: dict[str, torch.Tensor] = {}
    if is_token_rows(labels):
        valid = (labels != IGNORE_INDEX).to(logits.device)
        lengths = valid.sum(1)
        if not torch.equal(valid, token_mask(lengths, labels.shape[1])):
            raise RecipeError("Expected rows of tokens to be right-padded (every target -100 after the last valid "
                              "one), but a row has -100 between valid targets. litcache stores a length per row; pad "
                              "at the end.")
        fields["lengths"] = lengths.to(torch.int32)
        keep = valid.unsqueeze(-1)
        outs = [torch.where(keep, z, torch.zeros((), dtype=z.dtype, device=z.device)) for z in outs]
        logits = torch.where(keep, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    for i, z in enumerate(outs):
        fields[f"boundaries/{i}"] = z
    if logit_topk is None:
        fields["logits"] = logits
    else:
        values, indices = logits.float().topk(logit_topk, dim=-1)  # sorted, largest first
        fields["topk_values"], fields["topk_indices"] = values, indices.to(torch.int32)
    return fields
