from litcache import open_store


def test_tiny_store_complete(tiny_store):
    store = open_store(tiny_store)
    assert store.complete and store.rows == 96
