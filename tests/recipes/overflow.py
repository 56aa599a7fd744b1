"""The tiny recipe with a teacher whose stem output exceeds the float16 range for some inputs.

Train samples 20 and 37 are filled with 100.0; the stem scales its output by 1e6 for any input
whose largest |value| exceeds 50: finite in float32 and bfloat16, Inf once cast to float16.
Module names and parameters are the tiny teacher's.
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


class LoudStem(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        loud = x.flatten(1).abs().amax(1) > 50
        return torch.where(loud[:, None, None, None], out * 1e6 + 1e5, out)


recipe = replace(base, name="tiny_overflow", build_teacher=_marked.teacher_with_stem(LoudStem),
                 load_split=partial(_marked.MarkedImages, marked=MARKED, value=100.0))
