"""The tiny recipe with a teacher that outputs NaN for some inputs.

Train samples 20 and 37 are filled with 100.0; the stem returns NaN for any input whose largest
|value| exceeds 50. Module names stay stem/layer1..3/head and the parameters are the tiny
teacher's, so the tiny teacher checkpoints fit.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn

from litcache.recipe import import_beside

MARKED = (20, 37)
_marked = import_beside(__file__, "_marked")
base = _marked.base


class NanStem(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        bad = x.flatten(1).abs().amax(1) > 50
        return torch.where(bad[:, None, None, None], torch.full_like(out, float("nan")), out)


recipe = replace(base, name="tiny_nan", build_teacher=_marked.teacher_with_stem(NanStem),
                 load_split=partial(_marked.MarkedImages, marked=MARKED, value=100.0))
