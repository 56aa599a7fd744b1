"""extract(background_writer=..., writer_threads=...) chooses how shards are encoded and written,
explicitly (no module global, no environment variable), and the store's bytes do not depend on it."""

from __future__ import annotations

import pytest
from conftest import TINY_STORE_OPTIONS, quiet, shard_checksums

from litcache import extract
from litcache.extraction.writer import WriterPool


@pytest.mark.parametrize("background,threads", [(True, 1), (True, 3), (False, 1), (False, 2), (None, None)])
def test_writer_options_choose_the_writer(tiny_recipe, teacher_ckpt, tiny_store, tmp_path, monkeypatch,
                                          background, threads):
    chosen = []
    real_init = WriterPool.__init__

    def recording_init(self, writer, threads_, overlap, order):
        chosen.append((threads_, overlap))
        return real_init(self, writer, threads_, overlap, order)

    monkeypatch.setattr(WriterPool, "__init__", recording_init)
    out = tmp_path / "s.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
            background_writer=background, writer_threads=threads)
    assert len(chosen) == 1
    if background is not None:
        assert chosen == [(threads, background)]
    assert shard_checksums(out) == shard_checksums(tiny_store)  # tiny_store: written with the automatic choice
