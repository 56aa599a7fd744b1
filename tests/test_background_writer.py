"""extract(background_writer=...) chooses where shards are compressed and written, explicitly (no
module global, no environment variable), and the store's bytes do not depend on it."""

from __future__ import annotations

import pytest
from conftest import TINY_STORE_OPTIONS, quiet, shard_checksums

from litcache import extract
from litcache.extraction.loop import ShardWriter


@pytest.mark.parametrize("background", [True, False, None])
def test_background_writer_option_chooses_the_writer(tiny_recipe, teacher_ckpt, tiny_store, tmp_path, monkeypatch,
                                                     background):
    inline = []
    real_start = ShardWriter.start

    def recording_start(self):
        inline.append(self.inline)
        return real_start(self)

    monkeypatch.setattr(ShardWriter, "start", recording_start)
    out = tmp_path / "s.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet,
            background_writer=background)
    if background is not None:
        assert inline == [not background]
    assert shard_checksums(out) == shard_checksums(tiny_store)  # tiny_store: written with the automatic choice
