"""Time engine.train_step; with --official, also the official loop on identical shapes and batches.

    .venv/bin/python benchmarks/step.py --experiment toy --device cpu --batch-size 8
    .venv/bin/python benchmarks/step.py --experiment toy --official /tmp/official \
        --deps /tmp/offdeps

--official is a checkout of clovaai/stargan-v2 (it cannot ship with us: CC BY-NC), made with
    mkdir -p /tmp/official && git -C <mirror of clovaai/stargan-v2> archive HEAD core metrics \
        | tar -x -C /tmp/official
--deps a folder holding its extra package munch (``pip install --target /tmp/offdeps munch``); it is
appended to sys.path, so our own packages win over any duplicates there (PYTHONPATH works too).

With --official, both sides start from the same weights and see the same batches. The official side
runs the official compute_d_loss / compute_g_loss / moving_average in the order of the official
Solver.train loop (two D steps, two G steps, EMA, lambda_ds decay), with the official module classes
where they can express the config (dim_in = 2**14 // img_size, a 512-wide mapping network) and
otherwise with copies of our modules, which have the official structure and parameter names. Before
timing, one iteration of each side in float64 from identical weights must leave every parameter of
nets and nets_ema equal to rounding. Timed repetitions alternate between the two sides (and swap
who goes first), so load from other processes on the machine affects both alike; the figures are
medians over repetitions.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import platform
import statistics
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stargan_ray.config import ExperimentConfig, load_experiment, with_overrides  # noqa: E402
from stargan_ray.engine import Batch, TrainState, build_optimizers, train_step  # noqa: E402
from stargan_ray.models import EMA, TRAINED, Networks  # noqa: E402

PARITY_ATOL = 1e-9  # float64: rounding differences after one iteration are ~1e-15


# ---------------------------------------------------------------- shared helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(cfg: ExperimentConfig, batch_size: int, count: int, device: torch.device,
                 seed: int = 0) -> list[Batch]:
    """Random images in [-1, 1], labels and latent codes with the official field names."""
    g = torch.Generator().manual_seed(seed)
    size, domains, latent = cfg.model.img_size, cfg.model.num_domains, cfg.model.latent_dim

    def images() -> torch.Tensor:
        return torch.rand((batch_size, 3, size, size), generator=g) * 2 - 1

    def labels() -> torch.Tensor:
        return torch.randint(0, domains, (batch_size,), generator=g)

    def codes() -> torch.Tensor:
        return torch.randn((batch_size, latent), generator=g)

    return [Batch(x_src=images(), y_src=labels(), x_ref=images(), x_ref2=images(), y_ref=labels(),
                  z_trg=codes(), z_trg2=codes()).to(device) for _ in range(count)]


def fan_for(cfg: ExperimentConfig, device: torch.device, seed: int = 0) -> nn.Module | None:
    """The FAN for w_hpf > 0: the wing checkpoint when it exists, else seeded random weights.

    Random weights give meaningless masks but the same arithmetic, which is all a timing needs.
    """
    if cfg.model.w_hpf <= 0:
        return None
    from stargan_ray.models.fan import FAN, load_fan

    if cfg.model.wing_path and Path(cfg.model.wing_path).is_file():
        return load_fan(cfg.model.wing_path, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FAN().to(device)


def load_config(experiment: str, overrides: list[str], batch_size: int | None) -> ExperimentConfig:
    cfg = load_experiment(experiment, overrides)
    if batch_size is not None:
        cfg = with_overrides(cfg, [("data.batch_size", batch_size)])
    return cfg


def time_steps(step: Callable[[Batch], object], batches: list[Batch], steps: int,
               device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds per step of `steps` consecutive calls, device synchronised.

    On a CPU shared with other jobs the process CPU time is the steadier measure of the work done
    (with --threads 1 it excludes time spent waiting for a core); on a GPU only wall time means
    anything.
    """
    if steps == 0:
        return 0.0, 0.0
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
        step(batches[i % len(batches)])
    synchronize(device)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


@dataclass
class StepTiming:
    step_s: float  # median wall seconds per train_step
    cpu_s: float  # median process CPU seconds per train_step
    images_per_s: float  # from the wall time
    repeats: list[tuple[float, float]]  # (wall, cpu) per repetition
    peak_memory_bytes: int | None  # CUDA only: peak allocated during the timed steps


def time_train_step(cfg: ExperimentConfig, device: torch.device, *, steps: int, repeats: int,
                    warmup: int, seed: int = 0) -> StepTiming:
    """Median time of our train_step for one config (used by gpu_suite.py too)."""
    state = TrainState.create(cfg, device, seed=seed, fan=fan_for(cfg, device))
    batches = make_batches(cfg, cfg.data.batch_size, 4, device, seed)

    def step(batch: Batch) -> object:
        return train_step(state, batch)

    time_steps(step, batches, warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [time_steps(step, batches, steps, device) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    wall = statistics.median(t[0] for t in times)
    cpu = statistics.median(t[1] for t in times)
    return StepTiming(wall, cpu, cfg.data.batch_size / wall, times, peak)


# ---------------------------------------------------------------- the official loop


def install_placeholders() -> list[str]:
    """Stand-ins for the official code's imports that its training iteration never calls.

    core/utils.py imports ffmpeg (video export) and core/wing.py imports cv2 and skimage (face
    alignment and heatmap preprocessing). Where such a package is missing, an empty module takes
    its import's place; any use of it raises. Nothing the benchmarked loop runs comes from them.
    """

    def unavailable(name: str) -> Callable:
        def fail(*args, **kwargs):
            raise RuntimeError(f"{name} is a placeholder installed by benchmarks/step.py")
        return fail

    installed = []
    for name, children in (("ffmpeg", ()), ("cv2", ()), ("skimage", ("filters",))):
        if importlib.util.find_spec(name) is not None:
            continue
        for full in (name, *(f"{name}.{child}" for child in children)):
            module = types.ModuleType(full)
            module.__getattr__ = _placeholder_attr(full, unavailable)  # type: ignore[method-assign]
            sys.modules[full] = module
        installed.append(name)
    return installed


def _placeholder_attr(module: str, unavailable: Callable) -> Callable:
    def getattr_(attr: str):
        if attr.startswith("__"):  # module metadata (inspect, pickle) is absent, not a function
            raise AttributeError(attr)
        return unavailable(f"{module}.{attr}")
    return getattr_


def import_official(path: Path, deps: Path | None) -> types.SimpleNamespace:
    """The official solver and model modules from a checkout (core/, metrics/)."""
    if not (path / "core" / "solver.py").is_file():
        sys.exit(f"--official {path}: no core/solver.py there; see this file's docstring")
    if deps is not None:
        sys.path.append(str(deps))
    sys.path.insert(0, str(path))
    placeholders = install_placeholders()
    try:
        from core import model, solver  # type: ignore[import-not-found]
    except ModuleNotFoundError as err:
        sys.exit(f"the official code needs {err.name!r}: pip install --target <dir> {err.name} "
                 f"and pass --deps <dir>")
    return types.SimpleNamespace(solver=solver, model=model, placeholders=placeholders)


def official_networks(official, cfg: ExperimentConfig, nets: Networks) -> tuple[Networks, str]:
    """The official module classes loaded with our weights, when they can express cfg.model."""
    m = cfg.model
    if m.dim_in != 2**14 // m.img_size or m.hidden_dim != 512:
        return copy.deepcopy(nets), "copies of ours (official classes fix dim_in and hidden_dim)"
    om = official.model
    built = Networks(
        generator=om.Generator(m.img_size, m.style_dim, m.max_conv_dim, m.w_hpf),
        mapping_network=om.MappingNetwork(m.latent_dim, m.style_dim, m.num_domains),
        style_encoder=om.StyleEncoder(m.img_size, m.style_dim, m.num_domains, m.max_conv_dim),
        discriminator=om.Discriminator(m.img_size, m.num_domains, m.max_conv_dim),
        fan=nets.fan)
    for name in TRAINED:
        target = getattr(built, name)
        target.load_state_dict(getattr(nets, name).state_dict(), strict=True)
        source = next(getattr(nets, name).parameters())
        target.to(device=source.device, dtype=source.dtype)
    return built, "official classes"


def ema_networks(nets: Networks) -> Networks:
    copies = {name: copy.deepcopy(getattr(nets, name)) for name in EMA}
    return Networks(**copies, discriminator=None, fan=nets.fan)


class OfficialLoop:
    """One iteration of the official Solver.train body, with the official loss functions."""

    def __init__(self, official, cfg: ExperimentConfig, nets: Networks, nets_ema: Networks) -> None:
        from munch import Munch

        self.solver = official.solver
        self.nets = Munch({name: module for name, module in nets.items(include_fan=True)})
        self.nets_ema = Munch({name: module for name, module in nets_ema.items()})
        loss, o = cfg.loss, cfg.optim
        self.args = Munch(lambda_reg=loss.lambda_reg, lambda_sty=loss.lambda_sty,
                          lambda_ds=loss.lambda_ds, lambda_cyc=loss.lambda_cyc,
                          ds_iter=loss.ds_iter, w_hpf=cfg.model.w_hpf)
        self.initial_lambda_ds = loss.lambda_ds
        self.ema_beta = o.ema_beta  # the official loop hard-codes 0.999, the paper value
        self.optims = Munch({
            name: torch.optim.Adam(params=self.nets[name].parameters(),
                                   lr=o.f_lr if name == "mapping_network" else o.lr,
                                   betas=[o.beta1, o.beta2], weight_decay=o.weight_decay)
            for name in TRAINED})

    def _reset_grad(self) -> None:
        for optim in self.optims.values():
            optim.zero_grad()

    def step(self, batch: Batch) -> None:
        s, nets, args, optims = self.solver, self.nets, self.args, self.optims
        # the official fetcher hands out fresh tensors; compute_d_loss sets requires_grad on x_real
        x_real, y_org = batch.x_src.detach(), batch.y_src
        x_ref, x_ref2, y_trg = batch.x_ref, batch.x_ref2, batch.y_ref
        z_trg, z_trg2 = batch.z_trg, batch.z_trg2
        masks = nets.fan.get_heatmap(x_real) if args.w_hpf > 0 else None

        d_loss, _ = s.compute_d_loss(nets, args, x_real, y_org, y_trg, z_trg=z_trg, masks=masks)
        self._reset_grad()
        d_loss.backward()
        optims.discriminator.step()
        d_loss, _ = s.compute_d_loss(nets, args, x_real, y_org, y_trg, x_ref=x_ref, masks=masks)
        self._reset_grad()
        d_loss.backward()
        optims.discriminator.step()

        g_loss, _ = s.compute_g_loss(nets, args, x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2],
                                     masks=masks)
        self._reset_grad()
        g_loss.backward()
        optims.generator.step()
        optims.mapping_network.step()
        optims.style_encoder.step()
        g_loss, _ = s.compute_g_loss(nets, args, x_real, y_org, y_trg, x_refs=[x_ref, x_ref2],
                                     masks=masks)
        self._reset_grad()
        g_loss.backward()
        optims.generator.step()

        for name in EMA:
            s.moving_average(nets[name], self.nets_ema[name], beta=self.ema_beta)
        if args.lambda_ds > 0:
            args.lambda_ds -= self.initial_lambda_ds / args.ds_iter


def _float64(batch: Batch) -> Batch:
    return Batch(**{k: (v.double() if v.is_floating_point() else v)
                    for k, v in vars(batch).items()})


def _max_difference(a: Networks, b: Networks, names: tuple[str, ...]) -> tuple[float, str, int]:
    worst, where, count = 0.0, "", 0
    for name in names:
        for (key, p), q in zip(getattr(a, name).named_parameters(), getattr(b, name).parameters()):
            count += 1
            diff = (p.detach() - q.detach()).abs().max().item()
            if diff > worst:
                worst, where = diff, f"{name}.{key}"
    return worst, where, count


@dataclass
class Parity:
    max_abs_diff: float  # over every parameter of nets and nets_ema
    where: str  # the tensor where it occurs
    tensors: int
    moved: float  # max |after - before| of our parameters: the iteration did change them
    official_networks: str

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_ATOL and self.moved > 0


def check_parity(official, cfg: ExperimentConfig, device: torch.device, batch: Batch,
                 seed: int) -> Parity:
    """One iteration of each side in float64 from identical weights and the same batch."""
    cfg = with_overrides(cfg, [("train.precision", "fp32"), ("train.compile", False)])
    state = TrainState.create(cfg, device, seed=seed, fan=fan_for(cfg, device))
    for nets in (state.nets, state.nets_ema):
        for _, module in nets.items():
            module.double()
    state.optims = build_optimizers(cfg, state.nets)
    before = copy.deepcopy(state.nets)
    ref_nets, kind = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, ref_nets, ema_networks(ref_nets))
    batch = _float64(batch)
    train_step(state, batch)
    loop.step(batch)
    nets_ema = Networks(**dict(loop.nets_ema), discriminator=None)
    d_nets, where_nets, n_nets = _max_difference(state.nets, Networks(**dict(loop.nets)), TRAINED)
    d_ema, where_ema, n_ema = _max_difference(state.nets_ema, nets_ema, EMA)
    worst, where = max((d_nets, f"nets.{where_nets}"), (d_ema, f"nets_ema.{where_ema}"))
    moved = _max_difference(state.nets, before, TRAINED)[0]
    return Parity(worst, where if worst > 0 else "", n_nets + n_ema, moved, kind)


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="toy", help="experiment name or TOML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set train.precision=bf16 (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="default: data.batch_size")
    p.add_argument("--steps", type=int, default=10, help="train steps per timed repetition")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions (per side)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (per side)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official", type=Path, default=None, help="checkout of clovaai/stargan-v2")
    p.add_argument("--deps", type=Path, default=None,
                   help="folder with munch for the official code")
    p.add_argument("--no-parity", action="store_true", help="skip the float64 parity check")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.experiment, args.set, args.batch_size)
    t = cfg.train
    print(f"experiment {cfg.name} | {cfg.model.img_size} px | batch {cfg.data.batch_size} | "
          f"{device} | precision {t.precision} | channels_last {t.channels_last} | "
          f"compile {t.compile} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{platform.processor() or platform.machine()}")
    result: dict = {"experiment": cfg.name, "img_size": cfg.model.img_size,
                    "batch_size": cfg.data.batch_size, "device": str(device),
                    "precision": t.precision, "channels_last": t.channels_last,
                    "compile": t.compile, "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "overrides": args.set}

    if args.official is None:
        timing = time_train_step(cfg, device, steps=args.steps, repeats=args.repeats,
                                 warmup=args.warmup, seed=args.seed)
        print(f"ours: {timing.step_s * 1e3:.1f} ms/step wall ({timing.cpu_s * 1e3:.1f} ms process "
              f"CPU), {timing.images_per_s:.1f} images/s; medians of {args.repeats} x "
              f"{args.steps} steps: {', '.join(f'{w * 1e3:.1f}' for w, _ in timing.repeats)} ms")
        if timing.peak_memory_bytes is not None:
            print(f"peak memory: {timing.peak_memory_bytes / 2**30:.2f} GiB")
        result.update(step_s=timing.step_s, cpu_s=timing.cpu_s, images_per_s=timing.images_per_s,
                      repeats_s=timing.repeats, peak_memory_bytes=timing.peak_memory_bytes)
    else:
        official = import_official(args.official.resolve(), args.deps)
        if official.placeholders:
            print("placeholder modules for unused official imports: "
                  + ", ".join(official.placeholders))
        batches = make_batches(cfg, cfg.data.batch_size, 4, device, args.seed)
        if not args.no_parity:
            parity = check_parity(official, cfg, device, batches[0], args.seed)
            diff = (f"{parity.max_abs_diff:.2e} at {parity.where}" if parity.max_abs_diff > 0
                    else "0 (bitwise equal)")
            print(f"parity (float64, one iteration, official side: {parity.official_networks}): "
                  f"max |ours - official| over {parity.tensors} parameter tensors of nets and "
                  f"nets_ema = {diff}; the iteration moved parameters by up to {parity.moved:.2e} "
                  f"({'ok' if parity.ok else 'FAILED'}, tolerance {PARITY_ATOL:g})")
            result.update(parity_max_abs_diff=parity.max_abs_diff, parity_ok=parity.ok,
                          official_networks=parity.official_networks)
            if not parity.ok:
                return 1
        result.update(compare(official, cfg, device, batches, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def compare(official, cfg: ExperimentConfig, device: torch.device, batches: list[Batch],
            args: argparse.Namespace) -> dict:
    """Interleaved timing of our train_step and the official loop from identical weights."""
    state = TrainState.create(cfg, device, seed=args.seed, fan=fan_for(cfg, device))
    ref_nets, kind = official_networks(official, cfg, state.nets)
    loop = OfficialLoop(official, cfg, ref_nets, ema_networks(ref_nets))
    sides: dict[str, Callable[[Batch], object]] = {
        "ours": lambda batch: train_step(state, batch), "official": loop.step}
    for step in sides.values():
        time_steps(step, batches, args.warmup, device)
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "official": []}
    for r in range(args.repeats):
        order = ("ours", "official") if r % 2 == 0 else ("official", "ours")
        for name in order:
            times[name].append(time_steps(sides[name], batches, args.steps, device))
    out: dict = {"official_networks": kind, "repeats": args.repeats, "steps": args.steps}
    n = cfg.data.batch_size
    clocks = ("wall", "cpu") if device.type == "cpu" else ("wall",)
    for c, clock in enumerate(clocks):
        med = {name: statistics.median(t[c] for t in values) for name, values in times.items()}
        per_repeat = statistics.median(a[c] / b[c]
                                       for a, b in zip(times["ours"], times["official"]))
        for name in ("ours", "official"):
            print(f"{clock:4s} {name:9s}: {med[name] * 1e3:8.1f} ms/step, "
                  f"{n / med[name]:7.1f} images/s   "
                  f"[{', '.join(f'{t[c] * 1e3:.0f}' for t in times[name])}]")
        ratio = med["ours"] / med["official"]
        print(f"{clock:4s} ratio ours/official: {ratio:.3f} (ratio of medians; median of "
              f"per-repeat ratios {per_repeat:.3f})")
        out[clock] = {"ours_step_s": med["ours"], "official_step_s": med["official"],
                      "ratio": ratio, "ratio_per_repeat_median": per_repeat,
                      "ours_repeats_s": [t[c] for t in times["ours"]],
                      "official_repeats_s": [t[c] for t in times["official"]]}
    print(f"({args.repeats} interleaved repeats of {args.steps} steps per side after "
          f"{args.warmup} warm-up steps; official side: {kind})")
    return out


if __name__ == "__main__":
    sys.exit(main())
