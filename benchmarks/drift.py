"""How far runs that are equal in exact arithmetic drift apart: worker counts against rounding.

    nice -n 19 .venv/bin/python benchmarks/drift.py [--dtype float32|float64] [--steps 25]
        [--resume-at 5] [--perturb 1e-7]

The toy experiment with the widths of tests/test_train.py's Ray runs (model.dim_in 16,
max_conv_dim 64, data.batch_size 4, the embedded synthetic data), trained in this process (no
Ray): one worker, or two gloo processes that hold two lanes each and average gradients as the
Ray workers do (worker.make_grad_sync), on the data stream of data/stream.py. Prints, per step,
the largest |difference| of the parameters of each network (ema_ = the EMA copies) for:

- `1 vs 2 workers`: both from step 0;
- `1 vs 1 perturbed`: one worker against one worker whose first discriminator weight was
  multiplied by 1 + --perturb at the start (rounding-sized noise, nothing else differs);
- `resumed 1 vs 2`: the one-worker run's checkpoint of step --resume-at continued on one
  worker and on two (a resize).

If the first and third grow like the second, the worker count changes nothing but the order of
the sums (rounding), which training then amplifies.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stargan_ray.checkpoint import load_state_into, state_dict  # noqa: E402
from stargan_ray.config import load_experiment  # noqa: E402
from stargan_ray.data.layout import lanes_of  # noqa: E402
from stargan_ray.data.stream import local_batches  # noqa: E402
from stargan_ray.engine import TrainState, build_optimizers, train_step  # noqa: E402
from stargan_ray.models import EMA, TRAINED  # noqa: E402
from stargan_ray.train.worker import make_grad_sync, make_sum_sync  # noqa: E402

SETTINGS = {"model.img_size": 32, "model.num_domains": 2, "model.dim_in": 16,
            "model.max_conv_dim": 64, "model.style_dim": 8, "model.latent_dim": 4,
            "model.hidden_dim": 16, "model.w_hpf": 0.0, "data.batch_size": 4,
            "data.train_dir": "synthetic", "data.val_dir": "synthetic"}


def _flat(state: TrainState) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, nets, names in (("", state.nets, TRAINED), ("ema_", state.nets_ema, EMA)):
        for name in names:
            params = getattr(nets, name).parameters()
            out[prefix + name] = torch.cat([p.detach().reshape(-1).double() for p in params])
    return out


def _state(dtype: torch.dtype, opts: dict) -> TrainState:
    cfg = load_experiment("toy", list(SETTINGS.items()))
    state = TrainState.create(cfg, "cpu", seed=5)
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items():
            module.to(dtype)
    state.optims = build_optimizers(cfg, state.nets)
    if opts.get("start"):
        load_state_into(state, torch.load(opts["start"], weights_only=True))
    if opts.get("perturb"):
        weight = next(state.nets.discriminator.parameters())
        with torch.no_grad():
            weight.view(-1)[0] *= 1 + opts["perturb"]
    return state


def _worker(rank: int, opts: dict) -> None:
    world, dtype = opts["world"], getattr(torch, opts["dtype"])
    torch.set_num_threads(1)
    state = _state(dtype, opts)
    state.rows = lanes_of(rank, world, state.cfg.data.batch_size)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{opts['init']}", rank=rank,
                                world_size=world)
        state.grad_sync = make_grad_sync(world, len(state.rows), state.cfg.data.batch_size)
        state.stat_sync = make_sum_sync()
    batches = local_batches(state.cfg, world_rank=rank, world_size=world, start_step=state.step)
    snapshots = {}
    while state.step < opts["until"]:
        batch = next(batches)
        train_step(state, type(batch)(**{k: v.to(dtype) if v.is_floating_point() else v
                                         for k, v in vars(batch).items()}))
        snapshots[state.step] = _flat(state)
        if rank == 0 and state.step == opts.get("save_at"):
            torch.save(state_dict(state), opts["save_path"])
    if rank == 0:
        torch.save(snapshots, opts["out"])
    if world > 1:
        dist.destroy_process_group()


def _run(folder: Path, name: str, **opts) -> dict[int, dict[str, torch.Tensor]]:
    opts |= {"out": str(folder / f"{name}.pt"), "init": str(folder / f"{name}.init")}
    if opts["world"] == 1:
        _worker(0, opts)
    else:
        mp.start_processes(_worker, args=(opts,), nprocs=opts["world"], start_method="spawn")
    return torch.load(opts["out"], weights_only=True)


def _table(title: str, a: dict, b: dict) -> None:
    names = list(next(iter(a.values())))
    print(f"\n{title}: max |diff| per network\nstep " + " ".join(f"{n[:14]:>14}" for n in names))
    for step in sorted(set(a) & set(b)):
        print(f"{step:4d} " + " ".join(f"{(a[step][n] - b[step][n]).abs().max().item():14.2e}"
                                        for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--resume-at", type=int, default=5)
    parser.add_argument("--perturb", type=float, default=None,
                        help="relative change of one weight (default 1e-7, 1e-15 in float64)")
    args = parser.parse_args()
    perturb = args.perturb or (1e-7 if args.dtype == "float32" else 1e-15)
    common = {"dtype": args.dtype, "until": args.steps}
    with tempfile.TemporaryDirectory() as tmp:
        folder, checkpoint = Path(tmp), str(Path(tmp) / "resume.pt")
        one = _run(folder, "w1", world=1, save_at=args.resume_at, save_path=checkpoint, **common)
        _table("1 vs 2 workers", one, _run(folder, "w2", world=2, **common))
        _table(f"1 vs 1 perturbed by {perturb:g}", one,
               _run(folder, "w1p", world=1, perturb=perturb, **common))
        _table(f"resumed at step {args.resume_at}, 1 vs 2 workers",
               _run(folder, "r1", world=1, start=checkpoint, **common),
               _run(folder, "r2", world=2, start=checkpoint, **common))


if __name__ == "__main__":
    main()
