"""The Ray Data pipeline on the session's local Ray instance: what workers read, through Ray."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from stargan_ray.data import prepare as prep
from stargan_ray.data.pipeline import prepare_train_data, worker_raw_batches
from stargan_ray.data.stream import local_raw_batches
from stargan_ray.data.table import open_train_table

from .helpers import colour_domain, tiny_data_config, write_colour_tree

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 10:1 imbalanced colour tree (domain 1 blue, rare) and its shards."""
    root = tmp_path_factory.mktemp("raydata")
    write_colour_tree(root / "train", (300, 30))
    prep.prepare(str(root / "train"), str(root / "shards"), workers=1)
    return root


_cfg = partial(tiny_data_config, **{"data.batch_size": 8, "train.total_iters": 60})


def _take(it, n):
    rows = [next(it) for _ in range(n)]
    it.close()
    return rows


@pytest.mark.parametrize("source", ["train", "shards"])
def test_ray_workers_read_the_in_process_rows_from_any_start(ray_session, data, source):
    cfg = _cfg(data / source, data / "train")
    table, _ = open_train_table(cfg)
    for start, world in ((0, 2), (45, 2), (45, 4)):
        for rank in range(world):
            ray_rows = _take(worker_raw_batches({"table": table}, cfg, world_rank=rank,
                                                world_size=world, start_step=start), 15)
            local = _take(local_raw_batches(cfg, world_rank=rank, world_size=world,
                                            start_step=start, table=table), 15)
            for a, b in zip(ray_rows, local):
                assert all(torch.equal(a[k], b[k]) for k in a), (source, start, world, rank)


def _train_loop(config):
    """Ray Train worker: read through the pipeline the way the training loop does, save it."""
    import ray.train

    from stargan_ray.data.pipeline import worker_raw_batches

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config["cfg"]
    raws = worker_raw_batches(config["data"], cfg, world_rank=rank, world_size=world,
                              start_step=0)
    keep = [{k: v.numpy() for k, v in next(raws).items()} for _ in range(config["steps"])]
    raws.close()
    np.savez(f"{config['out']}/{rank}.npz",
             **{k: np.concatenate([r[k] for r in keep]) for k in keep[0]})


def test_two_ray_train_workers_get_balanced_disjoint_shares_of_each_step(ray_session, data,
                                                                         tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = _cfg(data / "shards", data / "train")
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"cfg": cfg, "steps": 20, "out": str(tmp_path),
                                        "data": prepare_train_data(cfg)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=str(tmp_path / "runs")))
    trainer.fit()
    ranks = [dict(np.load(tmp_path / f"{r}.npz")) for r in (0, 1)]
    single = _take(local_raw_batches(cfg), 20)
    for step in range(20):  # each step: rank 0 holds lanes 0-3, rank 1 lanes 4-7
        for key in ("i_src", "i_ref", "y_ref"):
            joined = np.concatenate([r[key][4 * step:4 * step + 4] for r in ranks])
            assert np.array_equal(joined, single[step][key].numpy()), (step, key)
    y = np.concatenate([r["y_src"] for r in ranks] + [r["y_ref"] for r in ranks])
    assert abs(y.mean() - 0.5) < 0.07  # 640 draws from a 10:1 dataset
    for r in ranks:
        assert (r["i_ref"] != r["i_ref2"]).all()
        assert np.array_equal(colour_domain(torch.from_numpy(r["x_ref2"])), r["y_ref"])
    epoch0 = [set(np.concatenate([r[k][r["epoch"] == 0] for k in ("i_src", "i_ref", "i_ref2")]))
              for r in ranks]
    assert epoch0[0] and epoch0[1] and not epoch0[0] & epoch0[1]
