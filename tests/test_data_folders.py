"""Folder layout checks (one-line errors naming the path) and decoding of every image kind."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from stargan_ray.data import folders
from stargan_ray.data.folders import (BadImage, DomainCountError, DomainMismatchError,
                                      EmptyDomainError, MissingRootError, TooFewDomainsError)
from stargan_ray.data.table import open_train_table
from stargan_ray.errors import UserError

from .helpers import image_tree, tiny_config


def _png(path, colour=(200, 30, 30), size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _tree(root, domains=("cat", "dog"), n=2):
    return image_tree(root, domains, n)


def _one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    text = str(err.value)
    assert "\n" not in text and str(path) in text, text
    assert isinstance(err.value, UserError)  # the CLI prints it and exits 2


def test_scan_sorts_domains_and_lists_recursively(tmp_path):
    root = _tree(tmp_path / "train", domains=("zebra", "ant"))
    _png(root / "ant" / "nested" / "x.JPG")
    (root / "ant" / "notes.txt").write_text("not an image extension: ignored")
    folder = folders.scan(str(root), num_domains=2)
    assert folder.domains == ("ant", "zebra")  # sorted like the official loader: ids match
    assert folder.counts == [3, 2]
    assert folder.labels.tolist() == [0, 0, 0, 1, 1]
    assert any(p.endswith("nested/x.JPG") for p in folder.paths)


def test_missing_root(tmp_path):
    with pytest.raises(MissingRootError) as err:
        folders.scan(str(tmp_path / "nope"))
    _one_line_naming(err, tmp_path / "nope")


def test_fewer_than_two_domains(tmp_path):
    root = _tree(tmp_path / "train", domains=("only",))
    with pytest.raises(TooFewDomainsError) as err:
        folders.scan(str(root))
    _one_line_naming(err, root)


def test_empty_domain(tmp_path):
    root = _tree(tmp_path / "train")
    (root / "empty").mkdir()
    with pytest.raises(EmptyDomainError) as err:
        folders.scan(str(root))
    _one_line_naming(err, root / "empty")


def test_domain_count_differs_from_config(tmp_path):
    root = _tree(tmp_path / "train", domains=("a", "b", "c"))
    with pytest.raises(DomainCountError) as err:
        folders.scan(str(root), num_domains=2)
    _one_line_naming(err, root)
    assert "model.num_domains" in str(err.value)


def test_val_domains_differ_from_train(tmp_path):
    train = _tree(tmp_path / "train", domains=("cat", "dog"))
    val = _tree(tmp_path / "val", domains=("cat", "wolf"))
    with pytest.raises(DomainMismatchError) as err:
        open_train_table(tiny_config(**{"data.train_dir": str(train), "data.val_dir": str(val)}))
    _one_line_naming(err, val)


def test_domain_with_no_readable_image(tmp_path):
    root = _tree(tmp_path / "train")
    (root / "bad").mkdir()
    (root / "bad" / "a.png").write_bytes(b"")
    (root / "bad" / "b.jpg").write_text("hello")
    folder = folders.scan(str(root))
    with pytest.raises(EmptyDomainError) as err:
        folders.drop_unreadable(folder)
    _one_line_naming(err, root / "bad")


# ---------------------------------------------------------------- decoding


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("L", (6, 4), 77), (77, 77, 77)),
    (lambda: Image.new("LA", (6, 4), (77, 10)), (77, 77, 77)),
    (lambda: Image.new("RGBA", (6, 4), (10, 20, 30, 0)), (10, 20, 30)),  # alpha dropped (official)
    (lambda: Image.new("P", (6, 4), 0), (0, 0, 0)),
    (lambda: Image.fromarray(np.full((4, 6), 40000, np.uint16)), (156, 156, 156)),  # I;16 scaled
])
def test_modes_become_rgb(make, expected):
    image = folders.decode(_encode(make()))
    assert image.mode == "RGB" and image.size == (6, 4)
    assert tuple(np.asarray(image)[0, 0]) == expected


def test_cmyk_jpeg_becomes_rgb():
    image = folders.decode(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"))
    r, g, b = np.asarray(image)[8, 8].astype(int)
    assert image.mode == "RGB" and r > 200 and g < 50 and b < 50


def test_16_bit_rgb_png_is_scaled_not_clipped():
    pixels = np.zeros((4, 4, 3), np.uint16)
    pixels[..., 0] = 65535
    pixels[..., 1] = 32896  # mid grey in 16 bits
    out = np.asarray(folders.decode(_png16_rgb(pixels)))
    assert tuple(out[0, 0]) == (255, 128, 0)


def test_any_size_and_reduction_keeps_aspect():
    data = _encode(Image.new("RGB", (300, 100), (1, 2, 3)), "JPEG")
    assert folders.decode(data).size == (300, 100)
    assert folders.decode(data, min_side=50).size == (150, 50)
    assert folders.decode(data, min_side=400).size == (300, 100)  # never enlarged


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"this is a text file named .png", "not an image"),
])
def test_bad_bytes_raise_bad_image(data, reason):
    with pytest.raises(BadImage, match=reason):
        folders.decode(data)


def test_truncated_jpeg_raises_bad_image():
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG")
    with pytest.raises(BadImage, match="truncated"):
        folders.decode(data[: len(data) // 2])


def test_probe_finds_header_problems_only(tmp_path):
    fs = folders.filesystem(str(tmp_path))[0]
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    jpeg = _encode(Image.fromarray(noise), "JPEG")
    files = {"empty.png": b"", "text.png": b"hello", "good.jpg": jpeg,
             "cut.jpg": jpeg[: len(jpeg) // 2]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    reasons = {name: folders.probe(fs, str(tmp_path / name)) for name in files}
    assert reasons["empty.png"] == "empty file"
    assert "not an image" in reasons["text.png"]
    assert reasons["good.jpg"] is None
    assert reasons["cut.jpg"] is None  # only a full decode finds truncation (the pipeline does)
    assert folders.probe(fs, str(tmp_path / "gone.png")) is not None


# ---------------------------------------------------------------- links (issue 23)


def test_a_symlink_loop_counts_each_real_file_once_and_is_named_once(tmp_path, caplog):
    root = _tree(tmp_path / "train", n=5)
    (root / "dog" / "loop").symlink_to(root / "dog")  # before: dog counted 205 (40 levels deep)
    (root / "cat" / "twin.png").symlink_to(root / "cat" / "0.png")  # one real file, two names
    (root / "cat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    shared = tmp_path / "shared"
    _png(shared / "s.png")
    (root / "cat" / "more").symlink_to(shared)  # a link to a folder outside: followed
    folder = folders.scan(str(root))
    assert folder.counts == [6, 5]
    assert str(root / "cat" / "more" / "s.png") in folder.paths
    reasons = dict(folder.skipped)
    assert len(folder.skipped) == 2
    assert "broken symlink" in reasons[str(root / "cat" / "gone.png")]
    assert "symlink loop" in reasons[str(root / "dog" / "loop")]
    with caplog.at_level("WARNING", logger="stargan_ray.data"):
        files = folders.list_image_files(root / "dog")
    assert len(files) == 5
    named = [r.getMessage() for r in caplog.records if "loop" in r.getMessage()]
    assert len(named) == 1 and str(root / "dog" / "loop") in named[0]
