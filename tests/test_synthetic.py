"""The embedded synthetic dataset: layout, determinism, variety, cache."""

from __future__ import annotations

import colorsys
import threading

import numpy as np
import pytest
from .helpers import tiny_config
from PIL import Image

from stargan_ray.config import ConfigError
from stargan_ray.data import synthetic


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def test_layout_counts_and_size(tmp_path):
    train, val = synthetic.generate(tmp_path, img_size=32, num_domains=3, n_train=5, n_val=2)
    assert train == tmp_path / "train" and val == tmp_path / "val"
    for split, count in ((train, 5), (val, 2)):
        assert sorted(p.name for p in split.iterdir()) == ["circle", "square", "triangle"]
        for domain in split.iterdir():
            files = sorted(domain.glob("*.png"))
            assert len(files) == count
            assert Image.open(files[0]).size == (32, 32)


def test_deterministic_and_seeded(tmp_path):
    a = synthetic.generate(tmp_path / "a", 32, 2, n_train=3, n_val=1, seed=5)[0]
    b = synthetic.generate(tmp_path / "b", 32, 2, n_train=3, n_val=1, seed=5)[0]
    c = synthetic.generate(tmp_path / "c", 32, 2, n_train=3, n_val=1, seed=6)[0]
    for f in sorted(a.rglob("*.png")):
        rel = f.relative_to(a)
        assert np.array_equal(_pixels(f), _pixels(b / rel))
        assert not np.array_equal(_pixels(f), _pixels(c / rel))


def test_train_and_val_differ(tmp_path):
    train, val = synthetic.generate(tmp_path, 32, 2, n_train=2, n_val=2)
    first = "circle/00000.png"
    assert not np.array_equal(_pixels(train / first), _pixels(val / first))


def _silhouette(img: np.ndarray) -> np.ndarray:
    """Pixels far from the corner colour: the shape (the background is one plain colour)."""
    return np.abs(img - img[0, 0]).sum(-1) > 60


def test_styles_vary_within_a_domain_and_domains_differ_in_shape_and_hue():
    rng = np.random.default_rng(0)
    images = [np.asarray(synthetic.draw_image("circle", 32, rng), float) for _ in range(20)]
    backgrounds = np.stack([img[0, 0] for img in images])
    assert backgrounds.std(0).min() > 10  # per-image background colours, not one per domain
    shades = np.stack([img[_silhouette(img)].mean(0) for img in images])
    assert shades.std(0).max() > 10  # the shape's shade varies within its family too

    def drawn(shape):  # same random stream, so identical background, size, position and shade
        return np.asarray(synthetic.draw_image(shape, 64, np.random.default_rng(7)), float)

    masks = {s: _silhouette(drawn(s)) for s in synthetic.SHAPES}
    for i, a in enumerate(synthetic.SHAPES):
        for b in synthetic.SHAPES[i + 1:]:
            assert (masks[a] != masks[b]).mean() > 0.02, (a, b)

    def hue(shape):
        img = drawn(shape)
        r, g, b = img[masks[shape]].mean(0) / 255
        return colorsys.rgb_to_hsv(r, g, b)[0]

    for shape in synthetic.SHAPES:  # the family's hue, within the jitter (and edge blending)
        gap = abs(hue(shape) - synthetic.HUES[shape])
        assert min(gap, 1 - gap) <= synthetic.HUE_JITTER + 0.02, shape


def test_too_many_domains_is_a_config_error():
    with pytest.raises(ConfigError, match="model.num_domains"):
        synthetic.domain_names(len(synthetic.SHAPES) + 1)


def test_cache_generates_once_and_is_safe_for_concurrent_callers(tmp_path):
    results, errors = [], []

    def call():
        try:
            results.append(synthetic.cached(32, 2, n_train=20, n_val=2, cache_dir=tmp_path))
        except Exception as err:  # noqa: BLE001 - surfaced by the assert below
            errors.append(err)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    train, _ = results[0]
    assert len(list(train.rglob("*.png"))) == 40
    assert [p.name for p in tmp_path.iterdir()] == [train.parent.name]  # no temp folders left
    stamp = (train / "circle" / "00000.png").stat().st_mtime_ns
    assert synthetic.cached(32, 2, n_train=20, n_val=2, cache_dir=tmp_path) == results[0]
    assert (train / "circle" / "00000.png").stat().st_mtime_ns == stamp  # reused, not redrawn
    other = synthetic.cached(32, 2, n_train=21, n_val=2, cache_dir=tmp_path)[0]
    assert other != train  # the counts are part of the key


def test_resolve_data_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path))
    cfg = tiny_config(**{"data.train_dir": "synthetic", "data.val_dir": "synthetic"})
    train, val = synthetic.resolve_data_dirs(cfg)
    assert train.startswith(str(tmp_path)) and train.endswith("train") and val.endswith("val")
    assert len(list((tmp_path).glob("synthetic-*/train/*"))) == cfg.model.num_domains
    cfg = tiny_config(**{"data.train_dir": "/data/x/train", "data.val_dir": "/data/x/val"})
    assert synthetic.resolve_data_dirs(cfg) == ("/data/x/train", "/data/x/val")
