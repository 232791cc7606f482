"""The evaluation protocol: task order, JSON layout, real-statistics cache, shard independence,
nothing kept in a training worker between its quick evaluations."""

from __future__ import annotations

import gc
import json
import os
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from stargan_ray.config import ConfigError
from stargan_ray.data.synthetic import generate
from stargan_ray.metrics import eval_ray, evaluator, kid
from stargan_ray.metrics.options import EvalOptions
from stargan_ray.metrics.weights import FeatureWeights
from stargan_ray.models import build_networks, ema_copy, he_init

from .helpers import relative_error, tiny_eval_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two domains, 4 train and 2 val images each at 32 px; a seeded tiny generator."""
    root = tmp_path_factory.mktemp("eval")
    train, val = generate(root / "data", img_size=32, num_domains=2, n_train=4, n_val=2)
    cfg = tiny_eval_config(train, val)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = build_networks(cfg.model)
        for _, module in nets.items():
            module.apply(he_init)
    return root, cfg, ema_copy(nets)


def test_tasks_follow_the_official_order():
    names = [t.name for t in evaluator.make_tasks(["cat", "dog", "wild"])]
    assert names == ["dog2cat", "wild2cat", "cat2dog", "wild2dog", "cat2wild", "dog2wild"]


def test_random_choices_depend_only_on_their_keys():
    a = torch.randn(4, generator=evaluator.seeded_generator(777, 0, 1, 0, 5, 3))
    b = torch.randn(4, generator=evaluator.seeded_generator(777, 0, 1, 0, 5, 3))
    c = torch.randn(4, generator=evaluator.seeded_generator(777, 0, 1, 0, 5, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert evaluator.source_indices(10, None) == list(range(10))
    assert evaluator.source_indices(10, 4) == [0, 3, 6, 9]


def test_evaluate_writes_official_layout_json(setup, tmp_path):
    _, cfg, nets = setup
    out = tmp_path / "out"
    results = evaluator.evaluate(nets, cfg, step=42, mode="reference", out_dir=out,
                                 opts=EvalOptions(cache_dir=tmp_path / "cache", progress=False))
    tasks = ["square2circle", "circle2square"]
    assert sorted(p.name for p in out.iterdir()) == ["FID_00042_reference.json",
                                                      "LPIPS_00042_reference.json"]
    fid_json = json.loads((out / "FID_00042_reference.json").read_text())
    lpips_json = json.loads((out / "LPIPS_00042_reference.json").read_text())
    fid_keys = [f"FID_reference/{t}" for t in tasks] + ["FID_reference/mean"]
    lpips_keys = [f"LPIPS_reference/{t}" for t in tasks] + ["LPIPS_reference/mean"]
    assert list(fid_json)[:3] == fid_keys and list(lpips_json)[:3] == lpips_keys
    kid_keys = [f"KID_reference/{t}" for t in tasks]
    kid_std_keys = [f"KID_std_reference/{t}" for t in tasks]
    assert list(results) == (fid_keys + [k for pair in zip(kid_keys, kid_std_keys) for k in pair]
                             + ["KID_reference/mean"] + lpips_keys)
    for payload, keys in ((fid_json, fid_keys), (lpips_json, lpips_keys)):
        values = [payload[k] for k in keys]
        assert all(np.isfinite(values)) and values[0] != values[1]
        assert values[2] == pytest.approx((values[0] + values[1]) / 2)
        assert [results[k] for k in keys] == values
        assert payload["feature_weights"] == "random" and payload["step"] == 42
        assert payload["elapsed_seconds"] > 0
    assert all(0 < lpips_json[k] < 1 for k in lpips_keys)
    assert fid_json["real_stats"] == {"circle": "computed", "square": "computed"}
    assert any("fewer than the 2048" in w for w in fid_json["warnings"])
    assert any("32 px" in w for w in lpips_json["warnings"])  # reported, with the reason
    # KID beside each FID, in the results and the FID file, from the same Inception features
    weights = FeatureWeights.from_config(cfg.eval)
    collected, _, _ = evaluator.collect(nets, cfg, modes=("reference",), weights=weights,
                                        opts=EvalOptions(cache_dir=tmp_path / "cache",
                                                         progress=False))
    assert collected.cache == {0: "hit", 1: "hit"}  # real rows come back from the cache
    for t, task in enumerate(evaluator.make_tasks(["circle", "square"])):
        real, fake = collected.real[task.trg], collected.fake[("reference", t)]
        assert len(real.rows) == real.n == 4 and len(fake.rows) == fake.n == 4
        direct = kid.kid(real.rows.numpy(), fake.rows.numpy(), subsets=cfg.eval.kid_subsets,
                         subset_size=cfg.eval.kid_subset_size, seed=cfg.train.seed)
        assert fid_json[kid_keys[t]] == results[kid_keys[t]] == pytest.approx(direct.mean)
        assert fid_json[kid_std_keys[t]] == pytest.approx(direct.std)
    assert results["KID_reference/mean"] == pytest.approx(np.mean([results[k] for k in kid_keys]))


def test_real_statistics_are_cached_and_invalidated_when_a_file_changes(setup, tmp_path):
    root, cfg, nets = setup
    weights = FeatureWeights.from_config(cfg.eval)
    cache = tmp_path / "cache"

    def real_only():
        collected, _, _ = evaluator.collect(nets, cfg, modes=(), weights=weights,
                                            opts=EvalOptions(cache_dir=cache, progress=False))
        return collected

    first = real_only()
    assert first.cache == {0: "computed", 1: "computed"} and len(list(cache.iterdir())) == 2
    second = real_only()
    assert second.cache == {0: "hit", 1: "hit"}
    for d in (0, 1):
        torch.testing.assert_close(second.real[d].outer, first.real[d].outer, rtol=0, atol=0)
        torch.testing.assert_close(second.real[d].rows, first.real[d].rows, rtol=0, atol=0)
    changed = root / "data" / "train" / "square" / "00000.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(changed)
    os.utime(changed, ns=(10**9, 10**9))
    third = real_only()
    assert third.cache == {0: "hit", 1: "computed"}
    assert not torch.allclose(third.real[1].sum, first.real[1].sum)
    # the quick variant: fewer sources and outputs, no LPIPS, real statistics from the cache
    quick, _, _ = evaluator.collect(nets, cfg, modes=("latent",), weights=weights,
                                    max_sources=1, num_outs=1, lpips=False,
                                    opts=EvalOptions(cache_dir=cache, progress=False))
    assert quick.cache == {0: "hit", 1: "hit"} and quick.lpips == {}
    assert [quick.fake[("latent", t)].n for t in (0, 1)] == [1, 1]


@pytest.mark.ray
def test_results_do_not_depend_on_the_number_of_shards(setup, tmp_path, ray_session):
    _, cfg, nets = setup
    weights = FeatureWeights.from_config(cfg.eval)
    runs = []
    threads = torch.get_num_threads()
    for workers in (0, 2, 3):  # 0: one shard in this process; 2 and 3: Ray actors
        # Float32 CPU convolutions round differently with another thread count (~1e-6 here);
        # the one-CPU actors use one thread, so the in-process shard does too.
        torch.set_num_threads(1 if workers == 0 else threads)
        try:
            collected, _, _ = evaluator.collect(
                nets, cfg, modes=evaluator.MODES, weights=weights,
                opts=EvalOptions(workers, cache_dir=tmp_path / str(workers), progress=False,
                                 cpus_per_worker=0.5))
        finally:
            torch.set_num_threads(threads)
        runs.append(collected)
    base = runs[0]
    assert len(base.fake) == 4 and all(m.n == 4 for m in base.fake.values())
    for other in runs[1:]:
        assert other.cache == {0: "computed", 1: "computed"}  # real statistics sharded too
        for group in ("real", "fake"):
            mine, theirs = getattr(base, group), getattr(other, group)
            assert mine.keys() == theirs.keys()
            for key in mine:
                assert mine[key].n == theirs[key].n
                assert relative_error(theirs[key].sum, mine[key].sum) < 1e-6
                assert relative_error(theirs[key].outer, mine[key].outer) < 1e-6
        assert base.lpips.keys() == other.lpips.keys()
        for key in base.lpips:
            assert base.lpips[key].keys() == other.lpips[key].keys()
            for source, value in base.lpips[key].items():
                assert other.lpips[key][source] == pytest.approx(value, rel=1e-6)


def test_eval_num_workers_auto_is_the_default_and_runs_in_process_without_gpus(capsys):
    from stargan_ray.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "--checkpoint", "x"])
    assert args.num_workers == "auto"
    assert parser.parse_args(["eval", "--checkpoint", "x", "--num-workers", "3"]).num_workers == 3
    with pytest.raises(SystemExit) as stopped:
        parser.parse_args(["eval", "--checkpoint", "x", "--num-workers", "-1"])
    assert stopped.value.code == 2 and "auto or an integer" in capsys.readouterr().err
    # one worker per GPU when there are several; one GPU or none: this process
    assert [eval_ray.auto_workers(g) for g in (0, 1, 2, 8)] == [0, 0, 2, 8]
    if not torch.cuda.is_available() and not os.environ.get("RAY_ADDRESS"):
        assert eval_ray.auto_workers(eval_ray.cluster_gpus()) == 0


def test_an_evaluation_batch_larger_than_free_memory_is_refused_before_it_runs(setup, tmp_path):
    from dataclasses import replace

    from stargan_ray.metrics import memory

    _, cfg, nets = setup
    have = memory.available_bytes("cpu")
    assert memory.generator_bytes(cfg, 2) + memory.inception_bytes(cfg.eval.batch_size) < have
    huge = replace(cfg, eval=replace(cfg.eval, batch_size=2 * have // memory.inception_bytes(1)))
    with pytest.raises(ConfigError, match=r"evaluation at model.img_size 32 with eval.batch_size "
                                          r"\d+ and data.val_batch_size \d+ needs about .* "
                                          r"available on cpu; lower eval.batch_size"):
        evaluator.evaluate(nets, huge, step=1, out_dir=tmp_path / "o",
                           opts=EvalOptions(cache_dir=tmp_path / "cache", progress=False))
    assert not (tmp_path / "o").exists() and not (tmp_path / "cache").exists()


def test_quick_eval_keeps_no_feature_network_and_gives_the_cached_value(setup, tmp_path,
                                                                        monkeypatch):
    """What the training loop calls between its steps: no Inception network is referenced once
    it returns (the process's cache held one, with its buffers, until the next evaluation), and
    the value is that of fid_quick with the cached networks."""
    from stargan_ray.metrics.fid import InceptionFeatures, cached_inception
    from stargan_ray.train.quick_eval import quick_eval

    _, cfg, nets = setup
    monkeypatch.setenv("STARGAN_RAY_CACHE", str(tmp_path))  # real statistics: tmp/fid_stats
    cached_inception.cache_clear()
    gc.collect()
    def inception_nets():  # type(): isinstance would touch every object's attributes
        return [o for o in gc.get_objects() if issubclass(type(o), InceptionFeatures)]

    before = weakref.WeakSet(inception_nets())
    value = quick_eval(nets, cfg, "cpu")["fid_quick"]
    gc.collect()
    alive = [o for o in inception_nets() if o not in before]
    assert alive == [] and cached_inception.cache_info().currsize == 0
    assert value == evaluator.fid_quick(nets, cfg, cache_dir=tmp_path / "fid_stats")
    assert cached_inception.cache_info().currsize == 1  # the CLI's path still reuses its network
