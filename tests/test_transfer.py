"""train --init-from: a new run from another model's networks, its domains remapped."""

from __future__ import annotations

import pytest
import torch

from stargan_ray.checkpoint import CheckpointError, save_checkpoint
from stargan_ray.engine import TrainState
from stargan_ray.errors import ConfigError
from stargan_ray.models import EMA, TRAINED, build_networks, ema_copy
from stargan_ray.transfer import check_init, init_from

from .helpers import load_train_state, tiny_config

D_OUT = "main.{}.".format  # the discriminator's output conv (its rows are the domains)


def write_official_nets_ema(path, cfg, seed=0):
    """An official-format {step}_nets_ema.ckpt: G, F, E state dicts keyed by network name, keys
    prefixed "module." (nn.DataParallel), every tensor random so copies are recognisable."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ema = ema_copy(build_networks(cfg.model))
        for _, module in ema.items():
            for p in module.parameters():
                p.data.normal_()
    torch.save({name: {f"module.{k}": v for k, v in getattr(ema, name).state_dict().items()}
                for name in EMA}, path)
    return ema


def _heads(module, d):
    return {k.split(".", 2)[2]: v for k, v in module.state_dict().items()
            if k.startswith(f"unshared.{d}.")}


def _assert_shared_equal(module, source):
    for key, value in module.state_dict().items():
        if not key.startswith("unshared."):
            assert torch.equal(value, source.state_dict()[key]), key


def test_official_nets_ema_onto_more_domains_keeps_every_weight_and_adds_mean_heads(tmp_path):
    path = tmp_path / "100000_nets_ema.ckpt"
    official = write_official_nets_ema(path, tiny_config(**{"model.num_domains": 2}))
    cfg = tiny_config(**{"model.num_domains": 3})
    state = TrainState.create(cfg, "cpu")
    fresh_d = {k: v.clone() for k, v in state.nets.discriminator.state_dict().items()}
    state.domains = ("cat", "dog", "fox")
    line = init_from(state, path, ["0=dog", "1=cat"])
    assert "\n" not in line and "0->dog" in line and "1->cat" in line and "fox" in line
    assert "discriminator: fresh" in line
    for nets in (state.nets, state.nets_ema):
        assert all(torch.equal(a, b) for a, b in zip(nets.generator.state_dict().values(),
                                                     official.generator.state_dict().values()))
        for name in ("mapping_network", "style_encoder"):
            mine, theirs = getattr(nets, name), getattr(official, name)
            _assert_shared_equal(mine, theirs)
            for new, old in ((1, 0), (0, 1)):  # dog <- 0, cat <- 1
                for key, value in _heads(mine, new).items():
                    assert torch.equal(value, _heads(theirs, old)[key]), (name, new, key)
            for key, value in _heads(mine, 2).items():  # fox: the mean of the copied heads
                mean = (_heads(theirs, 0)[key] + _heads(theirs, 1)[key]) / 2
                assert torch.allclose(value, mean, rtol=0, atol=1e-6), (name, key)
    assert all(torch.equal(v, fresh_d[k]) for k, v in state.nets.discriminator.state_dict().items())
    assert state.step == 0 and all(not opt.state for opt in state.optims.values())


def test_a_named_checkpoint_maps_by_name_and_remaps_the_discriminator_rows(tmp_path):
    src_cfg = tiny_config(**{"model.num_domains": 3})
    src = TrainState.create(src_cfg, "cpu", seed=1)
    src.domains = ("a", "b", "c")
    path = save_checkpoint(src, tmp_path / "checkpoint.pt")
    state = TrainState.create(tiny_config(), "cpu", seed=2)  # 2 domains
    state.domains = ("c", "z")
    line = init_from(state, path)
    assert "c->c" in line and "new (mean of the copied heads): z" in line
    assert "not used: a, b" in line
    d, src_d = state.nets.discriminator.state_dict(), src.nets.discriminator.state_dict()
    last = max(int(k.split(".")[1]) for k in d if k.startswith("main."))
    for key, value in d.items():
        if key.startswith(D_OUT(last)):  # rows: c <- c; z <- the mean of the copied (c) = c
            assert torch.equal(value[0], src_d[key][2]) and torch.equal(value[1], src_d[key][2])
        else:
            assert torch.equal(value, src_d[key]), key
    for name in EMA:  # nets from the file's nets, nets_ema from its nets_ema
        _assert_shared_equal(getattr(state.nets, name), getattr(src.nets, name))
        _assert_shared_equal(getattr(state.nets_ema, name), getattr(src.nets_ema, name))
    for key, value in _heads(state.nets_ema.style_encoder, 0).items():
        assert torch.equal(value, _heads(src.nets_ema.style_encoder, 2)[key])


def test_another_img_size_is_one_line_naming_the_shape(tmp_path):
    path = tmp_path / "100000_nets_ema.ckpt"
    write_official_nets_ema(path, tiny_config(**{"model.img_size": 64}))
    with pytest.raises(CheckpointError) as err:
        check_init(path, tiny_config(), ("a", "b"))
    message = str(err.value)
    assert "\n" not in message and "model.img_size" in message
    assert "generator" in message and ("shape" in message or "missing keys" in message)


def test_unnamed_domains_of_another_count_need_a_map(tmp_path):
    path = tmp_path / "100000_nets_ema.ckpt"
    write_official_nets_ema(path, tiny_config(**{"model.num_domains": 3}))
    with pytest.raises(ConfigError, match="--map"):
        check_init(path, tiny_config(), ("a", "b"))
    with pytest.raises(ConfigError, match="not a run domain"):
        check_init(path, tiny_config(), ("a", "b"), ["0=q"])
    line = check_init(path, tiny_config(), ("a", "b"), ["2=a", "0=b"])
    assert "2->a, 0->b" in line and "not used: 1" in line


def test_train_cli_checks_the_file_before_any_worker_starts(tmp_path, capsys):
    from stargan_ray.cli import main

    path = tmp_path / "100000_nets_ema.ckpt"
    write_official_nets_ema(path, tiny_config(**{"model.img_size": 64, "model.num_domains": 3}))
    argv = ["train", "--experiment", "toy", "--set", "model.img_size=32", "--storage",
            str(tmp_path / "runs"), "--init-from", str(path), "--dry-run"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stargan-ray: error:") and "\n" not in err and "model.img_size" in err


@pytest.mark.ray
def test_a_two_step_run_trains_from_an_official_file_with_a_new_domain(ray_session, tmp_path):
    import json

    from stargan_ray.data import synthetic
    from stargan_ray.train import RunOptions, latest_checkpoint, run_training

    path = tmp_path / "100000_nets_ema.ckpt"
    official = write_official_nets_ema(path, tiny_config(**{"model.num_domains": 2}))
    names = synthetic.domain_names(3)
    cfg = tiny_config(**{"model.num_domains": 3, "data.train_dir": "synthetic",
                         "data.val_dir": "synthetic", "train.total_iters": 2,
                         "train.save_every": 2, "train.print_every": 1,
                         "train.sample_every": 100, "train.eval_every": 100})
    opts = RunOptions(num_workers=1, storage=str(tmp_path / "runs"), name="ft", wandb="disabled",
                      init_from=str(path), init_map=(f"0={names[2]}", f"1={names[0]}"))
    run_training(cfg, opts, note=None)
    step, folder = latest_checkpoint(str(tmp_path / "runs" / "ft"))
    state = load_train_state(folder)
    assert step == state.step == 2
    # two Adam steps move a weight by a few learning rates: it started from the file's value
    # (the file's weights are N(0, 1), a fresh initialisation is far from them)
    bound, moved = 10 * 2 * cfg.optim.lr, 0.0
    for nets in (state.nets, state.nets_ema):
        for key, value in nets.generator.state_dict().items():
            diff = (value - official.generator.state_dict()[key]).abs().max().item()
            assert diff < bound, key
            moved = max(moved, diff)
        new_head = _heads(nets.mapping_network, 1)  # names[1]: not mapped, the mean
        for key, value in new_head.items():
            mean = (_heads(official.mapping_network, 0)[key]
                    + _heads(official.mapping_network, 1)[key]) / 2
            assert (value - mean).abs().max().item() < bound, key
        for key, value in _heads(nets.style_encoder, 2).items():  # names[2] <- file domain 0
            assert (value - _heads(official.style_encoder, 0)[key]).abs().max().item() < bound
    assert moved > 0  # and it trained
    events = [json.loads(line) for line in
              (tmp_path / "runs" / "ft" / "events.jsonl").read_text().splitlines()]
    summary = next(e["summary"] for e in events if e["event"] == "init_from")
    assert f"0->{names[2]}" in summary and f"new (mean of the copied heads): {names[1]}" in summary
