"""Sampling rules of the training pipeline, checked in-process (the Ray path runs the same code).

Domains here are colour families (domain 0 red, domain 1 blue), so the pixels of any row tell
its domain through the augmentation.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.data import layout, sampling
from stargan_ray.data.layout import spread_order
from stargan_ray.data.sampling import BadImageLog, crop_box
from stargan_ray.data.stream import local_batches, local_raw_batches
from stargan_ray.data.table import open_train_table

from .helpers import colour_domain, tiny_config, write_colour_tree


def cfg_for(train, val=None, **overrides):
    return tiny_config(**{"data.train_dir": str(train), "data.val_dir": str(val or train),
                          "data.batch_size": 8, **overrides})


def draw(cfg, n_batches, **kwargs):
    it = local_raw_batches(cfg, **kwargs)
    rows = [next(it) for _ in range(n_batches)]
    return {k: torch.cat([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """A 10:1 domain imbalance (200 vs 20 images)."""
    root = write_colour_tree(tmp_path_factory.mktemp("imb") / "train", (200, 20))
    return cfg_for(root)


def test_sources_and_references_are_balanced_despite_10_to_1(imbalanced):
    rows = draw(imbalanced, 250)  # 2000 rows; an unbalanced sampler gives ~9% of domain 1
    for key in ("y_src", "y_ref"):
        share = rows[key].float().mean().item()
        assert abs(share - 0.5) < 0.05, (key, share)
    # the rare domain's images are all in use, not a few of them repeated
    table, _ = open_train_table(imbalanced)
    rare = set(np.flatnonzero(table.labels == 1).tolist())
    assert rare <= set(rows["i_src"].tolist())


def test_rows_carry_images_of_their_domains(imbalanced):
    rows = draw(imbalanced, 40)
    table, _ = open_train_table(imbalanced)
    labels = torch.as_tensor(table.labels)
    assert torch.equal(labels[rows["i_src"]], rows["y_src"])
    assert torch.equal(labels[rows["i_ref"]], rows["y_ref"])
    assert torch.equal(labels[rows["i_ref2"]], rows["y_ref"])
    assert (rows["i_ref"] != rows["i_ref2"]).all()  # two different images of domain y_ref
    for key, y in (("x_src", "y_src"), ("x_ref", "y_ref"), ("x_ref2", "y_ref")):
        assert np.array_equal(colour_domain(rows[key]), rows[y].numpy()), key


def test_batches_have_official_fields_and_ranges(imbalanced):
    batch = next(local_batches(imbalanced))
    n, size, latent = 8, imbalanced.model.img_size, imbalanced.model.latent_dim
    for name in ("x_src", "x_ref", "x_ref2"):
        x = getattr(batch, name)
        assert x.shape == (n, 3, size, size) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and x.max() > 0.5 and x.min() < -0.5
    assert batch.y_src.dtype == torch.int64 and batch.y_ref.shape == (n,)
    assert batch.z_trg.shape == (n, latent) and not torch.equal(batch.z_trg, batch.z_trg2)


def test_same_seed_same_batches_other_seed_other_batches(imbalanced):
    a, b = draw(imbalanced, 30, seed=1), draw(imbalanced, 30, seed=1)
    c = draw(imbalanced, 30, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["x_src"], c["x_src"]) and not torch.equal(a["i_ref"], c["i_ref"])
    za = next(local_batches(imbalanced, seed=1)).z_trg
    assert torch.equal(za, next(local_batches(imbalanced, seed=1)).z_trg)


def test_pairs_are_drawn_afresh_every_epoch(imbalanced):
    rows = draw(imbalanced, 80)  # 640 rows, ~3 epochs of 220 images
    first, second = rows["epoch"] == 0, rows["epoch"] == 1
    assert first.sum() > 100 and second.sum() > 100
    pairs = [set(zip(rows["i_ref"][m].tolist(), rows["i_ref2"][m].tolist()))
             for m in (first, second)]
    overlap = len(pairs[0] & pairs[1]) / len(pairs[0])
    assert overlap < 0.3, overlap  # a fixed pairing (official) would overlap fully


def test_ranks_get_disjoint_images(imbalanced):
    # each chunk is read by one lane, each lane by one rank: within an epoch no image is seen
    # by both ranks (with 4 chunks per epoch and 8 lanes, each rank reads every other epoch)
    r0 = draw(imbalanced, 80, world_rank=0, world_size=2)
    r1 = draw(imbalanced, 80, world_rank=1, world_size=2)
    for epoch in range(4):
        seen = [set(torch.cat([r["i_src"][r["epoch"] == epoch], r["i_ref"][r["epoch"] == epoch],
                               r["i_ref2"][r["epoch"] == epoch]]).tolist()) for r in (r0, r1)]
        assert seen[0] or seen[1]
        assert not seen[0] & seen[1], epoch


def _steps(cfg, n, **kwargs):
    it = local_raw_batches(cfg, **kwargs)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_the_rows_and_codes_of_a_step_do_not_depend_on_the_worker_count(imbalanced, world_size):
    single = _steps(imbalanced, 30)  # 240 rows: past the first chunk of every lane
    shares = [_steps(imbalanced, 30, world_rank=r, world_size=world_size)
              for r in range(world_size)]
    for step, whole in enumerate(single):
        for key, value in whole.items():
            assert torch.equal(torch.cat([s[step][key] for s in shares]), value), (step, key)
    z_single = next(local_batches(imbalanced)).z_trg
    z_shares = [next(local_batches(imbalanced, world_rank=r, world_size=world_size)).z_trg
                for r in range(world_size)]
    assert torch.equal(torch.cat(z_shares), z_single)


def test_a_run_started_at_step_s_reads_what_step_s_would_and_nothing_before(imbalanced,
                                                                           monkeypatch):
    from stargan_ray.data import stream

    straight = _steps(imbalanced, 90)  # about 3 epochs of 220 images, 8 lanes
    table, _ = open_train_table(imbalanced)
    lanes = stream.make_stream(imbalanced, table, imbalanced.train.seed)
    decoded = []
    real = stream.chunk_rows
    monkeypatch.setattr(stream, "chunk_rows",
                        lambda *a, **k: decoded.append(tuple(a[2:4])) or real(*a, **k))
    for start in (0, 37, 61, 83):
        decoded.clear()
        resumed = _steps(imbalanced, 90 - start, start_step=start, table=table)
        for step, rows in enumerate(resumed, start=start):
            assert all(torch.equal(rows[k], straight[step][k]) for k in rows), (start, step)
        # exactly the chunks the lanes read from step `start` to step 89, none before
        needed = set()
        for lane in range(imbalanced.data.batch_size):
            first, _ = lanes.lane_position(lane, start)
            last, _ = lanes.lane_position(lane, 89)
            needed |= {lanes.task_chunk(t) for t in range(first, last + 1, lanes.lanes)}
        assert sorted(decoded) == sorted(needed), start
    z = next(local_batches(imbalanced, start_step=61)).z_trg
    it = local_batches(imbalanced)
    for _ in range(61):
        next(it)
    assert torch.equal(next(it).z_trg, z)


def test_lane_positions_agree_with_counting_rows():
    plan = layout.make_plan([150, 47], group_size=16, img_size=32, seed=3, lanes=5)
    stream = layout.Stream.of(plan, 197, 16, 5)
    assert stream.task_rows(0) == sum(min(16, 197 - 16 * g) for g in plan.chunk(0, 0))
    for lane in range(5):
        task, first, counted = lane, 0, 0
        for step in range(400):
            assert stream.lane_position(lane, step) == (task, first), (lane, step)
            first += 1
            if first == stream.task_rows(task):
                task, first = task + 5, 0


def test_spread_order_puts_every_domain_in_every_run():
    labels = np.repeat([0, 1, 2], [500, 50, 5])
    order = spread_order(labels)
    assert sorted(order.tolist()) == list(range(555))
    for start in range(0, 555 - 111, 111):  # any fifth of the order holds a fifth of each domain
        window = np.bincount(labels[order[start:start + 111]], minlength=3)
        assert abs(window[0] - 100) <= 2 and abs(window[1] - 10) <= 2 and window[2] == 1


# ---------------------------------------------------------------- augmentation


def test_crop_box_follows_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        left, top, right, bottom = crop_box(200, 160, rng)
        w, h = right - left, bottom - top
        assert 0 <= left and 0 <= top and right <= 200 and bottom <= 160
        assert 0.8 * 0.97 <= w * h / (200 * 160) <= 1.0
        assert 0.9 * 0.97 <= w / h <= 1.1 * 1.03


def test_augment_probabilities_and_output():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (64, 1, 3))
    image = Image.fromarray(ramp)
    flips = crops = 0
    for _ in range(400):
        out = sampling.augment(image, rng, 32, randcrop_prob=0.5)
        assert out.shape == (3, 32, 32) and out.dtype == np.uint8
        plain = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        flipped = out[0, 0, 0] > out[0, 0, -1]
        flips += flipped
        crops += not np.array_equal(out[:, :, ::-1] if flipped else out, plain)
    assert abs(flips / 400 - 0.5) < 0.08 and abs(crops / 400 - 0.5) < 0.08
    never = [sampling.augment(image, rng, 32, randcrop_prob=0.0) for _ in range(20)]
    unflipped = [o if o[0, 0, 0] < o[0, 0, -1] else o[:, :, ::-1] for o in never]
    assert all(np.array_equal(o, plain) for o in unflipped)


# ---------------------------------------------------------------- bad files


@pytest.fixture
def dirty(tmp_path):
    root = write_colour_tree(tmp_path / "train", (24, 24))
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(root / "d0" / "cut.jpg")
    data = (root / "d0" / "cut.jpg").read_bytes()
    (root / "d0" / "cut.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (root / "d0" / "zero.png").write_bytes(b"")  # zero bytes
    (root / "d1" / "text.png").write_text("a text file named .png")
    Image.new("RGB", (8, 8)).save(root / "d1" / "gone.png")  # unreadable once the run starts
    return root


def test_bad_files_are_skipped_counted_and_reported_once(dirty, caplog):
    cfg = cfg_for(dirty)
    with caplog.at_level(logging.WARNING, logger="stargan_ray.data"):
        table, bad = open_train_table(cfg)
        (dirty / "d1" / "gone.png").unlink()
        log = BadImageLog()
        log.report(bad)
        it = local_raw_batches(cfg, table=table, bad_log=log)
        rows = [next(it) for _ in range(30)]  # 240 rows: several epochs over 52 files
    assert rows[-1]["epoch"].max().item() >= 2  # met every bad file in several epochs
    kinds = {path.rsplit("/", 1)[-1]: reason for path, reason in log.summary().items()}
    assert set(kinds) == {"cut.jpg", "zero.png", "text.png", "gone.png"}
    assert "truncated" in kinds["cut.jpg"] and kinds["zero.png"] == "empty file"
    assert "not an image" in kinds["text.png"] and "FileNotFound" in kinds["gone.png"]
    for name in kinds:  # once each, however many epochs met it
        assert sum(name in r.getMessage() for r in caplog.records) == 1, name
    ids = torch.cat([torch.cat([r["i_src"], r["i_ref"], r["i_ref2"]]) for r in rows]).unique()
    names = {"/".join(table.paths[i].rsplit("/", 2)[-2:]) for i in ids.tolist()}
    assert not {n.split("/")[1] for n in names} & set(kinds)  # no bad file ever became a row
    assert len(names) == 48  # every good file did


def test_unreadable_permissions(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    root = write_colour_tree(tmp_path / "train", (8, 8))
    (root / "d0" / "0000.png").chmod(0)
    table, bad = open_train_table(cfg_for(root))
    assert [p.rsplit("/", 1)[-1] for p, _ in bad] == ["0000.png"]
    assert len(table.labels) == 15


def test_chunks_cover_small_domains():
    plan = layout.make_plan([1000, 20], group_size=64, img_size=32, seed=0)
    per_chunk = plan.groups_per_chunk * 64 * 20 / 1020
    assert per_chunk >= layout.MIN_PER_DOMAIN
    assert plan.chunks_per_epoch == math.ceil(plan.num_groups / plan.groups_per_chunk)
