"""The Ray Data pipeline on the session's local Ray instance: split and Ray Train ingest."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from stargan_ray.data import prepare as prep
from stargan_ray.data.pipeline import (build_train_dataset, ingest_options, iter_raw_batches,
                                       train_data_config)
from stargan_ray.data.sampling import to_batch
from stargan_ray.data.table import open_train_table

from .conftest import tiny_config
from .test_data_sampling import colour_domain, write_colour_tree

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 10:1 imbalanced colour tree (domain 1 blue, rare) and its shards."""
    root = tmp_path_factory.mktemp("raydata")
    write_colour_tree(root / "train", (300, 30))
    prep.prepare(str(root / "train"), str(root / "shards"), workers=1)
    return root


def _cfg(train, val, **overrides):
    return tiny_config(**{"data.train_dir": str(train), "data.val_dir": str(val),
                          "data.batch_size": 8, "train.total_iters": 60, **overrides})


def _split_rows(ds, n_workers=2, batches=30):
    """Consume Ray's split the way Ray Train's DataConfig makes it (preserve_order)."""
    ds = ds.copy(ds)
    ds.context.execution_options = ingest_options()
    splits = ds.streaming_split(n_workers, equal=True)
    out = [None] * n_workers

    def consume(rank):
        it = iter_raw_batches(splits[rank], 8, prefetch_batches=1)
        rows = [next(it) for _ in range(batches)]
        it.close()
        out[rank] = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_split_is_deterministic_disjoint_and_balanced(ray_session, data):
    cfg = _cfg(data / "train", data / "train")
    table, _ = open_train_table(cfg)
    first = _split_rows(build_train_dataset(cfg, num_workers=2, table=table))
    second = _split_rows(build_train_dataset(cfg, num_workers=2, table=table))
    for a, b in zip(first, second):  # same seed, same worker count: same batches per worker
        assert all(torch.equal(a[k], b[k]) for k in a)
    for epoch in range(2):
        seen = [set(torch.cat([r[k][r["epoch"] == epoch] for k in ("i_src", "i_ref", "i_ref2")])
                    .tolist()) for r in first]
        assert seen[0] and seen[1] and not seen[0] & seen[1]
    y = torch.cat([r[k] for r in first for k in ("y_src", "y_ref")]).float()
    assert abs(y.mean().item() - 0.5) < 0.07  # 960 draws; unbalanced would be ~0.09


def _train_loop(config):
    """Ray Train worker: read both datasets through the pipeline, save what each rank saw."""
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    cfg = config["cfg"]
    for name in ("train", "shards"):
        shard = ray.train.get_dataset_shard(name)
        raws = iter_raw_batches(shard, cfg.data.batch_size, prefetch_batches=1)
        keep = []
        for step in range(config["steps"]):
            raw = next(raws)
            batch = to_batch(raw, cfg.model.latent_dim, 0, rank, step, "cpu")
            assert batch.x_ref.min() >= -1 and batch.x_ref.max() <= 1
            keep.append({k: v.numpy() for k, v in raw.items()})
        raws.close()
        np.savez(f"{config['out']}/{name}_{rank}.npz",
                 **{k: np.concatenate([r[k] for r in keep]) for k in keep[0]})


def test_two_ray_train_workers_get_balanced_disjoint_batches(ray_session, data, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = _cfg(data / "train", data / "train")
    shards_cfg = _cfg(data / "shards", data / "train")
    trainer = TorchTrainer(
        _train_loop, train_loop_config={"cfg": cfg, "steps": 20, "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        datasets={"train": build_train_dataset(cfg, num_workers=2),
                  "shards": build_train_dataset(shards_cfg, num_workers=2)},
        dataset_config=train_data_config(("train", "shards")),
        run_config=RunConfig(storage_path=str(tmp_path / "runs")))
    trainer.fit()
    for name in ("train", "shards"):
        ranks = [dict(np.load(tmp_path / f"{name}_{r}.npz")) for r in (0, 1)]
        y = np.concatenate([r["y_src"] for r in ranks] + [r["y_ref"] for r in ranks])
        assert abs(y.mean() - 0.5) < 0.07, name  # 640 draws from a 10:1 dataset
        for r in ranks:
            assert (r["i_ref"] != r["i_ref2"]).all()
            assert np.array_equal(colour_domain(torch.from_numpy(r["x_ref2"])), r["y_ref"])
        epoch0 = [set(np.concatenate([r[k][r["epoch"] == 0] for k in ("i_src", "i_ref", "i_ref2")]))
                  for r in ranks]
        assert epoch0[0] and epoch0[1] and not epoch0[0] & epoch0[1], name
