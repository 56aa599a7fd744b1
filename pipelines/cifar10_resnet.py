"""CIFAR-10, CIFAR ResNet-110 teacher -> ResNet-20/32/44/56 students: the LIT paper's main system.

ResNets with option-A (zero-pad) shortcuts, cut at their three stages; per-view augmentation is
the standard random crop with 4 pixels of padding and a horizontal flip. Hyperparameters are
the LIT authors' released code (DESIGN.md section 2); the teacher is trained with the standard
CIFAR ResNet schedule (He et al. 2016).

Data (nothing is downloaded), read when a split is loaded:
  LITCACHE_CIFAR10_ROOT    torchvision CIFAR-10 root holding cifar-10-batches-py/ (preferred if set)
  LITCACHE_CIFAR10_DIR     ImageFolder dir: train/<class>/*.jpg, test/<class>/*.jpg, e.g. after
                           `tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C DIR`; decoded once into
                           DIR/.litcache/ (or LITCACHE_CACHE_DIR)
  LITCACHE_CIFAR10_TRAIN_SUBSET  N > 0: a class-balanced, seeded subset of N training images (for
                           CPU-sized runs; --limit takes the first N, which a class-sorted folder biases)
  LITCACHE_CIFAR10_VAL     the "val" split: this many (default 5000) class-balanced training images
                           outside the subset, held out for choices the test split must not make
                           (a block library's scores: `litcache library --heldout`)

Model size, read whenever a model is built (the defaults are the paper's):
  LITCACHE_CIFAR_TEACHER   teacher depth, 6n + 2 (default 110; 56 is the other common teacher)
  LITCACHE_CIFAR_WIDTHS    stage widths of teacher and students (default 16,32,64; tests use less)
"""

from __future__ import annotations



from litcache.recipe import import_beside
from litcache import CropFlip, DistillConfig, Recipe, TrainConfig
from litcache.zoo import CifarResNet, cifar_resnet




_data = import_beside(__file__, "_data")


def load_split(split: str):
    return _data.load_cifar10(split)


def resnet(depth: int | None = None):
    """A builder of ResNet-``depth`` (None: the teacher depth from LITCACHE_CIFAR_TEACHER)."""

    def build():
        d = depth if depth is not None else _data.env_int("LITCACHE_CIFAR_TEACHER", 110)
        return cifar_resnet(d, widths=_data.env_ints("LITCACHE_CIFAR_WIDTHS", (16, 32, 64)), num_classes=10)

    return build


def resnet_stages(depths: tuple[int, ...]):
    """A ResNet of ``depths`` blocks per stage (a block library's mixes; 0: a pointwise linear map)."""
    return CifarResNet(depths, widths=_data.env_ints("LITCACHE_CIFAR_WIDTHS", (16, 32, 64)), num_classes=10)


recipe = Recipe(
    name="cifar10_resnet",
    description="CIFAR-10 (torchvision root or JPEG ImageFolder), ResNet-110 (or $LITCACHE_CIFAR_TEACHER) -> "
                "ResNet-20/32/44/56, option-A shortcuts, sections = the three stages",
    build_teacher=resnet(),
    students={f"resnet{d}": resnet(d) for d in (20, 32, 44, 56)},
    student_depths=resnet_stages,
    stem="stem",
    sections=("layer1", "layer2", "layer3"),
    head="head",
    load_split=load_split,
    splits=("train", "test", "val"),
    num_classes=10,
    # Padded with black pixels, as the uint8 crops of the shared teacher's training script are.
    augment=CropFlip(padding=4, flip=True, fill=_data.CIFAR10_BLACK),
    # extract's default views. LIT from one stored view per image did no better than scratch on
    # CIFAR-10; 8 views came within 0.3 points of a fresh view every epoch (benchmarks/README.md,
    # fidelity). A 50k store of 8 views is about 25 GB in float16 + zstd: pass --views to trade.
    views=8,
    teacher_checkpoint="runs/cifar10_resnet/teacher.pt",
    # He et al. 2016: lr 0.1, /10 at 32k and 48k iterations of batch 128, stop at 64k
    # (= epochs 82, 123, 164 of 50k images). They warm ResNet-110 up at lr 0.01 for about
    # 400 iterations first; litcache has no warm-up: if ResNet-110 does not start to learn, train
    # one epoch with --lr 0.01 --epochs 1, then continue with --resume.
    teacher_training=TrainConfig(epochs=164, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                 milestones=(82, 123)),
    # The LIT authors' released CIFAR code.
    distill=DistillConfig(
        lit=TrainConfig(epochs=175, batch_size=32, lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=(100,)),
        finetune=TrainConfig(epochs=125, batch_size=32, lr=0.01, momentum=0.9, weight_decay=1e-4, milestones=(55,)),
        # The released code's LIT loss is (beta * KD + (1 - beta) * sum IR) / 2: loss_scale 0.5.
        alpha=0.95, tau=6.0, beta=0.75, loss_scale=0.5,
    ),
)
