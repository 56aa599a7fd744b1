"""The tiny recipe whose teacher fails on some samples, but only where LITCACHE_FAIL_TEACHER=1.

Train samples 32-39 are filled with 3.0. With ``--no-shuffle``, 2 views, 8-row chunks and 16-row
shards they are exactly shard 4. When LITCACHE_FAIL_TEACHER=1 the teacher's stem raises on any
batch holding one of them; otherwise it is the tiny teacher (and the samples ordinary inputs), so
the data, the teacher weights and the store identity do not depend on the variable. Planning an
extraction runs the teacher on rows 0-7 only, so it is the worker extracting shard 4 that fails.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn

from litcache.recipe import import_beside

MARKED = range(32, 40)
MARK = 3.0
_marked = import_beside(__file__, "_marked")
base = _marked.base


class FailingStem(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Crops pad with zeros, so a marked view's largest value is still exactly MARK.
        if os.environ.get("LITCACHE_FAIL_TEACHER") == "1" and (x.flatten(1).amax(1) == MARK).any():
            raise RuntimeError("the teacher fails on a marked sample (LITCACHE_FAIL_TEACHER=1)")
        return super().forward(x)


recipe = replace(base, name="tiny_failing_teacher", build_teacher=_marked.teacher_with_stem(FailingStem),
                 load_split=partial(_marked.MarkedImages, marked=MARKED, value=MARK))
