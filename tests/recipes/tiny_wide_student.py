"""The tiny recipe with a student whose last stage is wider than the teacher's boundaries."""

import importlib.util
from dataclasses import replace
from pathlib import Path

from litcache.zoo import cifar_resnet

_spec = importlib.util.spec_from_file_location("_tiny_for_wide", Path(__file__).with_name("tiny.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)

recipe = replace(_tiny.recipe, students={"wide": lambda: cifar_resnet(8, widths=(4, 8, 16), in_channels=3, num_classes=4)})
