"""The official StarGAN v2 evaluation (FID and LPIPS per task), fast and sharded over Ray workers.

Protocol, as the official metrics/eval.py: domains are the sorted folders of the val split; tasks
are the ordered pairs (src, trg) of distinct domains, listed by target then source; the sources
are the val images of src, each translated num_outs_per_domain times; ``latent`` mode draws a new
z per output, ``reference`` mode takes a val image of trg as reference; FID compares the outputs
with the train images of trg; LPIPS is the mean over pairs of one source's outputs, then over
sources. JSON files are named and keyed as the official ones (``FID_{step:05d}_{mode}.json``).

What differs from the official code, and why the numbers do not:
- Generated images are quantised to uint8 in memory exactly as the PNG round trip would, instead
  of being written to disk and read back.
- Real statistics are computed once per target domain (not once per task) and cached on disk,
  keyed by a content hash of the file list, sizes, mtimes, image size and weights; the cache file
  is written atomically. Latent and reference mode share them.
- Features are added into float64 moment sums, so shards combine by addition.
- Every random choice is seeded per (mode, source domain, target domain, source index, output
  index) from train.seed: the result does not depend on how the work is split. The official code
  draws from the global RNG with shuffled loaders, so its numbers vary from run to run by about
  the same amount as two seeds of ours.
- Reference images are drawn uniformly from the target's val images for each (source, output);
  the official code cycles through a shuffled loader with drop_last=True.
- LPIPS per task is the mean over sources; the official code averages per-batch means, which
  weights the sources of a smaller last batch more.

Work is split into items of data.val_batch_size sources of one task (and eval.batch_size real
images), dealt to workers in strides; each worker builds the networks once and returns per-item
LPIPS values and, at the end, its moment sums. num_workers=0 runs in-process (tests, a single
training worker); a shard is one rank of a group (the Train workers) that splits the items the
same way and adds the sums up over the group (metrics/sharding.py).
The plan lives in eval_plan, the worker in eval_worker, the Ray actors in eval_ray; this module is
the driver: real-statistics cache, running the items, the metrics and their JSON files.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError, ExperimentConfig
from ..data import folders
from ..models import Networks
from ..storage import atomic_write_json
from . import fid as fidlib
from . import lpips as lpipslib
from .eval_plan import (MODES, EvalData, Item, Job, Task, chunks, image_count, make_tasks,
                        plan_items, resolve_dirs, result_file, seeded_generator, source_indices)
from .eval_worker import EvalWorker, ItemResult
from .memory import check_memory, decode_bytes, generator_bytes, give_back, inception_bytes
from .options import EvalOptions
from .sharding import Shard, agree_on_misses, merge_lpips, merge_moments
from .weights import FeatureWeights


@dataclass
class Collected:
    """Everything the metrics are computed from (what shards add up to)."""

    real: dict[int, fidlib.FeatureMoments]  # target domain -> real moments
    fake: dict[tuple, fidlib.FeatureMoments]  # (mode, task index) -> generated moments
    lpips: dict[tuple, dict[int, float]]  # (mode, task index) -> source index -> value
    cache: dict[int, str]  # target domain -> "hit" | "computed"


def default_cache_dir() -> Path:
    from ..data.synthetic import cache_root

    return cache_root() / "fid_stats"


def _cached_real(data: EvalData, tasks: Sequence[Task], size: int, features_id: str,
                 cache_root: Path
                 ) -> tuple[dict[int, fidlib.FeatureMoments], dict[int, str], dict[int, Path]]:
    """Real moments found in the cache, the status per target ("hit" | "computed"), and the
    cache file of each target (keyed by the content of its train files and the weights)."""
    real: dict[int, fidlib.FeatureMoments] = {}
    cache: dict[int, str] = {}
    paths: dict[int, Path] = {}
    for trg in sorted({t.trg for t in tasks}):
        key = fidlib.stats_key(data.train[trg], size, features_id)
        paths[trg] = cache_root / f"{data.domains[trg]}_{key}.npz"
        if paths[trg].is_file():
            real[trg] = fidlib.FeatureMoments.load(paths[trg])
            cache[trg] = "hit"
        else:
            cache[trg] = "computed"
    return real, cache, paths


def _run_shard(worker: EvalWorker, items: list[Item], shard: Shard,
               on_result: Callable[[ItemResult], None]) -> dict[tuple, fidlib.FeatureMoments]:
    """This rank's items in this process, then every rank's moment sums and rows added up."""
    counts: dict[int, int] = {}  # plan index -> feature rows it gave (bad files give fewer)
    for i in range(shard.rank, len(items), shard.world):
        key = items[i].key
        before = worker.moments[key].n if key in worker.moments else 0
        on_result(worker.run(items[i]))
        counts[i] = worker.moments[key].n - before
    return merge_moments(shard, items, worker.job.num_outs, counts, worker.results())


def _run_items(job: Job, items: list[Item], nets: Networks, inception: nn.Module,
               lpips_net: nn.Module | None, opts: EvalOptions
               ) -> tuple[dict[tuple, fidlib.FeatureMoments], dict[tuple, dict[int, float]]]:
    """Moment sums and per-source LPIPS of the items: in this process, on Ray actors, or this
    rank's share of them in this process, added up over the ranks of opts.shard."""
    lpips: dict[tuple, dict[int, float]] = {}
    shard = opts.shard
    total = image_count(items if shard is None else shard.take(items), job.num_outs)
    # images through Inception: real files once, each source num_outs times
    bar = tqdm(total=total, unit="img", desc="eval", file=sys.stderr, dynamic_ncols=True,
               disable=not (opts.progress and total))

    def on_result(result: ItemResult) -> None:
        if result.lpips:
            lpips.setdefault(result.key, {}).update(result.lpips)
        for path, reason in result.bad:  # named here: a Ray actor's warnings would be lost
            folders.report_unreadable(path, reason)
        bar.update(result.images)

    try:
        if shard is not None:
            worker = EvalWorker(job, nets, inception, lpips_net, opts.device)
            moments = _run_shard(worker, items, shard, on_result)
            return moments, (merge_lpips(shard, items, lpips) if lpips_net is not None else {})
        if opts.num_workers == 0:
            worker = EvalWorker(job, nets, inception, lpips_net, opts.device)
            for item in items:
                on_result(worker.run(item))
            return worker.results(), lpips
        from .eval_ray import run_ray

        return run_ray(job, items, (nets, inception, lpips_net), opts, on_result), lpips
    finally:
        bar.close()


def _check_modes(modes: Sequence[str]) -> None:
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"eval mode: must be one of {', '.join(MODES)}, got {mode!r}")


def _real_status(cache: dict[int, str], missing: set[int], shard: Shard | None) -> dict[int, str]:
    """The targets whose real statistics are computed: this process's misses, or with a shard
    those of any rank (all ranks compute them together)."""
    if shard is None:
        return cache
    agreed = agree_on_misses(shard, [t in missing for t in cache])
    return {t: "computed" if miss else "hit" for t, miss in zip(cache, agreed)}


def _check_memory(cfg: ExperimentConfig, device: str, kept_outputs: int) -> None:
    """One item's generator batch and one Inception batch against the device's free memory."""
    check_memory(device, decode_bytes(cfg.model.img_size),
                 inception_bytes(cfg.eval.batch_size) + generator_bytes(cfg, kept_outputs),
                 f"evaluation at model.img_size {cfg.model.img_size} with eval.batch_size "
                 f"{cfg.eval.batch_size} and data.val_batch_size {cfg.data.val_batch_size}",
                 "lower eval.batch_size or data.val_batch_size")


def _feature_networks(weights: FeatureWeights, device: str, folded: bool, lpips: bool,
                      keep: bool) -> tuple[nn.Module, nn.Module | None]:
    """Inception and (for LPIPS) AlexNet: the process's cached ones, or with keep=False new ones
    that nothing references once the evaluation returns (EvalOptions.keep_networks)."""
    if keep:
        return (fidlib.cached_inception(weights, device, folded),
                lpipslib.cached_lpips(weights, device) if lpips else None)
    return (fidlib.build_inception(weights, device, folded),
            lpipslib.build_lpips(weights, device) if lpips else None)


def collect(nets_ema: Networks, cfg: ExperimentConfig, *, modes: Sequence[str],
            weights: FeatureWeights, opts: EvalOptions = EvalOptions(),
            max_sources: int | None = None, num_outs: int | None = None, lpips: bool = True
            ) -> tuple[Collected, EvalData, list[Task]]:
    """Generate, extract and sum; real statistics come from the cache when it has them.

    opts.shard: this process is one rank of a group that calls collect together; it runs a
    strided share of the items (real ones too, when a rank lacks them in its cache) and every
    rank gets the whole result (metrics/sharding.py).
    """
    _check_modes(modes)
    num_outs = num_outs or cfg.eval.num_outs_per_domain
    lpips = lpips and num_outs >= 2
    if opts.num_workers == 0:  # Ray actors check nothing here: their nodes' memory is theirs
        _check_memory(cfg, opts.device, num_outs if lpips else 1)
    data = EvalData.discover(*resolve_dirs(cfg), num_domains=cfg.model.num_domains,
                             img_size=cfg.model.img_size,
                             labels=(cfg.data.train_labels, cfg.data.val_labels))
    tasks = make_tasks(data.domains)
    job = Job(cfg, data, tuple(tasks), num_outs, cfg.train.seed)

    nets_device = opts.device if opts.num_workers == 0 else "cpu"  # Ray gets CPU state dicts
    folded = cfg.eval.inception_folded
    inception, lpips_net = _feature_networks(weights, nets_device, folded, lpips,
                                             opts.keep_networks)

    cache_root = Path(opts.cache_dir) if opts.cache_dir is not None else default_cache_dir()
    real, cache, cache_paths = _cached_real(data, tasks, cfg.model.img_size,
                                              fidlib.inception_id(weights, folded), cache_root)
    missing = {t for t, s in cache.items() if s == "computed"}  # from this process's cache
    cache = _real_status(cache, missing, opts.shard)
    items = plan_items(job, modes, [t for t, s in cache.items() if s == "computed"], max_sources)
    moments, lpips_values = _run_items(job, items, nets_ema, inception, lpips_net, opts)
    for trg, status in cache.items():
        if status == "computed":
            real[trg] = moments.pop(("real", trg))
            if real[trg].n < 2:
                raise ConfigError(f"{data.domains[trg]}: {real[trg].n} of {len(data.train[trg])} "
                                  "train images could be read (the others are named above); "
                                  "FID needs at least 2")
            if trg in missing:  # each rank fills its own cache (other nodes have others)
                real[trg].save(cache_paths[trg])
    return Collected(real, moments, lpips_values, cache), data, tasks


def _mean(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else float(np.mean(values))


@dataclass
class ModeResults:
    """One mode's values (official keys) and the notes its JSON files carry."""

    fid: dict[str, Any] = field(default_factory=dict)
    kid: dict[str, Any] = field(default_factory=dict)  # KID_{mode}/{task}, KID_std_{mode}/{task}
    lpips: dict[str, Any] = field(default_factory=dict)
    fid_notes: list[str] = field(default_factory=list)
    lpips_notes: list[str] = field(default_factory=list)


def _mode_results(m: str, tasks: Sequence[Task], collected: Collected, cfg: ExperimentConfig,
                  quick: bool) -> ModeResults:
    """FID (and KID, LPIPS unless quick) of every task of mode m, with their means."""
    r = ModeResults()
    lpips_note = lpipslib.size_warning(cfg.model.img_size)
    r.lpips_notes = [lpips_note] if lpips_note else []
    for t, task in enumerate(tasks):
        real, fake = collected.real[task.trg], collected.fake[(m, t)]
        result = fidlib.fid_from_moments(real, fake, method=cfg.eval.frechet_method)
        r.fid[f"FID_{m}/{task.name}"] = result.value
        r.fid_notes += [f"{task.name}: {w}" for w in result.warnings]
        if not quick:
            r.kid.update(_kid(real, fake, cfg, f"KID_{m}/{task.name}", r.fid_notes))
        per_source = collected.lpips.get((m, t))
        r.lpips[f"LPIPS_{m}/{task.name}"] = (float(np.mean(list(per_source.values())))
                                             if per_source else None)
    r.fid[f"FID_{m}/mean"] = _mean(list(r.fid.values()))
    r.lpips[f"LPIPS_{m}/mean"] = _mean(list(r.lpips.values()))
    if quick:
        r.lpips = {}
    elif r.lpips[f"LPIPS_{m}/mean"] is None:
        r.lpips_notes.append("LPIPS needs at least 2 outputs per source "
                             "(eval.num_outs_per_domain)")
    if r.kid:
        r.kid[f"KID_{m}/mean"] = _mean([v for k, v in r.kid.items()
                                        if k.startswith("KID_") and "_std_" not in k])
    return r


def _json_files(r: ModeResults, m: str, step: int, out_dir: Path, weights: FeatureWeights,
                cfg: ExperimentConfig, real_stats: dict[str, str]
                ) -> list[tuple[Path, dict[str, Any]]]:
    """FID_{step:05d}_{m}.json and LPIPS_{step:05d}_{m}.json: the official names and keys, plus
    feature_weights, the real-statistics cache status and any warnings."""
    common = {"feature_weights": weights.kind, "step": step, "mode": m}
    return [(out_dir / result_file("FID", step, m),
             {**r.fid, **r.kid, **common, "weights_id": weights.id("inception"),
              "frechet_method": cfg.eval.frechet_method, "real_stats": real_stats,
              "warnings": r.fid_notes}),
            (out_dir / result_file("LPIPS", step, m),
             {**r.lpips, **common, "weights_id": weights.id("alexnet"),
              "warnings": r.lpips_notes})]


def evaluate(nets_ema: Networks, cfg: ExperimentConfig, *, step: int, mode: str = "latent",
             out_dir: str | Path | None = None, quick: bool = False,
             opts: EvalOptions = EvalOptions()) -> dict[str, float | None]:
    """FID and LPIPS per task and their means, with the official keys ('FID_latent/cat2dog').

    mode: "latent", "reference" or "both". With out_dir, writes FID_{step:05d}_{mode}.json and
    LPIPS_{step:05d}_{mode}.json (the official names and keys, plus feature_weights, the elapsed
    seconds, the real-statistics cache status and any warnings). opts: where and how it runs
    (EvalOptions: in this process or on Ray actors, the device, the cache, a shard of a group).
    quick: the fid_quick sizes (eval.quick_sources sources per task, eval.quick_outs outputs,
    no LPIPS). With a shard every rank returns the results, rank 0 alone writes the files.
    """
    start = time.perf_counter()
    modes = MODES if mode == "both" else (mode,)
    weights = FeatureWeights.from_config(cfg.eval, need=("inception",) if quick else
                                         ("inception", "alexnet"))
    collected, data, tasks = collect(
        nets_ema, cfg, modes=modes, weights=weights, opts=opts,
        max_sources=cfg.eval.quick_sources if quick else None,
        num_outs=cfg.eval.quick_outs if quick else None, lpips=not quick)
    if opts.shard is not None and opts.shard.rank != 0:
        out_dir = None
    results: dict[str, float | None] = {}
    files: list[tuple[Path, dict[str, Any]]] = []
    real_stats = {data.domains[d]: s for d, s in collected.cache.items()}
    for m in modes:
        r = _mode_results(m, tasks, collected, cfg, quick)
        results.update({**r.fid, **r.kid, **r.lpips})
        if out_dir is not None and not quick:
            files += _json_files(r, m, step, Path(out_dir), weights, cfg, real_stats)
    elapsed = time.perf_counter() - start
    for path, payload in files:
        payload["elapsed_seconds"] = round(elapsed, 3)  # the whole call (all modes together)
        atomic_write_json(path, payload)
    return results


def _kid(real: fidlib.FeatureMoments, fake: fidlib.FeatureMoments, cfg: ExperimentConfig,
         key: str, notes: list[str]) -> dict[str, float | None]:
    """KID mean and std for one task from the feature rows (same Inception features as FID)."""
    from . import kid as kidlib

    if real.rows is None or fake.rows is None or min(real.n, fake.n) < 2:
        notes.append(f"{key}: not computed (needs the feature rows of at least 2 images per set)")
        return {key: None}
    result = kidlib.kid(real.rows.numpy(), fake.rows.numpy(), subsets=cfg.eval.kid_subsets,
                        subset_size=cfg.eval.kid_subset_size, seed=cfg.train.seed)
    std_key = key.replace("KID_", "KID_std_", 1)
    return {key: result.mean, std_key: result.std}


def fid_quick(nets_ema: Networks, cfg: ExperimentConfig, *, num_workers: int = 0,
              device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
              progress: bool = False, shard: tuple[int, int] | None = None,
              reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
              keep_networks: bool = True) -> float:
    """Mean latent FID over tasks from eval.quick_sources sources x eval.quick_outs outputs.

    For training curves and Tune trials: cheap, comparable between runs of one experiment, not
    with the paper's numbers (few images bias FID upward).

    shard=(rank, world) with reduce (the elementwise sum of a CPU tensor over the world's ranks,
    e.g. an all-reduce): every rank of the world calls this together, runs a strided share of the
    sources (and of the real images not in its cache), and gets the value of one process, up to
    the order of float64 additions (metrics/sharding.py).

    keep_networks=False (training workers): the feature networks are built for this call and
    dropped after it, and the freed memory goes back to the system (memory.give_back), instead
    of staying in the process until the next evaluation; the value is the same.
    """
    opts = EvalOptions(num_workers, str(device), cache_dir, progress,
                       shard=Shard.of(shard, reduce), keep_networks=keep_networks)
    try:
        results = evaluate(nets_ema, cfg, step=0, mode="latent", quick=True, opts=opts)
    finally:
        if not keep_networks:
            give_back(device)
    return float(results["FID_latent/mean"])


__all__ = ["evaluate", "fid_quick", "collect", "Collected", "EvalOptions", "Shard", "EvalData", "EvalWorker",
           "Task", "Item", "Job", "make_tasks", "seeded_generator", "source_indices", "chunks",
           "MODES"]
