"""A store's identity: what it was extracted from (recipe, teacher, data, options that change its bytes).

It stays a read-only mapping: it is compared whole (an extraction resumed or repeated, a training
run resumed from it) and its keys grew with releases; the properties read the keys code relies on,
with the meaning an absent optional key has always had."""

from __future__ import annotations

from .json_fields import BOOL, CODEC, COUNT, DTYPE, INTEGER, POSITIVE, STRING, Expect, FrozenMapping, JsonObject

__all__ = ["Identity"]

#: Keys every store has had, and what their values must be.
REQUIRED = {
    "recipe": STRING, "recipe_hash": STRING, "teacher_hash": STRING, "data_fingerprint": STRING, "split": STRING,
    "samples": COUNT, "views": POSITIVE, "seed": INTEGER,
    "transforms": Expect(lambda v: v is None or isinstance(v, dict), "an object or null"),
    "dtype": DTYPE, "codec": CODEC, "chunk_rows": POSITIVE, "shard_rows": POSITIVE,
}
#: Keys added by later releases: absent in older stores (see the properties for what that means).
OPTIONAL = {"shuffle": BOOL, "keep_bits": POSITIVE,
            "precision": Expect(lambda v: v in ("fp32", "bf16", "fp16"), "one of 'fp32', 'bf16', 'fp16'"),
            "logit_topk": POSITIVE}


_REQUIRED = object()


def _key(key: str, default=_REQUIRED) -> property:
    """A read-only property reading ``key``; an optional key reads ``default`` when absent."""
    if default is _REQUIRED:
        return property(lambda self: self[key])
    return property(lambda self: self.get(key, default))


class Identity(FrozenMapping):
    """The identity object of a manifest, read-only; ``to_dict()`` gives it as written."""

    __slots__ = ()

    @classmethod
    def read(cls, obj: JsonObject) -> "Identity":
        for key, expect in REQUIRED.items():
            obj.get(key, expect)
        for key, expect in OPTIONAL.items():
            if key in obj.value:
                obj.get(key, expect)
        return cls(obj.value)

    recipe: str = _key("recipe")
    recipe_hash: str = _key("recipe_hash")
    teacher_hash: str = _key("teacher_hash")
    data_fingerprint: str = _key("data_fingerprint")
    split: str = _key("split")
    samples: int = _key("samples")
    views: int = _key("views")
    seed: int = _key("seed")
    #: The augmentation's description (a copy), None for a split without one.
    transforms: dict | None = _key("transforms")
    dtype: str = _key("dtype")
    codec: str = _key("codec")
    chunk_rows: int = _key("chunk_rows")
    shard_rows: int = _key("shard_rows")
    #: Whether rows visit the samples in a seeded permutation (absent: split order, as before the option).
    shuffle: bool = _key("shuffle", default=False)
    #: Mantissa bits kept by lossy rounding; None (absent): exact values.
    keep_bits: int | None = _key("keep_bits", default=None)
    #: The teacher's compute precision; absent: fp32, as every store made before --precision.
    precision: str = _key("precision", default="fp32")
    #: Logits kept per position: the top k (topk_values, topk_indices); None (absent): all of them.
    logit_topk: int | None = _key("logit_topk", default=None)
