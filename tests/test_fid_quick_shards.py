"""fid_quick split over ranks equals the single-process value: shards as threads of this
process (world 2 and 3, a reduce that adds their tensors) and as two gloo processes
(train.quick_eval, as the training loop calls it)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

from stargan_ray.data.synthetic import generate
from stargan_ray.metrics import evaluator
from stargan_ray.metrics.fid import FeatureMoments, fid_from_moments
from stargan_ray.metrics.options import EvalOptions
from stargan_ray.metrics.sharding import Shard
from stargan_ray.metrics.weights import FeatureWeights

from .helpers import (free_port, intra_op_threads, relative_error, seeded_ema_networks,
                      tiny_eval_config)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two domains, 5 train (one of them unreadable) and 3 val images each; a seeded tiny model.
    Real items of 2 files and single-source fake items: many items, some short of rows."""
    root = tmp_path_factory.mktemp("shards")
    train, val = generate(root / "data", img_size=32, num_domains=2, n_train=5, n_val=3)
    (train / "circle" / "99999.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cfg = tiny_eval_config(train, val, **{"eval.batch_size": 2})
    return cfg, seeded_ema_networks(cfg)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Float32 CPU convolutions round differently with another intra-op thread count; every side
    of a comparison (threads, spawned processes, the reference) runs with one."""
    with intra_op_threads(1):
        yield


def run_shards(world: int, fn):
    """fn(rank, reduce) on `world` threads; reduce adds the threads' tensors in rank order."""
    slots: list[torch.Tensor | None] = [None] * world
    barrier = threading.Barrier(world)
    results: list = [None] * world
    errors: list[BaseException] = []

    def reduce_for(rank: int):
        def reduce(tensor: torch.Tensor) -> torch.Tensor:
            slots[rank] = tensor.clone()
            barrier.wait()
            total = slots[0].clone()
            for other in slots[1:]:
                total += other
            barrier.wait()  # nobody overwrites a slot before every rank has read them all
            return total
        return reduce

    def target(rank: int) -> None:
        try:
            results[rank] = fn(rank, reduce_for(rank))
        except BaseException as err:  # the others must not wait forever at the barrier
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _assert_same_moments(mine, theirs) -> None:
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert theirs[key].n == mine[key].n == len(theirs[key].rows)
        assert torch.equal(theirs[key].rows, mine[key].rows)  # placed, not added: bit for bit
        assert relative_error(theirs[key].sum, mine[key].sum) < 1e-12
        assert relative_error(theirs[key].outer, mine[key].outer) < 1e-12


def test_shard_needs_a_rank_in_its_world_and_a_reduce():
    assert Shard.of(None, None) is None and Shard.of((0, 1), None) is None
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        Shard.of((2, 2), lambda t: t)
    with pytest.raises(ValueError, match="needs a reduce"):
        Shard.of((0, 2), None)


def _quick(cfg) -> dict:
    weights = FeatureWeights.from_config(cfg.eval, need=("inception",))
    return dict(modes=("latent",), weights=weights, max_sources=cfg.eval.quick_sources,
                num_outs=cfg.eval.quick_outs, lpips=False)


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One process: fid_quick's moments, its value, and the cache it filled."""
    cfg, nets = setup
    cache = tmp_path_factory.mktemp("one")
    base, _, _ = evaluator.collect(nets, cfg, opts=EvalOptions(cache_dir=cache, progress=False),
                                   **_quick(cfg))
    assert base.real[0].n == base.real[1].n == 5  # circle's 6th file, unreadable, left out
    return base, evaluator.fid_quick(nets, cfg, cache_dir=cache), cache


def _cached(cache_dir) -> dict[int, FeatureMoments]:
    """The real moments in a cache folder, by domain (circle 0, square 1)."""
    files = {p.name.split("_")[0]: p for p in Path(cache_dir).iterdir()}
    return {d: FeatureMoments.load(files[name]) for d, name in enumerate(("circle", "square"))}


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_fid_quick_equals_one_process(setup, reference, tmp_path, world):
    cfg, nets = setup
    base = reference[0]
    quick = _quick(cfg)

    def shard_collect(rank, reduce):  # cold caches: the real statistics are sharded too
        opts = EvalOptions(cache_dir=tmp_path / f"rank{rank}", progress=False,
                           shard=Shard(rank, world, reduce))
        return evaluator.collect(nets, cfg, opts=opts, **quick)[0]

    for rank, collected in enumerate(run_shards(world, shard_collect)):
        assert collected.cache == {0: "computed", 1: "computed"}
        _assert_same_moments(base.real, collected.real)
        _assert_same_moments(base.fake, collected.fake)
        _assert_same_moments(base.real, _cached(tmp_path / f"rank{rank}"))  # each rank's cache
        for t, task in enumerate(evaluator.make_tasks(["circle", "square"])):  # fid_quick's FIDs
            mine = fid_from_moments(base.real[task.trg], base.fake[("latent", t)]).value
            theirs = fid_from_moments(collected.real[task.trg], collected.fake[("latent", t)])
            assert theirs.value == pytest.approx(mine, rel=1e-9, abs=1e-9)


def test_ranks_missing_the_cache_compute_it_with_the_others(setup, reference, tmp_path):
    cfg, nets = setup
    _, value, filled = reference
    shutil.copytree(filled, tmp_path / "warm")  # rank 0's cache has them, rank 1's is empty
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "warm").iterdir()}
    dirs = [tmp_path / "warm", tmp_path / "cold"]
    values = run_shards(2, lambda rank, reduce: evaluator.fid_quick(
        nets, cfg, cache_dir=dirs[rank], shard=(rank, 2), reduce=reduce))
    assert values[0] == values[1] == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert {p.name: p.stat().st_mtime_ns for p in dirs[0].iterdir()} == before  # not rewritten
    assert sorted(p.name for p in dirs[1].iterdir()) == sorted(before)  # filled on the cold rank


def test_sharded_full_evaluation_equals_one_process(setup, tmp_path):
    """FID, KID and LPIPS of both modes: LPIPS per source comes back from the rank that ran it."""
    cfg, nets = setup
    args = dict(step=3, mode="reference")
    base = evaluator.evaluate(nets, cfg, out_dir=tmp_path / "o", **args,
                              opts=EvalOptions(cache_dir=tmp_path / "one", progress=False))
    results = run_shards(2, lambda rank, reduce: evaluator.evaluate(
        nets, cfg, out_dir=tmp_path / f"out{rank}", **args, opts=EvalOptions(
            cache_dir=tmp_path / f"rank{rank}", progress=False, shard=Shard(rank, 2, reduce))))
    for sharded in results:
        assert list(sharded) == list(base)
        assert sharded == pytest.approx(base, rel=1e-9, abs=1e-12)
    assert sorted(p.name for p in (tmp_path / "out0").iterdir()) == sorted(
        p.name for p in (tmp_path / "o").iterdir())
    assert not (tmp_path / "out1").exists()  # rank 0 writes the files


def _gloo_rank(rank: int, world: int, port: int, cfg, nets, out: str) -> None:
    """One Train-like worker: a gloo group on loopback, quick_eval as training calls it."""
    import torch.distributed as dist

    from stargan_ray.train.quick_eval import quick_eval

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        values = quick_eval(nets, cfg, torch.device("cpu"), rank=rank, world=world)
        Path(out, f"rank{rank}.json").write_text(json.dumps(values))
    finally:
        dist.destroy_process_group()


def test_fid_quick_on_two_gloo_processes_equals_one_process(setup, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    cfg, nets = setup
    # The single-process value from a process like the ranks (one torch thread): float32 convs
    # round differently with other thread counts (1e-6 relative on this random-feature FID).
    values = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}"
        out.mkdir()
        monkeypatch.setenv("STARGAN_RAY_CACHE", str(out / "sr"))  # the ranks' (cold) cache
        mp.spawn(_gloo_rank, args=(world, free_port(), cfg, nets, str(out)), nprocs=world,
                 join=True)
        values[world] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
        assert len(list((out / "sr" / "fid_stats").iterdir())) == 2  # shared cache, written
    assert values[2][0] == values[2][1]
    assert values[2][0]["fid_quick"] == pytest.approx(values[1][0]["fid_quick"], rel=1e-9,
                                                      abs=1e-9)
