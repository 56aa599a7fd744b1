"""The row order README.md's store section documents, checked against the rows extraction stores."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import quiet

from litcache import ExtractOptions, extract
from litcache.views import view_generator


def readme_row(position: int, view: int, samples: int, views: int, chunk_rows: int) -> int:
    """The row of view ``view`` of the sample at ``position``, as README.md's store section writes it."""
    B, full = chunk_rows, samples // chunk_rows
    if position < full * B:
        return (position // B * views + view) * B + position % B
    return full * B * views + view * (samples % B) + position - full * B


def rows_by_readme(store) -> dict[str, np.ndarray]:
    """``source_index``, ``view`` and ``view_params`` (read through zarr, not litcache) indexed
    [position, view] by the README's formula; each row must be named exactly once."""
    group = zarr.open_group(str(store), mode="r")
    identity = group.attrs["litcache"]["identity"]
    samples, views, chunk_rows = identity["samples"], identity["views"], identity["chunk_rows"]
    rows = np.array([[readme_row(p, v, samples, views, chunk_rows) for v in range(views)] for p in range(samples)])
    assert sorted(rows.ravel().tolist()) == list(range(samples * views))
    return {name: group[name][:][rows] for name in ("source_index", "view", "view_params")}


def test_tiny_store_rows_follow_the_readme(tiny_store):
    """48 samples x 2 views in 8-row chunks, shuffled: whole blocks only."""
    by_readme = rows_by_readme(tiny_store)
    source, view = by_readme["source_index"], by_readme["view"]
    assert (view == np.arange(2)).all()
    assert (source == source[:, :1]).all()  # every view of a position is the same sample
    assert sorted(source[:, 0].tolist()) == list(range(48))
    assert source[:, 0].tolist() != list(range(48))  # shuffled by default


@pytest.mark.parametrize("shuffle", [False, True], ids=["split-order", "shuffled"])
def test_rows_with_a_partial_last_block_follow_the_readme(tiny_recipe, teacher_ckpt, tmp_path, shuffle):
    """21 samples x 3 views in 4-row chunks: five whole blocks, then a last block of one position."""
    out = tmp_path / "s.zarr"
    options = ExtractOptions(limit=21, views=3, chunk_rows=4, shard_rows=8, dtype="float32", seed=5, shuffle=shuffle)
    extract(tiny_recipe, out, options, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    by_readme = rows_by_readme(out)
    source, view = by_readme["source_index"], by_readme["view"]
    assert (view == np.arange(3)).all()
    assert (source == source[:, :1]).all()
    if shuffle:
        assert sorted(source[:, 0].tolist()) == list(range(21)) and source[:, 0].tolist() != list(range(21))
    else:
        assert source[:, 0].tolist() == list(range(21))  # --no-shuffle: position = sample index
    # View v of sample i is made from the generator seeded by (seed, i, v), whatever its row.
    dataset, augment = tiny_recipe.load_split("train"), tiny_recipe.augmentation_for("train")
    shape = dataset[0][0].shape
    for p in range(21):
        for v in range(3):
            expected = augment.sample(view_generator(5, int(source[p, v]), v), shape)
            assert by_readme["view_params"][p, v].tolist() == list(expected), (p, v)
