"""Real drawn images with a per-image attribute: Google's Noto emoji in six skin tones, read in place from the
npm package ``emoji-datasource-google@16.0.0`` (``make emoji-data``; ``../shared/data/README.md``).

No face photographs ship in any package here, so this is the closest real attribute-translation data: the
316 "People & Body" emoji that exist in every skin tone, each drawn 6 times (the default yellow and the five
Fitzpatrick tones), 1,896 RGBA 64x64 PNGs. The attribute is the skin tone; StarGAN's domains are its 6
values. Images are composited on white, resized (antialiased) to the chosen side, and decoded once into a
cache next to the archive.

The split is by whole emoji: an emoji goes to the test split when a hash of its code point falls in the
lowest ``TEST_PERCENT`` percent, so a test emoji is never seen in any tone during training.

Environment variables read here:
  LITCACHE_EMOJI_ARCHIVE     the package archive (default runs/data/emoji/emoji-datasource-google-16.0.0.tgz)
  LITCACHE_EMOJI_ATTRIBUTE   the attribute whose values are the domains (only ``skin_tone`` so far)
  LITCACHE_EMOJI_IMAGE_SIZE  side of the square images (default 32; at most 64, the archive's)
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import xxhash

from litcache.errors import RecipeError
from litcache.recipe import import_beside

_data = import_beside(__file__, "_data")

__all__ = ["ATTRIBUTES", "SKIN_TONES", "TEST_PERCENT", "archive_path", "attribute", "image_size", "load_emoji"]

ARCHIVE_VAR, ATTRIBUTE_VAR, SIZE_VAR = "LITCACHE_EMOJI_ARCHIVE", "LITCACHE_EMOJI_ATTRIBUTE", "LITCACHE_EMOJI_IMAGE_SIZE"
DEFAULT_ARCHIVE = Path("runs") / "data" / "emoji" / "emoji-datasource-google-16.0.0.tgz"
FETCH = "make emoji-data"
#: Domain index -> (name, the skin-tone modifier's code point; None for the default yellow).
SKIN_TONES = (("default", None), ("light", "1F3FB"), ("medium-light", "1F3FC"), ("medium", "1F3FD"),
              ("medium-dark", "1F3FE"), ("dark", "1F3FF"))
#: Attribute name -> its domain names.
ATTRIBUTES = {"skin_tone": tuple(name for name, _ in SKIN_TONES)}
TEST_PERCENT = 15
#: Changes whenever the selection, compositing or split changes, so cached arrays are rebuilt.
READER_FORMAT = "emoji-v1"
_IMAGES = "package/img/google/64/"


def archive_path() -> Path:
    path = _data.env_path(ARCHIVE_VAR) or DEFAULT_ARCHIVE
    if not path.is_file():
        raise RecipeError(f"Expected the emoji archive {str(path)!r}, but it is missing. Run `{FETCH}` to fetch it "
                          f"(or set {ARCHIVE_VAR} to the .tgz of npm emoji-datasource-google@16.0.0).")
    return path


def attribute() -> str:
    name = os.environ.get(ATTRIBUTE_VAR, "").strip() or "skin_tone"
    if name not in ATTRIBUTES:
        raise RecipeError(f"Expected {ATTRIBUTE_VAR} to be one of {sorted(ATTRIBUTES)}; got {name!r}.")
    return name


def image_size() -> int:
    size = _data.env_int(SIZE_VAR, 32)
    if not 4 <= size <= 64 or size % 4:
        raise RecipeError(f"Expected {SIZE_VAR} to be a multiple of 4 from 4 to 64 (the archive's images are 64 "
                          f"pixels; the generator halves the side twice), got {size}.")
    return size


def is_test_emoji(code: str) -> bool:
    return xxhash.xxh64_intdigest(code.encode()) % 100 < TEST_PERCENT


def _damaged(path: Path, what: str, error: object = None) -> RecipeError:
    found = f" ({error})" if error else ""
    return RecipeError(f"Expected {str(path)!r} to hold {what}, but it is damaged{found}. Delete it and run "
                       f"`{FETCH}` again.")


def _decode(path: Path, size: int) -> dict[str, np.ndarray]:
    """Every emoji drawn in all six tones -> images (N, size, size, 3) uint8, tone, emoji index, test flag."""
    from PIL import Image, UnidentifiedImageError

    images, tones, emoji, test, codes = [], [], [], [], []
    try:
        with tarfile.open(path) as tgz:
            meta = json.load(tgz.extractfile("package/emoji.json"))
            for entry in sorted(meta, key=lambda m: m.get("sort_order", 0)):
                variations = entry.get("skin_variations") or {}
                files = [entry.get("image")] + [variations.get(code, {}).get("image") for _, code in SKIN_TONES[1:]]
                if not all(files) or not entry.get("has_img_google"):
                    continue  # not drawn in every tone
                index = len(codes)
                codes.append(entry["unified"])
                for tone, name in enumerate(files):
                    with Image.open(io.BytesIO(tgz.extractfile(_IMAGES + name).read())) as img:
                        rgba = img.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    rgb = Image.alpha_composite(white, rgba).convert("RGB").resize((size, size), Image.LANCZOS)
                    images.append(np.asarray(rgb, dtype=np.uint8))
                    tones.append(tone)
                    emoji.append(index)
                    test.append(is_test_emoji(entry["unified"]))
    except (tarfile.TarError, KeyError, AttributeError, OSError, EOFError, zlib.error, json.JSONDecodeError,
            UnidentifiedImageError) as e:
        raise _damaged(path, "the emoji-datasource-google package (emoji.json and img/google/64/*.png)", e) from None
    if not codes:
        raise _damaged(path, "emoji drawn in every skin tone")
    return {"images": np.stack(images), "tones": np.array(tones, np.int64), "emoji": np.array(emoji, np.int64),
            "test": np.array(test, bool), "codes": np.array(codes)}


def load_emoji(split: str | None = None) -> dict[str, np.ndarray]:
    """The decoded arrays (see :func:`_decode`), of one split or (None) all."""
    attribute()
    path, size = archive_path(), image_size()
    key = _data.files_key([path], READER_FORMAT, TEST_PERCENT, size)
    arrays = _data.cached_arrays(_data.cache_dir(path) / f"emoji-{key}", lambda: _decode(path, size))
    if split is None:
        return arrays
    if split not in ("train", "test"):
        raise RecipeError(f"Expected the split 'train' or 'test', got {split!r}.")
    keep = arrays["test"] == (split == "test")
    return {name: (a[keep] if name != "codes" else a) for name, a in arrays.items()}
