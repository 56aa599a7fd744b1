"""CIFAR-10, CIFAR ResNeXt-110 teacher -> ResNeXt-20 student: the LIT paper's 5.5x (by depth) system.

ResNeXts of the CIFAR template of Xie et al. 2017 (bottleneck blocks with grouped 3x3 convs,
3 stages, depth 9n + 2), cut at their three stages. Data, views and LIT hyperparameters are
those of cifar10_resnet.py (the LIT authors released no ResNeXt code; DESIGN.md gives their
ResNet settings).

Data (nothing is downloaded), read when a split is loaded:
  LITCACHE_CIFAR10_ROOT     torchvision CIFAR-10 root holding cifar-10-batches-py/ (preferred if set)
  LITCACHE_CIFAR10_DIR      ImageFolder dir: train/<class>/*.jpg, test/<class>/*.jpg, e.g. after
                            `tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR`; decoded once into
                            DIR/.litcache/ (or LITCACHE_CACHE_DIR)

Model size, read whenever a model is built. The defaults are the ResNeXt paper's CIFAR template
(ResNeXt-29 8x64d widths); DESIGN.md does not record the LIT paper's ResNeXt width:
  LITCACHE_RESNEXT_SIZE         "paper" (default) or "cpu": the defaults of the four below (see CPU_SIZE)
  LITCACHE_RESNEXT_TEACHER      teacher depth, 9n + 2 (default 110)
  LITCACHE_RESNEXT_CARDINALITY  groups of each grouped conv (default 8; cpu: 4)
  LITCACHE_RESNEXT_BASE_WIDTH   channels per group in stage 1, doubled per stage (default 64; cpu: 4)
  LITCACHE_RESNEXT_WIDTHS       stage output widths (default 256,512,1024; cpu: 32,64,128; the stem has a
                                quarter of the first)

The paper's 8x64d ResNeXt-110 has 139.9M parameters and 5.5G multiply-adds per image: no CPU trains it.
LITCACHE_RESNEXT_SIZE=cpu keeps the depth (110 -> 20, the paper's 5.5x) and the family (bottlenecks of
grouped 3x3 convs, 3 stages, stage widths doubling) at cardinality 4, 4 channels per group and stage
widths 32/64/128: ResNeXt-110 4x4d has 420,914 parameters and 61.2M multiply-adds per image (ResNet-56:
853,018 and 125.5M), ResNeXt-20 75,954 and 12.0M. The teacher trains on the 50k JPEGs with
`litcache train-teacher` (the command is in pipelines/README.md).

The pair measured on a 2-core CPU (benchmarks/README.md, "ResNeXt on CIFAR-10 at CPU size") is shallower at
the paper's depth ratio, as ResNeXt-110 4x4d takes about 3 h a teacher on one thread: LITCACHE_RESNEXT_TEACHER=56
(213,938 parameters, 31.7M multiply-adds) -> student resnext11 (41,458 and 7.1M), 5.1x by depth.
"""

from __future__ import annotations

import os

from litcache import CropFlip, DistillConfig, Recipe, TrainConfig
from litcache.errors import RecipeError
from litcache.recipe import import_beside
from litcache.zoo import cifar_resnext

_data = import_beside(__file__, "_data")

#: LITCACHE_RESNEXT_SIZE -> (cardinality, base width, stage widths).
SIZES = {"paper": (8, 64, (256, 512, 1024)), "cpu": (4, 4, (32, 64, 128))}
CPU_SIZE = SIZES["cpu"]


def _size() -> tuple[int, int, tuple[int, int, int]]:
    name = os.environ.get("LITCACHE_RESNEXT_SIZE", "").strip() or "paper"
    if name not in SIZES:
        raise RecipeError(f"Expected LITCACHE_RESNEXT_SIZE to be one of {sorted(SIZES)}, got {name!r}.")
    return SIZES[name]


def load_split(split: str):
    return _data.load_cifar10(split)


def resnext(depth: int | None = None):
    """A builder of ResNeXt-``depth`` (None: the teacher depth from LITCACHE_RESNEXT_TEACHER)."""

    def build():
        d = depth if depth is not None else _data.env_int("LITCACHE_RESNEXT_TEACHER", 110)
        cardinality, base_width, widths = _size()
        return cifar_resnext(d, cardinality=_data.env_int("LITCACHE_RESNEXT_CARDINALITY", cardinality),
                             base_width=_data.env_int("LITCACHE_RESNEXT_BASE_WIDTH", base_width),
                             widths=_data.env_ints("LITCACHE_RESNEXT_WIDTHS", widths), num_classes=10)

    return build


recipe = Recipe(
    name="cifar10_resnext",
    description="CIFAR-10 (torchvision root or JPEG ImageFolder), ResNeXt-110 -> ResNeXt-20 (8x64d CIFAR template), "
                "sections = the three stages",
    build_teacher=resnext(),
    students={f"resnext{d}": resnext(d) for d in (11, 20, 29, 38)},
    stem="stem",
    sections=("layer1", "layer2", "layer3"),
    head="head",
    load_split=load_split,
    num_classes=10,
    # Padded with black pixels, as the uint8 crops of the shared teacher's training script are.
    augment=CropFlip(padding=4, flip=True, fill=_data.CIFAR10_BLACK),
    # extract's default views. LIT from one stored view per image did no better than scratch on
    # CIFAR-10; 8 views came within 0.3 points of a fresh view every epoch (benchmarks/README.md,
    # fidelity). A 50k store of 8 views is about 25 GB in float16 + zstd: pass --views to trade.
    views=8,
    teacher_checkpoint="runs/cifar10_resnext/teacher.pt",
    # Xie et al. 2017 (CIFAR): batch 128, lr 0.1, /10 at 50% and 75% of 300 epochs, weight decay 5e-4.
    teacher_training=TrainConfig(epochs=300, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4,
                                 milestones=(150, 225)),
    # The LIT authors' released CIFAR ResNet settings, DistillConfig's defaults (they released no
    # ResNeXt configuration).
    # The released CIFAR code's schedule and weights; it halves the LIT loss (loss_scale 0.5).
    distill=DistillConfig(loss_scale=0.5),
)
