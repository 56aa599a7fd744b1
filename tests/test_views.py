"""Per-view augmentation is a pure function of (seed, sample, view), and stored views replay exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from litcache.data import ViewRows
from litcache.sections import split_model
from litcache.store import open_store
from litcache.teacher import load_teacher
from litcache.views import Augmentation, CropFlip, view_generator, view_seed


def test_view_seed_is_stable_and_distinct():
    assert view_seed(0, 5, 1) == view_seed(0, 5, 1)
    grid = [(s, i, v) for s in (0, 1, 7) for i in range(20) for v in range(4)]
    seeds = [view_seed(*k) for k in grid]
    assert len(set(seeds)) == len(grid)  # seed, index and view all matter, and do not alias
    assert all(0 <= s < 2**63 for s in seeds)
    # Pinned: the seed must not change between releases, or stored views stop replaying.
    assert view_seed(0, 0, 0) == 1685769968090746554
    assert view_seed(1, 2, 3) == 1124060276990588766


def test_view_generator_reproducible():
    a = torch.rand(5, generator=view_generator(3, 10, 2))
    b = torch.rand(5, generator=view_generator(3, 10, 2))
    c = torch.rand(5, generator=view_generator(3, 10, 3))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_cropflip_is_an_augmentation():
    assert isinstance(CropFlip(), Augmentation)
    assert CropFlip(padding=2, flip=False).describe() == {"type": "CropFlip", "padding": 2, "flip": False}
    with pytest.raises(ValueError, match="padding >= 0"):
        CropFlip(padding=-1)


@pytest.mark.parametrize("padding,flip", [(4, True), (1, True), (2, False), (0, True)])
def test_cropflip_sample_deterministic_and_in_range(padding, flip):
    aug = CropFlip(padding=padding, flip=flip)
    shape = torch.Size((3, 8, 8))
    params = {}
    for index, view in itertools.product(range(30), range(4)):
        p = aug.sample(view_generator(0, index, view), shape)
        assert p == aug.sample(view_generator(0, index, view), shape)
        assert len(p) == len(aug.param_names) == 3
        dy, dx, f = p
        assert 0 <= dy <= 2 * padding and 0 <= dx <= 2 * padding and dy == int(dy) and dx == int(dx)
        assert f in ((0.0, 1.0) if flip else (0.0,))
        params[(index, view)] = p
    # The draws cover the parameter space rather than repeating one value.
    combos = (2 * padding + 1) ** 2 * (2 if flip else 1)
    assert len(set(params.values())) >= min(combos, 10)


def _reference_cropflip(x: np.ndarray, padding: int, dy: int, dx: int, flip: int) -> np.ndarray:
    c, h, w = x.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    padded[:, padding:padding + h, padding:padding + w] = x
    out = padded[:, dy:dy + h, dx:dx + w]
    return out[:, :, ::-1] if flip else out


def test_cropflip_apply_matches_reference():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6) + 1
    aug = CropFlip(padding=2)
    for dy, dx, flip in itertools.product(range(5), range(5), (0, 1)):
        got = aug.apply(x, (float(dy), float(dx), float(flip)))
        assert got.shape == x.shape
        assert np.array_equal(got.numpy(), _reference_cropflip(x.numpy(), 2, dy, dx, flip))
    assert torch.equal(aug.apply(x, (2.0, 2.0, 0.0)), x)  # centre crop, no flip: the identity
    assert torch.equal(aug.apply(x, (2.0, 2.0, 1.0)), x.flip(-1))


def test_same_view_same_image_different_views_differ():
    aug = CropFlip(padding=4)
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(0))
    views = []
    for v in range(6):
        p1 = aug.sample(view_generator(9, 3, v), x.shape)
        p2 = aug.sample(view_generator(9, 3, v), x.shape)
        assert torch.equal(aug.apply(x, p1), aug.apply(x, p2))
        views.append((p1, aug.apply(x, p1)))
    for (pa, va), (pb, vb) in itertools.combinations(views, 2):
        assert (pa == pb) == torch.equal(va, vb)
    assert len({p for p, _ in views}) > 1


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=7):
        g = torch.Generator().manual_seed(4)
        self.x = torch.randn(n, 2, 6, 6, generator=g)
        self.y = torch.arange(n) * 10

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_viewrows_view_major():
    data, aug = _Data(7), CropFlip(padding=1)
    rows = ViewRows(data, samples=5, views=3, seed=11, augment=aug)  # samples < len(data): a --limit
    assert len(rows) == 15 and rows.num_params == 3
    for r in range(len(rows)):
        x, y, index, view, params = rows[r]
        assert (index, view) == (r % 5, r // 5) == rows.locate(r)
        assert r == view * 5 + index
        assert y == index * 10
        expected = aug.sample(view_generator(11, index, view), data[index][0].shape)
        assert params.dtype == torch.float32 and params.tolist() == list(expected)
        assert torch.equal(x, aug.apply(data[index][0], expected))
        again = rows[r]
        assert torch.equal(again[0], x) and torch.equal(again[4], params)


def test_viewrows_seed_changes_views_and_no_augment():
    data = _Data(7)
    a = ViewRows(data, 7, 2, seed=0, augment=CropFlip(padding=2))
    b = ViewRows(data, 7, 2, seed=1, augment=CropFlip(padding=2))
    assert any(not torch.equal(a[r][4], b[r][4]) for r in range(len(a)))
    plain = ViewRows(data, 7, 2, seed=0, augment=None)
    assert plain.num_params == 0
    for r in range(len(plain)):
        x, y, index, view, params = plain[r]
        assert torch.equal(x, data[index][0]) and params.numel() == 0


def test_stored_view_params_replay_boundary0(tiny_store, tiny_recipe, teacher_ckpt):
    store = open_store(tiny_store)
    samples, views = store.manifest["layout"]["samples"], store.manifest["layout"]["views"]
    assert store.manifest["view_param_names"] == ["dy", "dx", "flip"]
    source_index = store.read("source_index", 0, store.rows)
    view = store.read("view", 0, store.rows)
    params = store.read("view_params", 0, store.rows)
    rows = torch.arange(store.rows)
    assert torch.equal(source_index, rows % samples) and torch.equal(view.long(), rows // samples)

    dataset = tiny_recipe.load_split("train")
    aug = tiny_recipe.augment
    seed = store.manifest["identity"]["seed"]
    inputs = []
    for r in range(store.rows):
        i, v = int(source_index[r]), int(view[r])
        x = dataset[i][0]
        # The stored parameters are the ones the (seed, sample, view) generator draws ...
        assert params[r].tolist() == list(aug.sample(view_generator(seed, i, v), x.shape))
        # ... and replaying them needs only apply().
        inputs.append(aug.apply(x, params[r].tolist()))
    assert views == 2 and not torch.equal(params[:samples], params[samples:])

    teacher, _, _ = load_teacher(tiny_recipe, teacher_ckpt)
    split = split_model(teacher, tiny_recipe).eval()
    with torch.inference_mode():
        stem = split.stem(torch.stack(inputs))
    stored = store.read("boundaries/0", 0, store.rows)
    torch.testing.assert_close(stored, stem, rtol=1e-5, atol=1e-6)
    # Replaying with the wrong view's parameters would not match: the check can fail.
    with torch.inference_mode():
        swapped = split.stem(torch.stack(inputs[samples:] + inputs[:samples]))
    assert not torch.allclose(stored, swapped, rtol=1e-3, atol=1e-3)
