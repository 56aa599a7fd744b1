"""Real drawn images with a per-image attribute: Google's Noto emoji in six skin tones, read in place from the
npm package ``emoji-datasource-google@16.0.0`` (``make emoji-data``; ``../shared/data/README.md``).

No face photographs ship in any package here, so this is the closest real attribute-translation data: the
316 "People & Body" emoji that exist in every skin tone, each drawn 6 times (the default yellow and the five
Fitzpatrick tones), 1,896 RGBA 64x64 PNGs. The attribute is the skin tone; StarGAN's domains are its 6
values. Images are composited on white, resized (antialiased) to the chosen side, and decoded once into a
cache next to the archive.

The split is by whole emoji, and by family of emoji: the man, woman and person versions of an emoji (farmer,
man farmer, woman farmer; surfer, man surfing, woman surfing) are drawn alike, so they form one group (see
``emoji_group``), and a group goes to the test split when a hash of its key falls in the lowest
``TEST_PERCENT`` percent. A test emoji is never seen in any tone during training, nor is its gendered twin.

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
READER_FORMAT = "emoji-v2"
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


#: A ZWJ sequence's gender sign (female, male; with or without the emoji presentation selector), and its
#: "facing right" sign (a mirrored drawing).
_GENDER_SIGNS = ("-200D-2640-FE0F", "-200D-2642-FE0F", "-200D-2640", "-200D-2642", "-200D-27A1-FE0F")
#: Single code points for pairs whose other versions are ZWJ sequences of people: the couples holding hands
#: (woman and man, two men, two women), the kiss and the couple with heart.
_PAIRS = {"1F46B": "1F9D1-200D-1F91D-200D-1F9D1", "1F46C": "1F9D1-200D-1F91D-200D-1F9D1",
          "1F46D": "1F9D1-200D-1F91D-200D-1F9D1", "1F48F": "1F9D1-200D-2764-FE0F-200D-1F48B-200D-1F9D1",
          "1F491": "1F9D1-200D-2764-FE0F-200D-1F9D1"}
#: Gendered people and their neutral form -> one key: man, woman, person; boy, girl, child; old man, old woman,
#: older person.
_PEOPLE = {"1F468": "P", "1F469": "P", "1F9D1": "P", "1F466": "C", "1F467": "C", "1F9D2": "C", "1F474": "O",
           "1F475": "O", "1F9D3": "O"}


def emoji_group(code: str) -> str:
    """The key an emoji shares with its man, woman and person versions and its mirror image
    (``1F469-200D-1F33E``, woman farmer -> ``P-200D-1F33E``)."""
    code = _PAIRS.get(code, code)
    for sign in _GENDER_SIGNS:
        code = code.replace(sign, "")
    return "-".join(_PEOPLE.get(part, part) for part in code.split("-"))


def is_test_emoji(code: str) -> bool:
    return xxhash.xxh64_intdigest(emoji_group(code).encode()) % 100 < TEST_PERCENT


def _damaged(path: Path, what: str, error: object = None) -> RecipeError:
    found = f" ({error})" if error else ""
    return RecipeError(f"Expected {str(path)!r} to hold {what}, but it is damaged{found}. Delete it and run "
                       f"`{FETCH}` again.")


def _decode(path: Path, size: int) -> dict[str, np.ndarray]:
    """Every emoji drawn in all six tones -> images (N, size, size, 3) uint8, tone, emoji index, test flag."""
    from PIL import Image, UnidentifiedImageError

    images, tones, emoji, test, codes = [], [], [], [], []
    try:
        # One pass over the archive: gzip cannot seek back without decompressing again from the start.
        files, meta = {}, None
        with tarfile.open(path) as tgz:
            for member in tgz:
                if member.name == "package/emoji.json":
                    meta = json.load(tgz.extractfile(member))
                elif member.name.startswith(_IMAGES) and member.isfile():
                    files[member.name[len(_IMAGES):]] = tgz.extractfile(member).read()
        if meta is None:
            raise KeyError("package/emoji.json")
        for entry in sorted(meta, key=lambda m: m.get("sort_order", 0)):
            variations = entry.get("skin_variations") or {}
            names = [entry.get("image")] + [variations.get(code, {}).get("image") for _, code in SKIN_TONES[1:]]
            if not all(names) or not entry.get("has_img_google"):
                continue  # not drawn in every tone
            index = len(codes)
            codes.append(entry["unified"])
            for tone, name in enumerate(names):
                with Image.open(io.BytesIO(files[name])) as img:
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
