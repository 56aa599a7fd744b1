"""CelebA, StarGAN generator with 6 residual blocks -> 2 (LIT paper: 1.8x by depth), IR loss only.

The generator translates a face to target attributes (StarGAN's five: black, blond, brown hair,
male, young). Its input is one tensor: the image in [-1, 1] with the target attribute vector
broadcast to constant maps, (3 + 5, H, W), made by the dataset. The stem is the down-sampling
part, the one section is the residual blocks, the head is the up-sampling part; the teacher's
output image (3, H, W) is stored in the store's ``logits`` array. ``task="generation"``:
``litcache evaluate`` scores a student by its MSE/PSNR against the teacher's images on the test
split and writes a PNG of (input, teacher, student) rows next to the student checkpoint.

Only ``train-blocks --mode lit`` (or ``ir``) applies: beta = 0, so nothing uses labels or a KD
loss, and there is no fine-tune phase (the LIT authors fine-tune with StarGAN's adversarial
losses, which litcache does not have). Pass ``--no-eval`` to train-blocks: its per-epoch test
accuracy is a classification metric.

The teacher cannot be trained by ``litcache train-teacher`` (a GAN, not a classifier): train it
with StarGAN's code and convert its generator checkpoint with
``python pipelines/celeba_stargan.py convert G.ckpt runs/celeba_stargan/teacher.pt``
(``litcache.zoo.convert_stargan_state`` renames the keys and drops unused InstanceNorm statistics).

Data, read when a split is loaded:
  LITCACHE_CELEBA_IMAGES       folder of the aligned CelebA JPEGs (img_align_celeba/)
  LITCACHE_CELEBA_ATTRS        list_attr_celeba.txt
  LITCACHE_CELEBA_IMAGE_SIZE   side of the square images (default 128, a multiple of 4)
  LITCACHE_CELEBA_CROP         centre crop before resizing (default 178)
  LITCACHE_CELEBA_TEST_IMAGES  size of the test split (default 1999, StarGAN's, see below)
Model size, read whenever a model is built:
  LITCACHE_STARGAN_CONV_DIM    filters of the first conv (default 64)
  LITCACHE_STARGAN_TEACHER     residual blocks of the teacher (default 6)

Splits follow StarGAN: the attribute file's rows shuffled with random.seed(1234), the first
ones are the test split. The target attributes of sample i are StarGAN's test-time target
number i % 5 (set that hair colour and clear the others, or flip male/young), so every row is
deterministic. Views: horizontal flips only (StarGAN's augmentation; CropFlip with padding 0).
Images are decoded on the fly (202,599 of them at 128x128 would take 10 GB as uint8).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from litcache import CropFlip, DistillConfig, Recipe, TrainConfig
from litcache.errors import RecipeError
from litcache.models.stargan import convert_stargan_state, stargan_generator
from litcache.recipe import import_beside

ATTRIBUTES = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")
HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
C_DIM = len(ATTRIBUTES)




_data = import_beside(__file__, "_data")


def target_attributes(original: torch.Tensor, k: int) -> torch.Tensor:
    """StarGAN's k-th test-time target for attributes ``original`` (0/1 floats)."""
    target = original.clone()
    if ATTRIBUTES[k] in HAIR:
        for j, name in enumerate(ATTRIBUTES):
            if name in HAIR:
                target[j] = float(j == k)
    else:
        target[k] = 1.0 - target[k]
    return target


def read_attributes(path: Path) -> list[tuple[str, torch.Tensor]]:
    """list_attr_celeba.txt -> [(file name, 0/1 values of ATTRIBUTES)], in the file's order."""
    lines = path.read_text().splitlines()
    if len(lines) < 3:
        raise RecipeError(f"Expected {str(path)!r} to be list_attr_celeba.txt (a count, a line of attribute names, "
                          f"then one line per image), found {len(lines)} lines.")
    names = lines[1].split()
    missing = [a for a in ATTRIBUTES if a not in names]
    if missing:
        raise RecipeError(f"Expected the attributes {', '.join(ATTRIBUTES)} in line 2 of {str(path)!r}; "
                          f"{', '.join(missing)} are missing.")
    columns = [names.index(a) for a in ATTRIBUTES]
    rows = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        values = fields[1:]
        if len(values) != len(names):
            raise RecipeError(f"Expected {len(names)} attribute values for {fields[0]!r} in {str(path)!r}, got {len(values)}.")
        rows.append((fields[0], torch.tensor([float(values[c] == "1") for c in columns])))
    return rows


class CelebATranslations(Dataset):
    """Sample i -> (image in [-1, 1] concatenated with its target attribute maps, label 0)."""

    def __init__(self, folder: Path, rows: list[tuple[str, torch.Tensor]], crop: int, size: int) -> None:
        self.folder, self.rows, self.crop, self.size = folder, rows, crop, size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import torchvision.transforms.functional as TF
        from PIL import Image

        name, original = self.rows[i]
        path = self.folder / name
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except FileNotFoundError:
            raise RecipeError(f"Expected image {name!r} (listed in the attribute file) in {str(self.folder)!r}, "
                              "but it is not there. Check LITCACHE_CELEBA_IMAGES.") from None
        img = TF.resize(TF.center_crop(img, [self.crop, self.crop]), [self.size, self.size], antialias=True)
        image = (TF.to_tensor(img) - 0.5) / 0.5
        target = target_attributes(original, i % C_DIM)
        maps = target.view(-1, 1, 1).expand(-1, self.size, self.size)
        return torch.cat([image, maps]), 0  # no classes: every label is 0 (num_classes=1)


def load_split(split: str) -> CelebATranslations:
    folder, attrs = _data.env_path("LITCACHE_CELEBA_IMAGES"), _data.env_path("LITCACHE_CELEBA_ATTRS")
    if folder is None or attrs is None:
        raise RecipeError(
            "Expected CelebA in environment variables LITCACHE_CELEBA_IMAGES (the folder of aligned JPEGs, "
            "img_align_celeba/) and LITCACHE_CELEBA_ATTRS (list_attr_celeba.txt), but "
            f"{' and '.join(v for v, p in (('LITCACHE_CELEBA_IMAGES', folder), ('LITCACHE_CELEBA_ATTRS', attrs)) if p is None)} "
            "is not set."
        )
    if not folder.is_dir() or not attrs.is_file():
        raise RecipeError(f"Expected LITCACHE_CELEBA_IMAGES={str(folder)!r} to be a folder and LITCACHE_CELEBA_ATTRS="
                          f"{str(attrs)!r} a file; one of them does not exist.")
    size = _data.env_int("LITCACHE_CELEBA_IMAGE_SIZE", 128)
    if size < 4 or size % 4:
        raise RecipeError(f"Expected LITCACHE_CELEBA_IMAGE_SIZE to be a multiple of 4 (the generator halves it twice), got {size}.")
    rows = read_attributes(attrs)
    random.Random(1234).shuffle(rows)  # StarGAN: random.seed(1234); random.shuffle(lines)
    # StarGAN's `(i + 1) < 2000` test condition puts 1,999 images in its test split.
    test = _data.env_int("LITCACHE_CELEBA_TEST_IMAGES", 1999)
    rows = rows[:test] if split == "test" else rows[test:]
    return CelebATranslations(folder, rows, _data.env_int("LITCACHE_CELEBA_CROP", 178), size)


def generator(blocks: int | None = None):
    """A builder of the generator with ``blocks`` residual blocks (None: LITCACHE_STARGAN_TEACHER)."""

    def build():
        n = blocks if blocks is not None else _data.env_int("LITCACHE_STARGAN_TEACHER", 6)
        return stargan_generator(n, conv_dim=_data.env_int("LITCACHE_STARGAN_CONV_DIM", 64), c_dim=C_DIM)

    return build


# As StarGAN and the LIT authors train the generator: Adam, lr 1e-4, betas (0.5, 0.999), batch 16,
# no weight decay. The epoch count and the step schedule are ours (DESIGN.md gives none).
_ADAM = TrainConfig(epochs=10, batch_size=16, lr=1e-4, weight_decay=0.0, milestones=(5, 8), gamma=0.1,
                    optimizer="adam", betas=(0.5, 0.999))

recipe = Recipe(
    name="celeba_stargan",
    description="CelebA attribute translation (StarGAN's 5 attributes), StarGAN generator with 6 residual blocks -> 2; "
                "one section = the residual blocks; IR loss only; evaluated by MSE/PSNR against the teacher's images",
    task="generation",
    build_teacher=generator(),
    students={"blocks2": generator(2), "blocks3": generator(3)},
    stem="stem",
    sections=("blocks",),
    head="head",
    load_split=load_split,
    num_classes=1,
    augment=CropFlip(padding=0, flip=True),  # flips only; the attribute maps are constant, so unaffected
    teacher_checkpoint="runs/celeba_stargan/teacher.pt",
    # Not usable: train-teacher trains classifiers with cross-entropy (see the docstring).
    teacher_training=_ADAM,
    # finetune is required by DistillConfig but does not apply (its KD loss needs class logits).
    distill=DistillConfig(lit=_ADAM, finetune=_ADAM, alpha=0.95, tau=6.0, beta=0.0),
)


def _convert(source: str, out: str) -> None:
    from litcache.runtime.checkpoint import save_atomic

    state = torch.load(source, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    blocks = _data.env_int("LITCACHE_STARGAN_TEACHER", 6)
    converted = convert_stargan_state(state, residual_blocks=blocks)
    generator(blocks)().load_state_dict(converted)  # refuse a checkpoint that does not fit, before writing
    save_atomic({"state_dict": converted, "recipe": recipe.name}, out)
    print(f"wrote {out} ({len(converted)} tensors)")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "convert":
        sys.exit("usage: python pipelines/celeba_stargan.py convert STARGAN_G.ckpt OUT.pt")
    _convert(sys.argv[2], sys.argv[3])
