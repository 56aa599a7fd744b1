"""The store: a versioned Zarr v3 group of teacher activations, the on-disk format everything else
reads. Nothing here imports extraction or training.

Layout (rows are samples x views, stripe-interleaved so that one view of a stripe of samples is
exactly one chunk; see ``litcache.store.layout.RowLayout``)::

    STORE/zarr.json            root group; attributes["litcache"] is the manifest
    STORE/boundaries/0         (rows, C, H, W) stem output
    STORE/boundaries/1..S      (rows, ...) output of each section
    STORE/logits               (rows, classes)
    STORE/labels               (rows,) int64
    STORE/source_index         (rows,) int64   index of the sample in its split
    STORE/view                 (rows,) int32   view id, 0..views-1
    STORE/view_params          (rows, P) float32, only when the split is augmented
    STORE/teacher/stem/<key>   the teacher's stem and head parameters and buffers, so students
    STORE/teacher/head/<key>   get frozen copies of them without loading the teacher
    STORE/teacher/sectionI/<key>  the teacher's section I (from 1), for --student-init teacher-blocks
                               (stores made before they were kept lack them; nothing else reads them)
    STORE/ledger/shard-*.json  one file per committed shard, with its checksums
    STORE/.lock                present while an extraction runs (host, pid)

Every array is chunked along rows only and sharded in shards of whole chunks; writers only
ever write whole shards. The manifest is written first with ``complete: false`` and rewritten
last with ``complete: true`` and the checksum of every shard (xxh3_64 of the stored bytes of
each array's rows in that shard, in storage dtype and C order).

Modules: ``layout`` (row order and the names on disk), ``manifest`` and ``identity`` (the
manifest, read through ``json_fields``), ``arrays`` (reader, writer, ledger, checksums), ``shards``
(the row arrays' shard files), ``encoding`` (storage dtypes, mantissa rounding, codecs), ``location``
(local directory or URL), ``lock`` (the writer lock), ``debris`` (temporary files of killed writers),
``space`` (disk space) and ``verify`` (``litcache info`` and the checksums of ``litcache verify``).
"""

from __future__ import annotations

from .. import _compat
from .arrays import (
    ArraySpec,
    Store,
    StoreWriter,
    checksum,
    open_store,
    read_ledger,
    shard_ranges,
    store_sizes,
    verify_checksums,
)
from .manifest import FORMAT, FORMAT_VERSION, TOKEN_FORMAT_VERSION, Manifest, read_manifest

__all__ = ["FORMAT", "FORMAT_VERSION", "TOKEN_FORMAT_VERSION", "Manifest", "read_manifest", "ArraySpec", "Store",
           "StoreWriter", "checksum", "open_store", "read_ledger", "shard_ranges", "store_sizes", "verify_checksums"]


def __getattr__(name: str):
    """Names ``litcache.store`` held when it was one module (``DTYPES``, ``store_lock``, ...), with a warning."""
    if name.startswith("__"):
        raise AttributeError(name)
    module = _compat.holder(name, _compat.STORE_MODULE, __name__)
    _compat.deprecated(f"litcache.store.{name}", module.__name__)
    return getattr(module, name)
