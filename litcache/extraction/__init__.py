"""Stage 1: run the teacher once and stream its section boundaries, logits and labels into a store.

``run`` is `litcache extract` (create, resume or leave a store); ``plan`` works out what to compute;
``loop`` computes it and writes whole shards; ``distributed`` spreads shards over a dask cluster;
``replay`` checks stored rows against the live teacher. Nothing here imports ``litcache.training``.
"""
