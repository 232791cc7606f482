"""Video in and out: frames and rates kept, bad clips named, the official interpolation videos."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray import grids, sample, video
from stargan_ray.data.synthetic import generate
from stargan_ray.errors import UserError
from stargan_ray.inference import Translator, image_to_tensor, to_pixels
from stargan_ray.video_translate import translate_video

from .helpers import seeded_ema_networks, tiny_config

S = 32  # tiny_config image size


def _clip(n: int, h: int = 40, w: int = 56) -> list[np.ndarray]:
    """Smooth frames that change over time (H.264 keeps them within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + t * 9) % 256, (yy * 5) % 256, np.full_like(xx, 40 + t * 6)],
                     axis=-1).astype(np.uint8) for t in range(n)]


def test_a_written_clip_reads_back_with_every_frame_at_its_rate(tmp_path):
    frames = _clip(17)
    path = video.write_video(tmp_path / "a.mp4", frames, fps=24.0)
    info, decoded = video.open_video(path)
    decoded = list(decoded)
    assert info.fps == pytest.approx(24.0) and info.size == (56, 40)
    assert len(decoded) == 17 == video.count_frames(path)[0]
    error = np.mean([np.abs(a.astype(int) - b.astype(int)).mean()
                     for a, b in zip(frames, decoded)])
    assert error < 4  # lossy H.264, but the same pictures in the same order


@pytest.mark.parametrize("make", ["truncated", "text", "empty"])
def test_a_bad_clip_is_named_in_one_line(tmp_path, make):
    good = video.write_video(tmp_path / "good.mp4", _clip(12), fps=10.0).read_bytes()
    bad = tmp_path / f"{make}.mp4"
    bad.write_bytes({"truncated": good[:len(good) // 2], "text": b"not a video at all",
                     "empty": b""}[make])
    with pytest.raises(video.BadVideo) as err:
        _, frames = video.open_video(bad)
        list(frames)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_the_writer_refuses_a_container_without_h264(tmp_path):
    with pytest.raises(ValueError, match="H.264"):
        video.write_video(tmp_path / "a.webm", _clip(2), fps=5.0)
    assert not (tmp_path / "a.webm").exists()


def test_a_missing_video_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'stargan-ray\[video\]'"):
        video.ffmpeg_module()


def test_an_animated_gif_is_a_video_and_a_still_one_an_image(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(f) for f in _clip(3)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=50)
    frames[0].save(tmp_path / "still.gif")
    assert video.is_video(tmp_path / "moving.gif") and not video.is_video(tmp_path / "still.gif")
    assert video.is_video(tmp_path / "x.MOV") and not video.is_video(tmp_path / "x.png")


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(**{"model.num_domains": 3, "eval.num_outs_per_domain": 2})
    return cfg, seeded_ema_networks(cfg)


def test_a_translated_clip_has_every_frame_in_each_style(model, tmp_path):
    cfg, nets = model
    frames = _clip(11)
    clip = video.write_video(tmp_path / "in.mp4", frames, fps=15.0)
    translator = Translator(nets, cfg, torch.device("cpu"), batch_size=4)  # 3 batches: 4, 4, 3
    styles = translator.latent_styles(1, [0, 7])
    outs = [tmp_path / "out" / "a.mp4", tmp_path / "out" / "b.mp4"]
    assert translate_video(translator, clip, styles, outs) == 11
    _, decoded_in = video.open_video(clip)
    x = torch.stack([image_to_tensor(Image.fromarray(f), S) for f in decoded_in])
    got = []
    for k, out in enumerate(outs):
        info, frames = video.open_video(out)
        got.append(np.stack(list(frames)).astype(int))
        assert info.fps == pytest.approx(15.0) and got[k].shape == (11, S, S, 3)
        # The same frames encoded by the same writer: H.264 loses the same detail on both
        expected = to_pixels(translator.generate(x, styles[k:k + 1].expand(11, -1)))
        reference = video.write_video(tmp_path / f"expected{k}.mp4", list(expected), fps=15.0)
        _, frames = video.open_video(reference)
        assert np.abs(got[k] - np.stack(list(frames))).mean() < 0.5
    assert np.abs(got[0] - got[1]).mean() > 5  # and each output has its own style


def test_a_clip_that_breaks_off_leaves_no_output(model, tmp_path):
    cfg, nets = model
    good = video.write_video(tmp_path / "in.mp4", _clip(30), fps=10.0).read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good[:len(good) * 2 // 3])
    out = tmp_path / "out.mp4"
    translator = Translator(nets, cfg, torch.device("cpu"), batch_size=4)
    with pytest.raises(video.BadVideo):
        translate_video(translator, broken, translator.latent_styles(0, [0]), [out])
    assert not out.exists()


def test_video_ref_frames_slide_the_references_beside_the_outputs(model):
    cfg, nets = model
    x_src = torch.rand(2, 3, S, S) * 2 - 1
    x_ref = torch.rand(3, 3, S, S) * 2 - 1
    y_ref = torch.tensor([0, 0, 1])  # one same-domain pair: one transition
    frames = list(sample.video_ref_frames(nets, x_src, x_ref, y_ref))
    assert len(frames) == len(grids.ease())
    width = S + sample.SLIDE_MARGIN
    assert frames[0].shape == (3, 2 * S, width + 2 * S)
    assert torch.equal(frames[0][:, S:, :S], x_ref[0])  # alpha 0: the first reference shows
    assert torch.equal(frames[-1][:, :S, :S], x_ref[0])  # alpha 1: it has slid up
    assert torch.equal(frames[-1][:, S:, :S], x_ref[1])
    s_ref = nets.style_encoder(x_ref, y_ref)
    expected = grids.interpolation_frames(nets, x_src, [s_ref[0:1], s_ref[1:2]], grids.ease())
    assert all(torch.equal(f[:, :, width:], e) for f, e in zip(frames, expected))


def test_sample_writes_the_official_mp4_videos(model, tmp_path):
    cfg, nets = model
    _, val = generate(tmp_path / "data", img_size=S, num_domains=3, n_train=1, n_val=2)
    paths = sample.sample(nets, cfg, val, val, tmp_path / "out", opts=sample.SampleOptions(
        num_src=4, num_ref=6, interp_styles=2, animation="mp4"))
    assert [p.name for p in paths][-2:] == ["video_ref.mp4", "video_latent.mp4"]
    assert [p.name for p in paths] == sample.output_names("mp4")
    steps = len(grids.ease())
    info, frames = video.open_video(paths[-2])
    # 6 references, 2 per domain, grouped by domain: 3 same-domain transitions
    assert sum(1 for _ in frames) == 3 * steps + sample.HOLD_FRAMES
    assert info.size == (S + sample.SLIDE_MARGIN + 4 * S, 2 * S)
    assert info.fps == pytest.approx(video.OFFICIAL_FPS)
    info, frames = video.open_video(paths[-1])
    assert sum(1 for _ in frames) == 3 * 1 * steps + sample.HOLD_FRAMES  # domains x transitions
    assert info.size == (4 * S, 2 * S)


def test_smoothed_landmarks_jitter_less_and_follow_a_move():
    from stargan_ray.video_translate import smooth_landmarks

    rng = np.random.default_rng(0)
    base = rng.uniform(50, 200, (98, 2))
    raw = [base + rng.normal(0, 2, base.shape) for _ in range(40)]  # a still face, a noisy detector
    running, smoothed = None, []
    for points in raw:
        running = smooth_landmarks(running, points)
        smoothed.append(running)
    def jitter(seq):
        return np.mean([np.abs(b - a).mean() for a, b in zip(seq[:-1], seq[1:])])

    assert jitter(smoothed) < 0.6 * jitter(raw)
    moved = base + 30  # the face moves and stays: the running landmarks get there
    for _ in range(30):
        running = smooth_landmarks(running, moved)
    assert np.abs(running - moved).max() < 0.01


def test_an_aligned_clip_keeps_every_frame(model, tmp_path):
    from stargan_ray.align import FaceAligner
    from stargan_ray.models.fan import FAN
    from stargan_ray.video_translate import SmoothedAligner

    cfg, nets = model
    torch.manual_seed(0)
    fan = FAN().eval()
    rng = np.random.default_rng(1)
    mean = rng.uniform(60, 200, (98, 2))
    clip = video.write_video(tmp_path / "in.mp4", _clip(6, 64, 64), fps=8.0)
    translator = Translator(nets, cfg, torch.device("cpu"), batch_size=4)
    prepare = SmoothedAligner(FaceAligner(fan, mean, 64), S)
    out = tmp_path / "aligned.mp4"
    n = translate_video(translator, clip, translator.latent_styles(0, [3]), [out], prepare=prepare)
    assert n == 6 and video.count_frames(out)[0] == 6 and prepare.points is not None


@pytest.mark.ray
def test_clips_spread_over_two_ray_workers_equal_one_process(model, tmp_path, ray_session):
    from stargan_ray.translate_ray import VideoJob, VideoWorker, translate_videos, translator_payload

    cfg, nets = model
    translator = Translator(nets, cfg, torch.device("cpu"), batch_size=4)
    styles = translator.latent_styles(2, [5, 6])
    clips = [video.write_video(tmp_path / f"in{i}.mp4", _clip(5 + 2 * i), fps=12.0)
             for i in range(3)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    jobs = [VideoJob(str(p), styles, (str(tmp_path / "ray" / f"{p.stem}_a.mp4"),
                                      str(tmp_path / "ray" / f"{p.stem}_b.mp4")))
            for p in [*clips, broken]]
    results = translate_videos(translator, jobs, num_workers=2, cpus_per_worker=1)
    assert results[:3] == [5, 7, 9] and "broken.mp4" in results[3]
    # one process, the same worker code (one torch thread, as each actor has)
    local = VideoWorker(translator_payload(translator), None, "cpu", threads=1)
    for job in jobs[:3]:
        mine = VideoJob(job.path, job.styles, tuple(o.replace("/ray/", "/local/") for o in job.outputs))
        local.run(mine)
        for theirs, ours in zip(job.outputs, mine.outputs):
            a, b = list(video.open_video(theirs)[1]), list(video.open_video(ours)[1])
            assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_translate_turns_clips_into_clips_and_skips_a_bad_one(tmp_path, capsys):
    from stargan_ray.cli import main

    from .helpers import save_synthetic_checkpoint

    checkpoint = save_synthetic_checkpoint(tmp_path / "model.pt")
    inputs = tmp_path / "in"
    video.write_video(inputs / "walk.mp4", _clip(9), fps=25.0)
    video.write_video(inputs / "sub" / "wave.mov", _clip(4, 48, 48), fps=10.0)
    (inputs / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 not really matroska")
    Image.fromarray(_clip(1)[0]).save(inputs / "still.png")
    code = main(["translate", "--checkpoint", str(checkpoint), "--device", "cpu", str(inputs),
                 "--to", "square", "--seeds", "1,2", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1 and "broken.mkv" in err and "wrote 4 video(s)" in out
    assert (tmp_path / "out" / "still_square_seed1.png").is_file()
    for name, frames, fps in (("walk", 9, 25.0), ("sub/wave", 4, 10.0)):
        for seed in (1, 2):
            info, decoded = video.open_video(tmp_path / "out" / f"{name}_square_seed{seed}.mp4")
            assert sum(1 for _ in decoded) == frames and info.fps == pytest.approx(fps)
            assert info.size == (S, S)
    assert not list((tmp_path / "out").glob("broken*"))
    # a second run keeps the clips unless --overwrite
    code = main(["translate", "--checkpoint", str(checkpoint), "--device", "cpu",
                 str(inputs / "walk.mp4"), "--to", "square", "--seeds", "1",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "walk_square_seed1.mp4" in capsys.readouterr().err


@pytest.mark.ray
def test_translate_spreads_clips_over_ray_workers(tmp_path, capsys, ray_session):
    from stargan_ray.cli import main

    from .helpers import save_synthetic_checkpoint

    checkpoint = save_synthetic_checkpoint(tmp_path / "model.pt")
    for i in range(2):
        video.write_video(tmp_path / "in" / f"clip{i}.{('mp4', 'mkv')[i]}", _clip(3 + i), fps=6.0)
    code = main(["translate", "--checkpoint", str(checkpoint), "--device", "cpu",
                 str(tmp_path / "in"), "--to", "0", "--seeds", "4", "--num-workers", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0 and "wrote 2 video(s)" in capsys.readouterr().out
    assert [video.count_frames(tmp_path / "out" / f"clip{i}_circle_seed4.mp4")[0]
            for i in range(2)] == [3, 4]


def test_frames_and_photos_are_fitted_the_same_way(tmp_path):
    from stargan_ray.inference import load_image_tensor
    from stargan_ray.video_translate import frame_source

    frame = _clip(1, 40, 64)[0]  # wider than tall
    Image.fromarray(frame).save(tmp_path / "frame.png")
    for fit in ("stretch", "crop", "pad"):
        assert torch.equal(frame_source(S, fit)(frame), load_image_tensor(tmp_path / "frame.png",
                                                                          S, fit))
    assert not torch.equal(frame_source(S, "crop")(frame), frame_source(S, "stretch")(frame))


def test_translate_fit_crop_translates_the_centred_square(tmp_path):
    from stargan_ray.cli import main

    from .helpers import save_synthetic_checkpoint

    checkpoint = save_synthetic_checkpoint(tmp_path / "model.pt")
    wide = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(wide[:, 16:48]).save(tmp_path / "centre.png")  # the centred 32 x 32
    for name, fit in (("wide", "crop"), ("centre", "stretch")):
        assert main(["translate", "--checkpoint", str(checkpoint), "--device", "cpu",
                     str(tmp_path / f"{name}.png"), "--to", "0", "--fit", fit,
                     "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "wide_circle_seed0.png") as a, \
            Image.open(tmp_path / "out" / "centre_circle_seed0.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
