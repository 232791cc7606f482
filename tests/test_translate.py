"""`stargan-ray translate`: files, folders and globs with bad files among them, names, exit
codes, seeds, references, grids and alignment, on a tiny checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.checkpoint import save_checkpoint
from stargan_ray.cli import main
from stargan_ray.engine import TrainState
from stargan_ray import translate as translate_lib
from stargan_ray.inference import MAX_SEED, Translator, load_image_tensor, to_pixels
from stargan_ray.translate import Request, Seeds, Source, TranslateFiles, source_loader

from .helpers import face_points, tiny_config

S = 32
DOMAINS = ("circle", "square", "triangle")  # the synthetic set's names for 3 domains


def photo(path, size=(S, S), seed=0):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def translate(checkpoint, *argv) -> int:
    return main(["translate", "--checkpoint", str(checkpoint), "--device", "cpu", *map(str, argv)])


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(int)


def listed(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_files_folders_and_globs_with_bad_files_among_them(checkpoint, tmp_path, capsys,
                                                           caplog):
    photo(tmp_path / "in" / "wide.png", size=(80, 50))  # any aspect: squashed, as officially
    photo(tmp_path / "in" / "sub" / "deep.jpg", seed=1)
    (tmp_path / "in" / "fake.png").write_text("not an image")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    photo(tmp_path / "more" / "one.png", seed=2)
    photo(tmp_path / "more" / "two.png", seed=3)
    (tmp_path / "more" / "cut.png").write_bytes((tmp_path / "more" / "two.png").read_bytes()[:60])
    photo(tmp_path / "alone.webp", seed=4)
    out = tmp_path / "out"
    rc = translate(checkpoint, "--to", "square", "--seeds", "0,3", "--out", out,
                   tmp_path / "in", f"{tmp_path}/more/*.png", tmp_path / "alone.webp",
                   tmp_path / "missing.png", f"{tmp_path}/nothing*.png")
    assert rc == 1  # something was skipped
    stems = ["wide", "sub/deep", "one", "two", "alone"]
    assert listed(out) == {f"{s}_square_seed{k}.png" for s in stems for k in (0, 3)}
    for path in out.rglob("*.png"):
        assert pixels(path).shape == (S, S, 3)
    captured = capsys.readouterr()
    for bad in ("in/fake.png", "in/empty.png", "more/cut.png", "missing.png", "nothing*.png"):
        assert bad in captured.out  # the summary names every skipped input
    assert "missing.png: no such file" in captured.err
    assert "nothing*.png: matches no files" in captured.err
    assert "fake.png: not an image" in caplog.text and "empty.png: empty file" in caplog.text
    assert "cut.png: OSError: image file is truncated" in caplog.text


def test_all_domains_index_names_and_the_progress_bar(checkpoint, tmp_path, capsys):
    for k in range(5):
        photo(tmp_path / "in" / f"p{k}.png", seed=k)
    assert translate(checkpoint, "--to", "all", "--out", tmp_path / "a", tmp_path / "in") == 0
    assert listed(tmp_path / "a") == {f"p{k}_{d}_seed0.png" for k in range(5) for d in DOMAINS}
    assert "15/15" in capsys.readouterr().err  # more than a few outputs: a bar counting them
    assert translate(checkpoint, "--to", "2", "--out", tmp_path / "b", tmp_path / "in" / "p0.png") \
        == 0
    assert listed(tmp_path / "b") == {"p0_triangle_seed0.png"}
    np.testing.assert_array_equal(pixels(tmp_path / "b" / "p0_triangle_seed0.png"),
                                  pixels(tmp_path / "a" / "p0_triangle_seed0.png"))


def test_seeds_are_reproducible_and_independent_of_the_batch(checkpoint, tmp_path):
    inputs = [photo(tmp_path / "in" / f"p{k}.png", seed=k) for k in range(3)]
    assert translate(checkpoint, "--to", "circle", "--seeds", "0-2", "--batch-size", "5",
                     "--out", tmp_path / "a", *inputs) == 0
    assert translate(checkpoint, "--to", "circle", "--seeds", "2", "--batch-size", "1",
                     "--out", tmp_path / "b", inputs[1]) == 0
    alone = pixels(tmp_path / "b" / "p1_circle_seed2.png")
    batched = pixels(tmp_path / "a" / "p1_circle_seed2.png")
    assert np.abs(alone - batched).max() <= 1  # only float32 summation order differs
    assert (alone != batched).mean() < 0.01
    assert np.abs(batched - pixels(tmp_path / "a" / "p1_circle_seed1.png")).max() > 10
    assert translate(checkpoint, "--to", "circle", "--seeds", "0-2", "--batch-size", "5",
                     "--out", tmp_path / "a", "--overwrite", *inputs) == 0
    np.testing.assert_array_equal(pixels(tmp_path / "a" / "p1_circle_seed2.png"), batched)


def test_psi_zero_gives_every_seed_the_mean_style(checkpoint, tmp_path):
    src = photo(tmp_path / "p.png")
    assert translate(checkpoint, "--to", "square", "--seeds", "0,1", "--psi", "0",
                     "--out", tmp_path / "o", src) == 0
    np.testing.assert_array_equal(pixels(tmp_path / "o" / "p_square_seed0.png"),
                                  pixels(tmp_path / "o" / "p_square_seed1.png"))


def test_reference_mode_uses_the_reference(checkpoint, tmp_path):
    src = photo(tmp_path / "src.png")
    refs = [photo(tmp_path / "refs" / f"r{k}.png", size=(40, 60), seed=10 + k) for k in (1, 2)]
    assert translate(checkpoint, "--to", "triangle", "--out", tmp_path / "o", "--grid", src,
                     "--ref", *refs) == 0
    assert listed(tmp_path / "o") == {"src_triangle_ref-r1.png", "src_triangle_ref-r2.png",
                                      "grid.png"}
    translator = Translator.from_checkpoint(checkpoint)
    x_ref = torch.stack([load_image_tensor(r, S) for r in refs])
    x = load_image_tensor(src, S)[None]
    with torch.no_grad():
        expected = translator.nets.generator(x.expand(2, -1, -1, -1),
                                             translator.nets.style_encoder(x_ref,
                                                                           torch.tensor([2, 2])))
    for k, image in enumerate(to_pixels(expected)):
        got = pixels(tmp_path / "o" / f"src_triangle_ref-r{k + 1}.png")
        assert np.abs(got - image).max() <= 1
    assert np.abs(pixels(tmp_path / "o" / "src_triangle_ref-r1.png")
                  - pixels(tmp_path / "o" / "src_triangle_ref-r2.png")).max() > 10
    grid = pixels(tmp_path / "o" / "grid.png")
    assert grid.shape == (2 * S, 3 * S, 3)  # references above, then the source and its outputs
    assert (grid[:S, :S] == 255).all()
    np.testing.assert_array_equal(grid[S:, 2 * S:], pixels(tmp_path / "o" /
                                                           "src_triangle_ref-r2.png"))


def test_latent_grid_has_a_row_per_input(checkpoint, tmp_path):
    inputs = [photo(tmp_path / f"p{k}.png", seed=k) for k in range(2)]
    assert translate(checkpoint, "--to", "all", "--seeds", "0,1", "--grid", "--out",
                     tmp_path / "o", *inputs) == 0
    assert pixels(tmp_path / "o" / "grid.png").shape == (2 * S, (1 + 3 * 2) * S, 3)


def test_usage_errors_exit_2_with_one_line(checkpoint, tmp_path, capsys):
    src = photo(tmp_path / "in" / "p.png")

    def error(*argv) -> str:
        capsys.readouterr()
        assert translate(checkpoint, *argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "its domains are circle, square, triangle (or their indices 0-2), or all" in \
        error("--to", "dog", "--out", tmp_path / "o", src)
    assert "--psi" in error("--to", "all", "--ref", src, "--psi", "0.5", "--out", tmp_path / "o",
                            "--", src)
    assert "lies inside the input" in error("--to", "all", "--out", tmp_path / "in" / "o",
                                            tmp_path / "in")
    assert "--ref" in error("--to", "all", "--out", tmp_path / "o", src, "--ref",
                            tmp_path / "missing.png")
    assert "celeba_lm_mean.npz: no such file" in error(
        "--to", "all", "--align", "--lm-mean", tmp_path / "celeba_lm_mean.npz",
        "--out", tmp_path / "o", src)
    assert translate(checkpoint, "--to", "all", "--out", tmp_path / "o", src) == 0
    assert "already exists and is kept; pass --overwrite" in error(
        "--to", "all", "--out", tmp_path / "o", src)
    # an output may never replace an input, even with --overwrite
    assert "is, contains or lies inside the input" in error(
        "--to", "square", "--overwrite", "--out", tmp_path / "o", tmp_path / "o" /
        "p_square_seed0.png", src)
    with pytest.raises(SystemExit) as exit_info:
        translate(checkpoint, "--to", "all", "--seeds", "x", "--out", tmp_path / "o", src)
    assert exit_info.value.code == 2


def test_domains_without_recorded_names_are_their_indices(tmp_path, capsys):
    cfg = tiny_config(**{"data.train_dir": str(tmp_path / "gone")})
    ckpt = save_checkpoint(TrainState.create(cfg, "cpu"), tmp_path / "c.pt")
    src = photo(tmp_path / "p.png")
    assert translate(ckpt, "--to", "1", "--out", tmp_path / "o", src) == 0
    assert listed(tmp_path / "o") == {"p_1_seed0.png"}
    assert "named by index 0-1" in capsys.readouterr().err


def test_names_recorded_in_the_checkpoint_are_used_when_the_data_is_gone(tmp_path, capsys):
    cfg = tiny_config(**{"data.train_dir": str(tmp_path / "gone")})
    state = TrainState.create(cfg, "cpu")
    state.domains = ("cat", "dog")
    ckpt = save_checkpoint(state, tmp_path / "c.pt")
    src = photo(tmp_path / "p.png")
    capsys.readouterr()
    assert translate(ckpt, "--to", "dog", "--out", tmp_path / "o", src) == 0
    assert listed(tmp_path / "o") == {"p_dog_seed0.png"}
    assert "named by index" not in capsys.readouterr().err


def test_align_first_with_a_fan(checkpoint, tmp_path, wing):
    src = photo(tmp_path / "face.png", size=(60, 50))
    np.savez(tmp_path / "lm.npz", mean=face_points(np.random.default_rng(1)))
    common = ["--to", "circle", "--align", "--wing", wing, "--lm-mean", tmp_path / "lm.npz"]
    assert translate(checkpoint, *common, "--min-confidence", "0", "--out", tmp_path / "a",
                     src) == 0
    assert listed(tmp_path / "a") == {"face_circle_seed0.png"}
    # no face found (this FAN's heatmaps never peak that high): named and skipped
    assert translate(checkpoint, *common, "--min-confidence", "1e9", "--out", tmp_path / "b",
                     src) == 1
    assert not (tmp_path / "b").exists() or listed(tmp_path / "b") == set()


def test_outputs_are_written_as_they_are_made_a_batch_at_a_time(checkpoint, tmp_path):
    """Many seeds of one photo: G never holds more than a batch of outputs, and each chunk is on
    disk before the next one is generated (memory flat in the number of outputs)."""
    calls = []  # (images this call makes, PNGs on disk before it)
    out = tmp_path / "o"

    class Recording(Translator):
        def translate(self, x, styles, masks=None):
            calls.append((x.size(0) * styles.size(0), len(list(out.glob("*.png")))))
            return super().translate(x, styles, masks)

    base = Translator.from_checkpoint(checkpoint)
    translator = Recording(base.nets, base.cfg, base.device, 4, base.recorded_domains)
    request = Request((0, 2), seeds=Seeds.parse("0-9"))
    done = TranslateFiles(translator, request, out, source_loader(translator)).run(
        [Source(photo(tmp_path / "p.png"), "")])
    assert done.count == 20 and len(list(out.glob("*.png"))) == 20
    made = [n for n, _ in calls]
    assert max(made) <= 4 and sum(made) == 20
    assert [on_disk for _, on_disk in calls] == [sum(made[:i]) for i in range(len(made))]
    assert (out / "p_triangle_seed9.png").is_file()


def test_seeds_outside_the_generator_range_and_too_many_outputs_are_one_line(
        checkpoint, tmp_path, capsys, monkeypatch):
    src = photo(tmp_path / "p.png")

    def error(*argv) -> str:
        capsys.readouterr()
        assert translate(checkpoint, "--to", "circle", "--out", tmp_path / "o", *argv, src) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert "--seeds: 99999999999999999999 is above the largest seed 4294967295" in \
        error("--seeds", "99999999999999999999")
    assert "--seeds: 4294967296 is above" in error("--seeds", "0-4294967296")
    assert "= 100001 outputs, above the limit of 10000; pass --no-limit" in \
        error("--seeds", "0-100000")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(translate_lib, "MAX_OUTPUTS", 5)  # the same rule at a size a test runs
    assert "1 input(s) x 1 domain(s) x 6 style(s) = 6 outputs" in error("--seeds", "0-5")
    assert translate(checkpoint, "--to", "circle", "--seeds", "0-5", "--no-limit", "--out",
                     tmp_path / "o", src) == 0
    assert listed(tmp_path / "o") == {f"p_circle_seed{k}.png" for k in range(6)}
    assert "6/6" in capsys.readouterr().err  # the bar counts outputs, one photo or many
    assert translate(checkpoint, "--to", "circle", "--seeds", str(MAX_SEED), "--out",
                     tmp_path / "top", src) == 0  # the largest seed, inference.MAX_SEED
