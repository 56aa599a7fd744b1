"""Real emoji in six skin tones (``_emoji.py``; ``make emoji-data``), StarGAN generator 6 -> 2 residual blocks,
IR only, at CPU size.

CelebA cannot be downloaded here; the closest real attribute-translation data shipped in packages is Google's
Noto emoji drawn in every skin tone. The generator translates an emoji to a target tone (StarGAN's domains:
default yellow, light, medium-light, medium, medium-dark, dark), as celeba_stargan.py translates faces to
target attributes: its input is the image in [-1, 1] with the one-hot target broadcast to 6 constant maps.

A row of the store is (emoji image, target tone) for every target but the image's own tone: 5 rows per
image, so the student learns every translation the teacher makes. Training rows: 285 emoji x 6 tones x 5
targets = 8,550; the test split holds the other 31 emoji (930 rows; never seen in any tone, nor their
gendered or mirrored twins: _emoji.py).

The teacher is a StarGAN (generator + discriminator with the domain classification loss), trained by
``python pipelines/train_stargan.py train`` (adversarial, not ``litcache train-teacher``); the same script
trains the scratch baseline (2 blocks, adversarially, the same budget) and the attribute classifier, and
scores generators by MSE / PSNR / SSIM against the teacher and by the classifier's tone accuracy.

CPU size (the paper's is 128x128 faces, 64 first-conv filters): 32x32 images, 32 first-conv filters (128
at the residual blocks, 8x8). The emoji are small flat drawings, so 32 pixels keep the skin areas.

Environment variables (data ones: see _emoji.py):
  LITCACHE_EMOJI_ARCHIVE, LITCACHE_EMOJI_ATTRIBUTE, LITCACHE_EMOJI_IMAGE_SIZE
  LITCACHE_STARGAN_CONV_DIM    filters of the first conv (default 32)
  LITCACHE_STARGAN_TEACHER     residual blocks of the teacher (default 6)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from litcache import DistillConfig, Recipe, TrainConfig
from litcache.models.stargan import stargan_generator
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")
_emoji = import_beside(__file__, "_emoji")

C_DIM = len(_emoji.SKIN_TONES)


def images_and_tones(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's images as floats in [-1, 1] (N, 3, H, W) and their tones (N,)."""
    arrays = _emoji.load_emoji(split)
    images = torch.from_numpy(np.ascontiguousarray(arrays["images"])).permute(0, 3, 1, 2).float() / 127.5 - 1
    return images, torch.from_numpy(np.asarray(arrays["tones"], dtype=np.int64))


def with_target(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The generator's input: images (N, 3, H, W) with one-hot ``targets`` as constant maps (N, 3 + C, H, W)."""
    maps = nn.functional.one_hot(targets, C_DIM).to(images.dtype)[:, :, None, None]
    return torch.cat([images, maps.expand(-1, -1, *images.shape[-2:])], dim=1)


class EmojiTranslations(Dataset):
    """Row r -> (image r // 5 with target maps of the r % 5-th tone other than its own, label 0: no classes)."""

    def __init__(self, images: torch.Tensor, tones: torch.Tensor) -> None:
        self.images, self.tones = images, tones

    def __len__(self) -> int:
        return len(self.tones) * (C_DIM - 1)

    def target(self, r: int) -> int:
        own, k = int(self.tones[r // (C_DIM - 1)]), r % (C_DIM - 1)
        return k + (k >= own)  # skip the image's own tone

    def __getitem__(self, r: int):
        return with_target(self.images[r // (C_DIM - 1)][None], torch.tensor([self.target(r)]))[0], 0


def load_split(split: str) -> EmojiTranslations:
    return EmojiTranslations(*images_and_tones(split))


def generator(blocks: int | None = None):
    """A builder of the generator with ``blocks`` residual blocks (None: LITCACHE_STARGAN_TEACHER)."""

    def build():
        n = blocks if blocks is not None else _data.env_int("LITCACHE_STARGAN_TEACHER", 6)
        return stargan_generator(n, conv_dim=_data.env_int("LITCACHE_STARGAN_CONV_DIM", 32), c_dim=C_DIM)

    return build


class StarGANDiscriminator(nn.Module):
    """StarGAN's PatchGAN discriminator: stride-2 4x4 convs with LeakyReLU(0.01) down to side/2^repeat, then a
    3x3 conv to the real/fake map and a conv over the whole map to the domain logits."""

    def __init__(self, image_size: int, conv_dim: int, c_dim: int, repeat: int) -> None:
        super().__init__()
        layers, channels = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)], conv_dim
        for _ in range(1, repeat):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            channels *= 2
        self.main = nn.Sequential(*layers)
        self.source = nn.Conv2d(channels, 1, 3, 1, 1, bias=False)
        self.domain = nn.Conv2d(channels, c_dim, image_size // 2**repeat, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.source(h), self.domain(h).flatten(1)


def discriminator() -> StarGANDiscriminator:
    size = _emoji.image_size()
    repeat = max(1, size.bit_length() - 2)  # StarGAN's: down to a 2x2 map (128 -> 6 layers, 32 -> 4)
    return StarGANDiscriminator(size, _data.env_int("LITCACHE_STARGAN_CONV_DIM", 32), C_DIM, repeat)


def tone_classifier() -> nn.Module:
    """The attribute classifier that judges translations: a small CNN over (3, H, W) images in [-1, 1]."""
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, C_DIM))


# As StarGAN trains its generator: Adam, lr 1e-4, betas (0.5, 0.999), batch 16, no weight decay.
_ADAM = TrainConfig(epochs=10, batch_size=16, lr=1e-4, weight_decay=0.0, milestones=(7,), gamma=0.1,
                    optimizer="adam", betas=(0.5, 0.999))

recipe = Recipe(
    name="emoji_stargan",
    description="Real emoji in six skin tones (Noto, npm emoji-datasource-google; held out by whole emoji), StarGAN "
                "generator with 6 residual blocks -> 2 at 32x32; one section = the residual blocks; IR loss only",
    task="generation",
    build_teacher=generator(),
    students={"blocks2": generator(2), "blocks3": generator(3)},
    stem="stem",
    sections=("blocks",),
    head="head",
    load_split=load_split,
    num_classes=1,
    augment=None,
    teacher_checkpoint="runs/emoji_stargan/teacher/generator.pt",
    teacher_training=_ADAM,  # not usable: the teacher trains adversarially (train_stargan.py)
    distill=DistillConfig(lit=_ADAM, finetune=_ADAM, alpha=0.95, tau=6.0, beta=0.0),
)
