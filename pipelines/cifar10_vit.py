"""CIFAR-10, a Vision Transformer teacher of 8 blocks -> students of 4 (and 2) blocks: LIT on a transformer.

The model is torchvision's ``VisionTransformer`` for 32x32 images: patch 4 (64 patch tokens + a
class token), width 192, 3 heads, MLP 384, pre-LayerNorm blocks. A teacher checkpoint is its plain
state dict. The split:

- stem: patch projection, class token, position embedding (``litcache.zoo.vit_stem``);
- sections: LITCACHE_VIT_SECTIONS equal runs of encoder blocks (default 4 sections of 2 teacher
  blocks; a 4-block student then has 1 block per section). Every boundary is the residual stream,
  (65 tokens, 192) per row;
- head: final LayerNorm and classifier on the class token.

A student has as many sections as the teacher, so the 2-block student needs LITCACHE_VIT_SECTIONS=2
(sections of 4 teacher blocks, and a store extracted with that setting); with 4 sections it is refused.
Students start from every other teacher block (``student_init="teacher-blocks"``, DistilBERT's
initialisation; --student-init scratch for a random start).

Data and augmentation as in cifar10_resnet.py (LITCACHE_CIFAR10_DIR or LITCACHE_CIFAR10_ROOT,
LITCACHE_CIFAR10_TRAIN_SUBSET); crop with 4 pixels of padding + flip.

Model size, read whenever a model is built:
  LITCACHE_VIT_DEPTH      teacher blocks (default 8)
  LITCACHE_VIT_SECTIONS   sections (default 4); teacher and student depths must be multiples of it
  LITCACHE_VIT_WIDTH, LITCACHE_VIT_HEADS, LITCACHE_VIT_MLP   (defaults 192, 3, 384; tests use less)
"""

from __future__ import annotations

from litcache import CropFlip, DistillConfig, Recipe, TrainConfig
from litcache.recipe import import_beside
from litcache.zoo import cifar_vit, vit_head, vit_section, vit_stem

_data = import_beside(__file__, "_data")


def load_split(split: str):
    return _data.load_cifar10(split)


def vit(depth: int | None = None):
    """A builder of a ViT of ``depth`` blocks (None: the teacher depth from LITCACHE_VIT_DEPTH)."""

    def build():
        return cifar_vit(depth if depth is not None else _data.env_int("LITCACHE_VIT_DEPTH", 8),
                         width=_data.env_int("LITCACHE_VIT_WIDTH", 192), heads=_data.env_int("LITCACHE_VIT_HEADS", 3),
                         mlp=_data.env_int("LITCACHE_VIT_MLP", 384), num_classes=10)

    return build


SECTIONS = _data.env_int("LITCACHE_VIT_SECTIONS", 4)

recipe = Recipe(
    name="cifar10_vit",
    description="CIFAR-10, torchvision ViT (patch 4, width 192) of 8 blocks -> 4 or 2 blocks, "
                f"sections = {SECTIONS} runs of encoder blocks, boundaries = the residual stream",
    build_teacher=vit(),
    students={"vit4": vit(4), "vit2": vit(2)},
    stem=vit_stem,
    sections=tuple(vit_section(i, SECTIONS) for i in range(SECTIONS)),
    head=vit_head,
    load_split=load_split,
    num_classes=10,
    augment=CropFlip(padding=4, flip=True, fill=_data.CIFAR10_BLACK),
    teacher_checkpoint="runs/cifar10_vit/teacher.pt",
    # ViTs train with AdamW, warm-up and cosine decay (DeiT); a short CPU-sized budget.
    teacher_training=TrainConfig(epochs=30, batch_size=128, lr=1e-3, weight_decay=0.05, optimizer="adamw",
                                 schedule="cosine", warmup=0.05),
    distill=DistillConfig(
        lit=TrainConfig(epochs=15, batch_size=128, lr=1e-3, weight_decay=0.05, optimizer="adamw", schedule="cosine",
                        warmup=0.05),
        finetune=TrainConfig(epochs=5, batch_size=128, lr=2e-4, weight_decay=0.05, optimizer="adamw", schedule="cosine"),
        alpha=0.95, tau=6.0, beta=0.75,
        ir_feature_axis=-1,  # boundaries are (tokens, hidden): --ir-loss cosine compares each token's vector
    ),
    student_init="teacher-blocks",
)
