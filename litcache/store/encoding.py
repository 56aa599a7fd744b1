"""How activations are stored: storage dtypes, lossy mantissa rounding, and the compression codecs."""

from __future__ import annotations

import numpy as np
import torch
import zarr.codecs

__all__ = ["DTYPES", "CODECS", "AUTO_CODEC", "MANTISSA_BITS", "codec_pipeline", "numcodecs_compressor", "to_storage",
           "from_storage", "round_mantissa"]

#: Logical dtype of stored activations -> numpy storage dtype (zarr 3.1 has no bfloat16: store its bits).
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Strongest first (by bytes stored: zstd-1 1.45x on float16 ResNet maps, lz4 + shuffle 1.1x).
CODECS = ("zstd", "lz4", "none")
#: Not a codec: ``extract --codec auto`` chooses one of CODECS by speed (litcache.extraction.codec_choice).
AUTO_CODEC = "auto"
#: Explicit mantissa bits of each activation dtype: ``keep_bits`` (lossy rounding) must keep fewer.
MANTISSA_BITS = {"float32": 23, "float16": 10, "bfloat16": 7}
_UINT = {"float32": np.uint32, "float16": np.uint16, "bfloat16": np.uint16}


def codec_pipeline(codec: str) -> list:
    """Compressors for ``codec``. Measured on ResNet activations in float16: plain Zstd(1) is as
    small as Blosc-zstd with byte shuffle and faster; Blosc-lz4 with byte shuffle decodes fastest."""
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=1)]
    if codec == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    if codec == "none":
        return []
    raise ValueError(f"Expected a codec in {CODECS}, got {codec!r} instead.")


def numcodecs_compressor(codec: str):
    """The numcodecs object that encodes a chunk as ``codec_pipeline(codec)`` does (None: raw bytes)."""
    import numcodecs

    if codec == "zstd":
        return numcodecs.Zstd(level=1)
    if codec == "lz4":
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if codec == "none":
        return None
    raise ValueError(f"Expected a codec in {CODECS}, got {codec!r} instead.")


def to_storage(tensor: torch.Tensor, dtype: str, keep_bits: int | None = None) -> np.ndarray:
    """Cast activations to the storage representation (casting in torch is faster than numpy),
    rounding the mantissa to ``keep_bits`` bits when given (lossy; see ``round_mantissa``)."""
    t = tensor.detach().to("cpu", _TORCH_DTYPES[dtype]).contiguous()
    if keep_bits is not None and t.data_ptr() == tensor.data_ptr():
        t = t.clone()  # rounding works in place: never on the caller's tensor
    array = t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()
    if keep_bits is not None:
        round_mantissa(array, dtype, keep_bits)
    return array


def round_mantissa(array: np.ndarray, dtype: str, keep_bits: int) -> np.ndarray:
    """Round floats of ``dtype`` (bfloat16 as its uint16 bits) to ``keep_bits`` mantissa bits, in
    place, to nearest with ties to even: numcodecs' BitRound. The dropped bits become zeros, which
    zstd then compresses; the relative error of a normal (not subnormal) value is at most 2**-(keep_bits + 1)."""
    drop = MANTISSA_BITS[dtype] - keep_bits
    if drop <= 0:
        return array
    bits = array.view(_UINT[dtype])
    kind = bits.dtype.type
    lowest_kept = (bits >> kind(drop)) & kind(1)
    bits += kind((1 << (drop - 1)) - 1)
    bits += lowest_kept  # ties go to the even neighbour
    bits &= kind(~((1 << drop) - 1) & np.iinfo(kind).max)
    return array


def from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    """Inverse of ``to_storage``: a tensor of the logical dtype."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))
