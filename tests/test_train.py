"""Distributed training: gradient averaging, exact resume, a killed worker, non-finite losses, W&B."""

from __future__ import annotations

import os
import signal
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stargan_ray.data import synthetic
from stargan_ray.engine import TrainState, build_optimizers, train_step
from stargan_ray.models import EMA, TRAINED
from stargan_ray.train import TrainingStopped, latest_checkpoint, make_grad_sync, run_training

from .helpers import (assert_equal_states, confident_d, load_train_state, random_batch,
                      read_events, registered_steps, run_options, tiny_config, wait_until,
                      write_colour_tree)

# ---------------------------------------------------------------- equivalence (torch.distributed)


def _halves(batch, rank):
    return type(batch)(**{k: v.chunk(2)[rank] for k, v in vars(batch).items()})


def _double(state, cfg):
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items():
            module.double()
    state.optims = build_optimizers(cfg, state.nets)


def _to_double(batch):
    return type(batch)(**{k: (v.double() if v.is_floating_point() else v)
                          for k, v in vars(batch).items()})


def _worker(rank: int, init_file: str, out_dir: str, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = tiny_config(**{"data.batch_size": 4})
    state = TrainState.create(cfg, "cpu", seed=5)
    _double(state, cfg)
    state.grad_sync = make_grad_sync(2)
    for step in range(steps):
        train_step(state, _to_double(_halves(random_batch(cfg, n=8, seed=step), rank)))
    torch.save({name: getattr(state.nets, name).state_dict() for name in TRAINED} |
               {f"ema_{name}": getattr(state.nets_ema, name).state_dict() for name in EMA},
               Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_workers_with_batch_b_equal_one_worker_with_batch_2b(tmp_path):
    steps = 3
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path), steps), nprocs=2,
                       start_method="spawn")
    cfg = tiny_config(**{"data.batch_size": 8})
    single = TrainState.create(cfg, "cpu", seed=5)
    _double(single, cfg)
    for step in range(steps):
        train_step(single, _to_double(random_batch(cfg, n=8, seed=step)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Parameters whose true gradient is 0 (offsets removed by instance norm) get Adam updates of
    # noise / eps ~ 1e-7 that depend on the summation order; 1e-6 is 0.03% of the 3e-3 that
    # three steps at lr 1e-3 can move a weight.
    fresh = TrainState.create(cfg, "cpu", seed=5).nets.generator.from_rgb.weight.double()
    assert (single.nets.generator.from_rgb.weight - fresh).abs().max() > 1e-4
    for name in TRAINED:
        for key, p in getattr(single.nets, name).state_dict().items():
            assert torch.equal(ranks[0][name][key], ranks[1][name][key])  # replicas stay equal
            assert torch.allclose(ranks[0][name][key], p, rtol=0, atol=1e-6), f"{name}.{key}"
    for name in EMA:
        for key, p in getattr(single.nets_ema, name).state_dict().items():
            assert torch.allclose(ranks[0][f"ema_{name}"][key], p, rtol=0, atol=1e-6)


ADA = {"loss.ada_target": 0.6, "loss.ada_interval": 1, "loss.ada_kimg": 0.1}  # p moves fast


def _share_worker(rank: int, world: int, init_file: str, out_dir: str, train_dir: str,
                  steps: int, batch_per_worker: int, ada: bool = False) -> None:
    """One worker of a run with total batch 8 on the real data stream, in float64."""
    from stargan_ray.data.layout import lanes_of
    from stargan_ray.data.stream import local_batches
    from stargan_ray.train.worker import make_sum_sync

    torch.set_num_threads(1)
    cfg = tiny_config(**{"data.batch_size": 8, "data.batch_per_worker": batch_per_worker,
                         "data.train_dir": train_dir, "data.val_dir": train_dir,
                         **(ADA if ada else {})})
    state = TrainState.create(cfg, "cpu", seed=5)
    if ada:
        confident_d(state)  # so that p rises
    _double(state, cfg)
    state.rows = lanes_of(rank, world, 8)  # as the Ray worker: ADA draws by row
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
        state.grad_sync = make_grad_sync(world, len(lanes_of(rank, world, 8)), 8)
        state.stat_sync = make_sum_sync()
    batches = local_batches(cfg, world_rank=rank, world_size=world)
    ps = [train_step(state, _to_double(next(batches))).get("ADA/p") for _ in range(steps)]
    if rank == 0:
        torch.save({name: getattr(state.nets, name).state_dict() for name in TRAINED}
                   | ({"ada_p": torch.stack(ps + [state.ada.p])} if ada else {}),
                   Path(out_dir) / f"w{world}_b{batch_per_worker}{'_ada' * ada}.pt")
    if world > 1:
        dist.destroy_process_group()


def _share_runs(tmp_path, train_dir: str, runs: list[tuple[int, int]], steps: int = 3,
                ada: bool = False) -> dict[tuple[int, int], dict]:
    """{(workers, data.batch_per_worker): the trained state dicts} of _share_worker groups."""
    for world, cap in runs:
        args = (world, str(tmp_path / f"init{world}_{cap}"), str(tmp_path), train_dir, steps, cap,
                ada)
        if world == 1:
            _share_worker(0, *args)
        else:
            mp.start_processes(_share_worker, args=args, nprocs=world, start_method="spawn")
    suffix = "_ada" if ada else ""
    return {run: torch.load(tmp_path / f"w{run[0]}_b{run[1]}{suffix}.pt", weights_only=True)
            for run in runs}


def _assert_same_model(result: dict, reference: dict, run) -> None:
    for name in TRAINED:
        for key, p in reference[name].items():
            # Biases that feed an instance norm have a true gradient of 0; Adam turns the
            # summation-order noise of their gradients into updates of up to ~lr (see
            # test_engine's accumulation test). Every other parameter agrees to 1e-10.
            no_effect = name == "generator" and key.endswith(".bias") and (
                "conv" in key or key == "from_rgb.bias")
            atol = 1e-5 if no_effect else 1e-10
            assert torch.allclose(result[name][key], p, rtol=0, atol=atol), \
                (run, name, key, (result[name][key] - p).abs().max().item())


def test_the_total_batch_trains_the_same_model_on_1_to_4_workers_and_with_accumulation(tmp_path):

    train_dir = str(write_colour_tree(tmp_path / "train", (40, 40)))
    # (workers, data.batch_per_worker); 3 workers get shares of 3, 3 and 2 rows (as an elastic
    # run may), averaged by rows
    runs = [(1, 0), (2, 0), (4, 0), (1, 2), (3, 0)]
    results = _share_runs(tmp_path, train_dir, runs)
    reference = results[(1, 0)]
    fresh = TrainState.create(tiny_config(), "cpu", seed=5).nets.generator.from_rgb.weight
    assert (reference["generator"]["from_rgb.weight"] - fresh.double()).abs().max() > 1e-4
    for run in runs[1:]:
        _assert_same_model(results[run], reference, run)



def _resize_worker(rank: int, world: int, init_file: str, train_dir: str, start: str,
                   out: str, steps: int) -> None:
    """One worker of a float64 run that resumes a checkpoint on `world` workers, as the Ray
    worker does after a resize: restore, this worker's lanes, the stream from the restored step."""
    from stargan_ray.checkpoint import load_state_into, state_dict
    from stargan_ray.data.layout import lanes_of
    from stargan_ray.data.stream import local_batches
    from stargan_ray.train.worker import make_sum_sync

    torch.set_num_threads(1)
    cfg = tiny_config(**{"data.batch_size": 8, "data.train_dir": train_dir,
                         "data.val_dir": train_dir})
    state = TrainState.create(cfg, "cpu", seed=5)
    _double(state, cfg)
    if start:
        load_state_into(state, torch.load(start, weights_only=True))
    state.rows = lanes_of(rank, world, 8)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                world_size=world)
        state.grad_sync = make_grad_sync(world, len(state.rows), 8)
        state.stat_sync = make_sum_sync()
    batches = local_batches(cfg, world_rank=rank, world_size=world, start_step=state.step)
    for _ in range(steps):
        train_step(state, _to_double(next(batches)))
    if rank == 0:
        torch.save(state_dict(state), out)
    if world > 1:
        dist.destroy_process_group()


def test_a_checkpoint_resumed_on_another_worker_count_trains_the_same_model(tmp_path):
    # float64: in float32 the other summation order is amplified by training (benchmarks/drift.py)
    train_dir = str(write_colour_tree(tmp_path / "train", (40, 40)))
    start = str(tmp_path / "start.pt")
    _resize_worker(0, 1, "", train_dir, "", start, 2)
    ends = {}
    for world in (1, 2, 3):  # 3: shares of 3, 3 and 2 rows
        args = (world, str(tmp_path / f"init{world}"), train_dir, start,
                str(tmp_path / f"w{world}.pt"), 3)
        if world == 1:
            _resize_worker(0, *args)
        else:
            mp.start_processes(_resize_worker, args=args, nprocs=world, start_method="spawn")
        ends[world] = torch.load(tmp_path / f"w{world}.pt", weights_only=True)
    assert ends[1]["step"] == 5
    moved = ends[1]["nets"]["discriminator"]["main.0.weight"] - torch.load(
        start, weights_only=True)["nets"]["discriminator"]["main.0.weight"]
    assert moved.abs().max() > 1e-4
    for world in (2, 3):
        _assert_same_model(ends[world]["nets"], ends[1]["nets"], ("resumed on", world))
        for name in EMA:
            for key, p in ends[1]["nets_ema"][name].items():
                atol = 1e-6 if name == "generator" else 1e-10  # EMA of the cancelled G biases
                assert torch.allclose(ends[world]["nets_ema"][name][key], p, rtol=0, atol=atol)


# ---------------------------------------------------------------- Ray Train runs


# wide enough that a step takes a while, so a worker can be killed mid-run
RUN = {"model.dim_in": 16, "model.max_conv_dim": 64, "data.batch_size": 4,
       "train.total_iters": 12, "train.save_every": 4, "train.print_every": 2,
       "train.sample_every": 6, "train.eval_every": 1000, "train.keep_checkpoints": 5,
       "data.train_dir": "synthetic", "data.val_dir": "synthetic",
       # ADA on, so that resume and restart must carry p and the interval's sign sums (an
       # interval of 3 steps: checkpoints at 4 and 8 fall inside one); p moves by 0.12 an update
       "loss.ada_target": 0.3, "loss.ada_interval": 3, "loss.ada_kimg": 0.1}
_cfg = partial(tiny_config, **RUN)
_opts = partial(run_options, num_workers=2, max_failures=2, wandb="offline")


def _final_state(tmp_path, name):
    step, path = latest_checkpoint(f"{tmp_path}/{name}")
    return step, load_train_state(path)


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    """A 2-worker run of 12 steps that nobody stops: the reference for resume tests."""
    storage = tmp_path_factory.mktemp("runs")
    run_training(_cfg(), _opts(storage, "straight"))
    return storage, _final_state(storage, "straight")


@pytest.mark.ray
def test_a_run_writes_checkpoints_samples_and_an_offline_wandb_run(uninterrupted):
    storage, (step, state) = uninterrupted
    run_dir = storage / "straight"
    assert step == 12 and state.step == 12
    assert state.cfg == _cfg()
    # the synthetic data's domain names (the folders' sorted names), for translate and serve
    assert state.domains == tuple(synthetic.domain_names(state.cfg.model.num_domains))
    kept = sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert kept == [f"checkpoint_{s:08d}" for s in (4, 8, 12)]
    assert {p.name for p in (run_dir / "samples").iterdir()} >= {
        "000006_reference.png", "000006_latent.png", "000012_reference.png"}
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    history = (next(wandb_runs[0].glob("*.wandb"))).read_bytes()
    assert b"G/latent_cyc" in history and b"images_per_s" in history  # logged metrics
    assert b"ADA/p" in history and b"ADA/r_t" in history
    assert 0 < state.ada.p <= 1  # p moved: the workers' sign sums reached the update
    images = list((wandb_runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(images) >= 4  # reference and latent grids at steps 6 and 12


@pytest.mark.ray
def test_stopped_and_resumed_run_ends_with_the_same_parameters(uninterrupted, tmp_path):
    storage, (_, reference) = uninterrupted
    run_training(_cfg(**{"train.total_iters": 8}), _opts(tmp_path, "resumed"))
    assert latest_checkpoint(f"{tmp_path}/resumed")[0] == 8
    run_training(_cfg(), _opts(tmp_path, "resumed", resume=True))
    step, state = _final_state(tmp_path, "resumed")
    assert step == 12
    assert_equal_states(state, reference)
    starts = [e["step"] for e in read_events(tmp_path / "resumed") if e["event"] == "start"]
    assert starts == [0, 8]


@pytest.mark.ray
def test_a_run_saved_with_sync_uploads_resumes_with_async_ones_to_the_same_parameters(
        uninterrupted, tmp_path):
    storage, (_, reference) = uninterrupted  # its saves were uploaded in the background
    assert reference.cfg.train.checkpoint_upload == "async"
    run_training(_cfg(**{"train.total_iters": 8, "train.checkpoint_upload": "sync"}),
                 _opts(tmp_path, "modes"))
    run_training(_cfg(), _opts(tmp_path, "modes", resume=True))
    step, state = _final_state(tmp_path, "modes")
    assert step == 12
    assert_equal_states(state, reference)
    folders = [p for p in (tmp_path / "modes").glob("checkpoint_*") if p.is_dir()]
    assert len(folders) == 3  # 4, 8, 12: every upload published whole, nothing partial left
    assert all([p.name for p in folder.iterdir()] == ["checkpoint.pt"] for folder in folders)
    assert registered_steps(tmp_path / "modes")[-1] == 12  # Ray registered the async upload


@pytest.mark.ray
def test_a_killed_worker_is_replaced_and_the_run_finishes_exactly(uninterrupted, tmp_path):
    storage, (_, reference) = uninterrupted
    cfg = _cfg()
    run_dir = tmp_path / "killed"
    outcome: list[BaseException | None] = []

    def fit() -> None:
        try:
            run_training(cfg, _opts(tmp_path, "killed"))
            outcome.append(None)
        except BaseException as err:  # reported by the assertion below
            outcome.append(err)

    thread = threading.Thread(target=fit)
    thread.start()
    wait_until(lambda: 4 in registered_steps(run_dir) or not thread.is_alive(),
               "the checkpoint of step 4 to be registered", every_s=0.05)
    registered = registered_steps(run_dir)
    assert registered, f"the run ended without a registered checkpoint: {outcome}"
    kill_step = max(registered)
    assert kill_step < cfg.train.total_iters, "the run ended before the kill"
    pid = next(e["pid"] for e in read_events(run_dir) if e["event"] == "start")  # rank 0
    os.kill(pid, signal.SIGKILL)  # a real crash of one worker process
    thread.join(timeout=400)  # a hang guard: the replaced worker finishes the run
    assert not thread.is_alive(), "hang guard: waited 400 s for the run to finish after the kill"
    assert outcome == [None], outcome
    step, state = _final_state(tmp_path, "killed")
    assert step == cfg.train.total_iters
    starts = [e["step"] for e in read_events(run_dir) if e["event"] == "start"]
    # restarted once, from the checkpoint registered before the kill (or a later one): at most
    # save_every steps were trained twice
    assert starts[0] == 0 and len(starts) == 2 and starts[1] >= kill_step, starts
    assert starts[1] % cfg.train.save_every == 0
    assert_equal_states(state, reference)


@pytest.mark.ray
@pytest.mark.parametrize("policy", ["stop", "rollback"])
def test_a_non_finite_loss_stops_the_run_without_a_bad_checkpoint(ray_session, tmp_path, policy):
    # A huge learning rate drives the weights to overflow after the first steps: a real NaN.
    cfg = _cfg(**{"optim.lr": 1e30, "optim.f_lr": 1e30, "train.print_every": 1,
                  "train.save_every": 1, "train.total_iters": 8, "train.nan_policy": policy})
    with pytest.raises(TrainingStopped) as err:
        run_training(cfg, _opts(tmp_path, policy, num_workers=1, max_failures=0))
    message = str(err.value)
    assert "is not finite at step" in message and f"nan_policy={policy}" in message
    events = read_events(tmp_path / policy)
    checkpoints = [p for p in (tmp_path / policy).glob("checkpoint_*") if p.is_dir()]
    rollbacks = sum(e["event"] == "rollback" for e in events)
    # rollback needs a checkpoint from before the first non-finite loss
    assert rollbacks == (3 if policy == "rollback" and checkpoints else 0)
    for folder in checkpoints:
        state = load_train_state(folder)
        assert all(torch.isfinite(p).all() for _, m in state.nets.items() for p in m.parameters())


def test_with_ada_1_2_and_4_workers_and_accumulation_train_the_same_model_and_p(tmp_path):
    train_dir = str(write_colour_tree(tmp_path / "train", (40, 40)))
    runs = [(1, 0), (2, 0), (4, 0), (1, 2)]
    results = _share_runs(tmp_path, train_dir, runs, ada=True)
    reference = results[(1, 0)]
    assert 0 < reference["ada_p"][-1] < 1  # p moved: the sign statistics were gathered
    without = _share_runs(tmp_path, train_dir, [(1, 0)])[(1, 0)]  # without ADA: another model
    assert not torch.equal(without["discriminator"]["main.0.weight"],
                           reference["discriminator"]["main.0.weight"])
    for run in runs[1:]:
        assert torch.equal(results[run]["ada_p"], reference["ada_p"]), run
        _assert_same_model(results[run], reference, run)
