import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from stargan_ray.checkpoint import (CheckpointError, import_official, load_ema_networks,
                                    load_official_networks, read_config, read_domains, safe_load,
                                    save_checkpoint)
from stargan_ray.config import load_experiment
from stargan_ray.engine import TrainState, train_step
from stargan_ray.models import TRAINED, build_networks, ema_copy

from .helpers import (assert_identical_networks, load_train_state, official_files, random_batch,
                      tiny_config)




def _run(state, steps):
    for _ in range(steps):
        train_step(state, random_batch(state.cfg, seed=state.step))  # z drawn from the step


def test_save_load_continue_equals_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(**{"loss.ds_iter": 5})
    uninterrupted = TrainState.create(cfg, "cpu")
    _run(uninterrupted, 4)

    first = TrainState.create(cfg, "cpu")
    _run(first, 2)
    path = save_checkpoint(first, tmp_path / "ckpt" / "checkpoint.pt")
    torch.manual_seed(1234)  # a resumed process starts with other RNG states
    resumed = load_train_state(path, "cpu")
    assert resumed.step == 2 and resumed.cfg == cfg
    # optimiser moments came back too
    for name in TRAINED:
        sa, sb = first.optims[name].state_dict(), resumed.optims[name].state_dict()
        for k in sa["state"]:
            assert torch.equal(sa["state"][k]["exp_avg_sq"], sb["state"][k]["exp_avg_sq"])
    _run(resumed, 2)
    assert_identical_networks(uninterrupted, resumed)
    assert read_config(tmp_path / "ckpt") == cfg  # a folder holding checkpoint.pt works too


def test_checkpoints_record_the_domain_names_and_older_ones_give_none(tmp_path):
    state = TrainState.create(tiny_config(), "cpu")
    assert read_domains(save_checkpoint(state, tmp_path / "unnamed.pt")) is None
    state.domains = ("female", "male")
    path = save_checkpoint(state, tmp_path / "named.pt")
    assert read_domains(path) == ("female", "male")
    assert load_train_state(path).domains == ("female", "male")
    older = torch.load(path, weights_only=True)
    del older["domains"]  # files written before the names were kept
    torch.save(older, tmp_path / "older.pt")
    assert read_domains(tmp_path / "older.pt") is None
    assert load_train_state(tmp_path / "older.pt").domains == ()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"generator": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="refused to load"):
        safe_load(path)
    with pytest.raises(CheckpointError, match="no such file"):
        safe_load(tmp_path / "missing.pt")


def test_a_run_killed_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "old", "w": torch.ones(3)}, path)
    # The child writes half a file, says so, then stalls like a slow disk until it is killed.
    script = textwrap.dedent(f"""
        import time, torch
        from stargan_ray import checkpoint

        def slow_save(obj, f):
            f.write(b"x" * 1_000_000)
            f.flush()
            print("half written", flush=True)
            time.sleep(60)

        checkpoint.torch.save = slow_save
        checkpoint.atomic_save({{"w": torch.zeros(10)}}, {str(path)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "checkpoint.pt"]
    assert leftovers and leftovers[0].stat().st_size == 1_000_000  # the kill hit mid-write
    data = torch.load(path, weights_only=True)
    assert data["format"] == "old" and torch.equal(data["w"], torch.ones(3))


def test_official_checkpoints_load_strictly_with_the_known_fixes(tmp_path):
    cfg = load_experiment("celeba_hq", ["model.img_size=64", "model.dim_in=4",
                                        "model.max_conv_dim=8", "model.style_dim=8",
                                        "model.hidden_dim=16"])
    _, ema = official_files(tmp_path, cfg)
    target = ema_copy(build_networks(cfg.model))
    loaded = load_official_networks(tmp_path / "000020_nets_ema.ckpt", target)
    assert loaded == ["generator", "mapping_network", "style_encoder"]
    assert torch.equal(target.generator.from_rgb.weight, ema.generator.from_rgb.weight)
    assert torch.equal(target.generator.hpf.filter, ema.generator.hpf.filter)


def test_official_import_writes_a_checkpoint_our_tools_read(tmp_path):
    cfg = tiny_config()
    _, ema = official_files(tmp_path, cfg, prefix=False, drop_filter=False)
    out = import_official(cfg, tmp_path / "000020_nets_ema.ckpt", tmp_path / "imported.pt",
                          nets_path=tmp_path / "000020_nets.ckpt")
    state = load_train_state(out)
    assert state.step == 20
    assert torch.equal(state.nets_ema.generator.from_rgb.weight, ema.generator.from_rgb.weight)
    cfg2, nets = load_ema_networks(out)
    assert cfg2 == cfg and torch.equal(nets.generator.from_rgb.weight, ema.generator.from_rgb.weight)


def test_mismatched_shapes_name_expected_and_found(tmp_path):
    official_files(tmp_path, tiny_config(**{"model.num_domains": 3}))
    target = ema_copy(build_networks(tiny_config().model))
    with pytest.raises(CheckpointError) as err:
        load_official_networks(tmp_path / "000020_nets_ema.ckpt", target)
    message = str(err.value)
    assert "model.num_domains" in message and "\n" not in message
    assert "missing keys" in message or "shape" in message
