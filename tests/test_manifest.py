"""The typed manifest: ``Manifest.from_dict`` / ``to_dict`` round trips for the stores that exist
(real ones, and format-1 stores written before later keys existed), every key checked once at open
with a clean error naming it, and read-only objects."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import TINY_STORE_OPTIONS, assert_clean_error, manifest_of, quiet, run_cli

from litcache import extract
from litcache.errors import DamagedStoreError, ManifestError, NotAStoreError, StoreFormatError
from litcache.store.arrays import open_store
from litcache.store.manifest import Manifest, read_manifest


@pytest.fixture(scope="module")
def real_store(tiny_recipe, teacher_ckpt, tmp_path_factory) -> Path:
    """A complete store as ``litcache extract`` makes it (read only: tests copy what they change)."""
    out = tmp_path_factory.mktemp("manifest") / "tiny.zarr"
    extract(tiny_recipe, out, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    return out


def _older(manifest: dict) -> dict:
    """The same manifest as format 1 wrote it before `compute`, `teacher_modules` and the identity's
    `shuffle` existed (stores of the first releases)."""
    old = copy.deepcopy(manifest)
    for key in ("compute", "teacher_modules"):
        del old[key]
    del old["identity"]["shuffle"]
    return old


def _store_with(tmp_path: Path, manifest: dict, foreign: bool = False) -> Path:
    """A directory litcache recognises as a store by its root (zarr.json and a ledger) holding ``manifest``."""
    path = tmp_path / "s.zarr"
    (path / "ledger").mkdir(parents=True)
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"litcache": manifest}}))
    if foreign:
        (path / "notes.txt").write_text("not litcache's")
    return path


# --- round trips -----------------------------------------------------------------------------------


def test_round_trip_of_an_extracted_store(real_store):
    written = manifest_of(real_store)
    manifest = Manifest.from_dict(written, where=str(real_store))
    assert manifest.to_dict() == written
    assert list(manifest.to_dict()) == list(written)  # the same key order too: the same zarr.json
    assert open_store(real_store).manifest == manifest
    # Typed reads of what the store holds.
    assert manifest.layout.rows == 96 and manifest.layout.views == manifest.identity.views == 2
    assert manifest.arrays["boundaries/0"].row_shape == (4, 8, 8) and manifest.arrays["logits"].dtype == "float32"
    assert (manifest.identity.recipe == "tiny" and manifest.identity.shuffle is True
            and manifest.identity.keep_bits is None)
    assert manifest.precision == manifest.compute.precision == "fp32"
    assert [s.index for s in manifest.shards] == list(range(manifest.layout.num_shards))
    assert set(manifest.teacher_modules) == {"stem", "head"} and manifest.options.batch_size == 8
    assert pickle.loads(pickle.dumps(manifest)) == manifest  # DataLoader and dask workers get the store


def test_round_trip_of_an_older_format_1_store(real_store, tmp_path):
    old = _older(manifest_of(real_store))
    manifest = Manifest.from_dict(old)
    assert manifest.to_dict() == old and "compute" not in manifest.to_dict()
    # Absent keys keep the meaning they had: computed in fp32, no stored teacher parts.
    assert manifest.compute is None and manifest.precision == "fp32" and manifest.teacher_modules is None
    # ... and such a store still opens and is described.
    store = shutil.copytree(real_store, tmp_path / "old.zarr")
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["litcache"] = old
    (store / "zarr.json").write_text(json.dumps(meta))
    assert open_store(store).module_state("stem") == {}
    result = run_cli("info", store)
    assert result.exit_code == 0, result.output
    assert "computed     teacher forward in fp32\n" in result.output


def test_round_trip_of_an_incomplete_store(real_store):
    started = {k: v for k, v in manifest_of(real_store).items() if k not in ("completed", "timing", "shards")}
    started["complete"] = False
    manifest = Manifest.from_dict(started)
    assert manifest.to_dict() == started and manifest.shards is None and manifest.timing is None


# --- refused at open ---------------------------------------------------------------------------------


def _set(path: str, value):
    """A change to a manifest: set (or, with ``...``, delete) the value at ``a.b.c``."""
    def change(manifest: dict) -> None:
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return change


BAD = [
    (_set("layout.rows", "96"), "holds '96' at layout.rows where an integer >= 0 is expected"),
    (_set("identity.samples", ...), "lacks identity.samples"),
    (_set("complete", "yes"), "holds 'yes' at complete where true or false is expected"),
    (_set("arrays.logits.dtype", 3), "holds 3 at arrays.logits.dtype where a string is expected"),
    (_set("arrays.boundaries/0.shape", [96, 4, "8"]),
     "holds [96, 4, '8'] at arrays['boundaries/0'].shape where a list of integers >= 0 is expected"),
    (_set("teacher.checkpoint", None), "holds None at teacher.checkpoint where a string is expected"),
    (_set("compute.channels_last", "true"), "holds 'true' at compute.channels_last where true or false is expected"),
    (_set("identity.precision", "fp64"),
     "holds 'fp64' at identity.precision where one of 'fp32', 'bf16', 'fp16' is expected"),
    (_set("shards.2.rows", [32]), "holds [32] at shards[2].rows where [start, stop] with start <= stop is expected"),
    (_set("timing.seconds", -1), "holds -1 at timing.seconds where a number of seconds >= 0 is expected"),
    (_set("layout.num_shards", 5), "holds 5 at layout.num_shards where 6 (one per 16 rows) is expected"),
    (_set("view_param_names", ...), "lacks view_param_names"),
]


@pytest.mark.parametrize("change,problem", BAD, ids=[p.split(" where")[0] for _, p in BAD])
def test_bad_manifest_refused_at_open_naming_the_key(real_store, tmp_path, change, problem):
    manifest = manifest_of(real_store)
    change(manifest)
    path = _store_with(tmp_path, manifest)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert caught.value.problem == problem and isinstance(caught.value, DamagedStoreError)
    line = assert_clean_error(run_cli("info", path), f"Store '{path}' is a litcache store whose manifest (zarr.json) "
                                                      f"{problem}: the store is damaged", 1)
    assert line.endswith(f"`litcache extract RECIPE --out {path} --overwrite` and the same options.")


def test_bad_manifest_beside_foreign_files_is_not_a_store(real_store, tmp_path):
    manifest = manifest_of(real_store)
    manifest["layout"]["rows"] = "96"
    path = _store_with(tmp_path, manifest, foreign=True)  # --overwrite must never replace this directory
    with pytest.raises(NotAStoreError, match="holds '96' at layout.rows .* also holds files litcache does not make"):
        read_manifest(path)


def test_damaged_manifest_is_replaced_with_overwrite(real_store, tiny_recipe, teacher_ckpt, tmp_path):
    store = shutil.copytree(real_store, tmp_path / "s.zarr")
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["litcache"]["layout"]["rows"] = "96"
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedStoreError, match="at layout.rows"):
        extract(tiny_recipe, store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, progress=False, log=quiet)
    result = extract(tiny_recipe, store, TINY_STORE_OPTIONS, teacher_checkpoint=teacher_ckpt, overwrite=True,
                     progress=False, log=quiet)
    assert result.status == "created" and manifest_of(store)["shards"] == manifest_of(real_store)["shards"]


def test_other_format_version_is_a_format_error(real_store):
    manifest = manifest_of(real_store)
    manifest["format_version"] = True  # == 1 in Python, but not the version number 1
    with pytest.raises(StoreFormatError, match="has format version True; this litcache reads versions 1, 2 only"):
        Manifest.from_dict(manifest)


# --- read-only -------------------------------------------------------------------------------------


def test_manifest_is_frozen(real_store):
    manifest = open_store(real_store).manifest
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.complete = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.layout.rows = 1
    with pytest.raises(TypeError):
        manifest.identity["recipe"] = "other"
    with pytest.raises(AttributeError):
        manifest.arrays._data = {}
    manifest.identity.transforms["padding"] = 99  # a copy: the manifest does not change
    assert manifest.identity.transforms["padding"] == 1
    # New versions are made, not changed: replace() freezes what it is given.
    done = dataclasses.replace(manifest, complete=False, arrays={})
    assert done.arrays == {} and manifest.complete is True
    with pytest.raises(TypeError):
        done.arrays["logits"] = None
