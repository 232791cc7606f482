"""The training input pipeline: balanced sources, reference pairs and the official augmentation.

How a run's data is drawn (the same rules in Ray Data and in the in-process ``local_batches``):

- Images are put once in a canonical order that spreads every domain evenly (``spread_order``) and
  cut into groups of ``GROUP_SIZE`` (a Parquet row group in prepared shards, a run of files in a
  folder tree). Each epoch a seeded permutation deals the groups into chunks of a few groups.
- One chunk is one Ray Data task and one output block: it reads and decodes its images once, then
  draws as many training rows as it has images. Per row ``y_src`` and ``y_ref`` are uniform over the
  domains (the official balanced sampler), ``x_src`` is a random image of ``y_src``, and ``x_ref``,
  ``x_ref2`` are two different random images of ``y_ref``. Pairs are new every epoch (the official
  code fixes them once at start). Each use of an image gets its own official augmentation.
- Every random choice comes from (seed, epoch, chunk), so the rows do not depend on which process
  runs a task. With ``preserve_order`` (``train_data_config``) Ray's split hands the blocks to
  the workers deterministically, whole: workers see disjoint chunks, hence disjoint images, and the
  same seed and worker count give the same batches.
- Images leave the tasks as uint8 (4x less to move than float); the worker scales them to
  [-1, 1] on its device and draws ``z_trg`` / ``z_trg2`` itself.

A bad file (empty, truncated, not an image, unreadable) is skipped and reported once with its path:
files that fail a header probe before the run starts, files that fail the full decode by the task
that meets them. A domain left with no readable image stops the run at start.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
from PIL import Image

from stargan_ray.config import SYNTHETIC
from stargan_ray.data import folders
from stargan_ray.data.folders import BadImage, DataError, DomainMismatchError

if TYPE_CHECKING:
    import ray.data
    import torch

    from stargan_ray.config import ExperimentConfig
    from stargan_ray.engine import Batch

log = logging.getLogger("stargan_ray.data")

GROUP_SIZE = 64  # images per group: the unit a task reads (a Parquet row group in shards)
ORDER_SEED = 0  # fixed, so `prepare` writes shards in the order the folder pipeline uses
MIN_PER_DOMAIN = 4  # chunks are sized so each domain expects at least this many images
CHUNK_OUTPUT_BYTES = 64 << 20  # soft cap on one chunk's output block
LOAD_SCALE = 1.2  # decoded images keep a shorter side of 1.2 x img_size (see load_size)
CROP_SCALE = (0.8, 1.0)  # official RandomResizedCrop
CROP_RATIO = (0.9, 1.1)
IMAGE_COLUMNS = ("x_src", "x_ref", "x_ref2")


# ---------------------------------------------------------------- canonical order and chunks


def spread_order(labels: np.ndarray, seed: int = ORDER_SEED) -> np.ndarray:
    """A permutation that shuffles each domain and interleaves domains in proportion.

    Image j of a domain with n images lands near position (j + u) / n of the whole order, so any
    run of the order holds every domain in its global share (small domains included).
    """
    rng = np.random.default_rng([seed, 0x5EED])
    order, keys = [], []
    for label in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == label)
        order.append(rng.permutation(members))
        n = max(len(members), 1)
        keys.append((np.arange(len(members)) + rng.uniform(0, 1, len(members))) / n)
    order_arr, keys_arr = np.concatenate(order), np.concatenate(keys)
    return order_arr[np.argsort(keys_arr, kind="stable")]


@dataclass(frozen=True)
class Plan:
    """Which groups form which chunk in each epoch."""

    num_groups: int
    groups_per_chunk: int
    seed: int

    @property
    def chunks_per_epoch(self) -> int:
        return math.ceil(self.num_groups / self.groups_per_chunk)

    def chunk(self, epoch: int, index: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 0xC4A]).permutation(self.num_groups)
        return perm[index * self.groups_per_chunk:(index + 1) * self.groups_per_chunk]


def make_plan(counts: list[int], group_size: int, img_size: int, seed: int,
              num_workers: int = 1) -> Plan:
    """Chunk size: every domain expects MIN_PER_DOMAIN images per chunk (first), each worker
    gets about two chunks per epoch, and a chunk's output block stays near CHUNK_OUTPUT_BYTES."""
    total, smallest = sum(counts), min(counts)
    num_groups = math.ceil(total / group_size)
    for_domains = math.ceil(MIN_PER_DOMAIN * total / (smallest * group_size))
    row_bytes = len(IMAGE_COLUMNS) * 3 * img_size * img_size
    for_bytes = max(1, min(4, CHUNK_OUTPUT_BYTES // (row_bytes * group_size)))
    for_workers = max(1, num_groups // (2 * num_workers))
    groups = max(for_domains, min(for_bytes, for_workers))
    return Plan(num_groups, min(num_groups, groups), seed)


# ---------------------------------------------------------------- image tables


@dataclass(frozen=True)
class ImageTable:
    """The images of one split in canonical order, and how to read a group of them.

    kind "folders": files under a root; "memory": the same with the bytes held here (the small
    synthetic set, which then needs no storage shared across nodes); "shards": prepared Parquet.
    """

    kind: str
    root: str
    domains: tuple[str, ...]
    labels: np.ndarray  # (N,) int64, canonical order
    group_size: int
    paths: tuple[str, ...] = ()
    blobs: tuple[bytes, ...] = ()
    shard_files: tuple[tuple[str, int], ...] = ()  # (file path in fs, row groups), in order

    @property
    def counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.domains)).tolist()

    @property
    def num_groups(self) -> int:
        return math.ceil(len(self.labels) / self.group_size)

    def read_group(self, group: int) -> list[tuple[int, int, "bytes | BadImage", str]]:
        """[(index, label, encoded bytes or the read error, path)] of one group."""
        lo, hi = group * self.group_size, min((group + 1) * self.group_size, len(self.labels))
        if self.kind == "shards":
            return self._read_row_group(group, lo)
        if self.kind == "memory":
            return [(i, int(self.labels[i]), self.blobs[i], self.paths[i]) for i in range(lo, hi)]
        fs = folders.filesystem(self.root)[0]
        rows = []
        for i in range(lo, hi):
            try:
                data: bytes | BadImage = folders.read_bytes(fs, self.paths[i])
            except OSError as err:  # vanished or unreadable since the probe
                data = BadImage(f"cannot read: {type(err).__name__}: {err}".splitlines()[0])
            rows.append((i, int(self.labels[i]), data, self.paths[i]))
        return rows

    def _read_row_group(self, group: int, first_index: int) -> list[tuple[int, int, bytes, str]]:
        import pyarrow.parquet as pq

        fs = folders.filesystem(self.root)[0]
        for path, row_groups in self.shard_files:
            if group < row_groups:
                with fs.open_input_file(path) as f:
                    table = pq.ParquetFile(f).read_row_group(group,
                                                             columns=["image", "domain", "path"])
                break
            group -= row_groups
        else:  # pragma: no cover - num_groups is derived from shard_files
            raise IndexError(group)
        cols = table.to_pydict()
        return [(first_index + k, int(d), img, p)
                for k, (img, d, p) in enumerate(zip(cols["image"], cols["domain"], cols["path"]))]


def is_shards(root: str) -> bool:
    import pyarrow.fs as pafs

    from stargan_ray.data.prepare import MANIFEST

    fs, base = folders.filesystem(root)
    return fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File


def open_table(root: str, num_domains: int | None, *, preload: bool = False,
               probe: bool = True) -> tuple[ImageTable, list[tuple[str, str]]]:
    """The ImageTable of a folder tree or shard set, and the files that failed the probe."""
    if is_shards(root):
        from stargan_ray.data.prepare import read_manifest

        manifest = read_manifest(root, num_domains)
        fs, base = folders.filesystem(root)
        files = tuple((f"{base}/{f['path']}", int(f["row_groups"])) for f in manifest["files"])
        labels = np.asarray(manifest["labels"], np.int64)
        return ImageTable("shards", root, tuple(manifest["domains"]), labels,
                          int(manifest["group_size"]), shard_files=files), []
    folder = folders.scan(root, num_domains)
    bad: list[tuple[str, str]] = []
    if probe:
        folder, bad = folders.drop_unreadable(folder)
    order = spread_order(folder.labels)
    paths = tuple(folder.paths[i] for i in order)
    blobs = ()
    if preload:
        fs = folder.fs()
        blobs = tuple(folders.read_bytes(fs, p) for p in paths)
    kind = "memory" if preload else "folders"
    return ImageTable(kind, root, folder.domains, folder.labels[order], GROUP_SIZE, paths=paths,
                      blobs=blobs), bad


def domains_of(root: str, num_domains: int | None) -> tuple[str, ...]:
    if is_shards(root):
        from stargan_ray.data.prepare import read_manifest

        return tuple(read_manifest(root, num_domains)["domains"])
    return folders.scan(root, num_domains).domains


def open_train_table(cfg: "ExperimentConfig", probe: bool = True
                     ) -> tuple[ImageTable, list[tuple[str, str]]]:
    """Resolve, validate (train and val) and open the training images of an experiment."""
    from stargan_ray.data.synthetic import resolve_data_dirs

    train_dir, val_dir = resolve_data_dirs(cfg)
    n = cfg.model.num_domains
    table, bad = open_table(train_dir, n, preload=cfg.data.train_dir == SYNTHETIC, probe=probe)
    val_domains = domains_of(val_dir, n)
    if val_domains != table.domains:
        raise DomainMismatchError(f"{val_dir}: val domains ({', '.join(val_domains)}) differ from"
                                  f" train domains in {train_dir} ({', '.join(table.domains)})")
    return table, bad


# ---------------------------------------------------------------- augmentation


def load_size(img_size: int) -> int:
    """Shorter side images are reduced to on decode (never enlarged).

    The smallest official crop (area 0.8, aspect 1.1) spans 0.85 of a side, so from 1.2 x img_size
    every crop is still reduced to img_size, never enlarged: nothing the output can show is lost,
    while resizing a 1024 px original three times per use would cost 16x the pixels.
    """
    return math.ceil(img_size * LOAD_SCALE)


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop with area scale CROP_SCALE, aspect CROP_RATIO.

    The sampling rule of torchvision's RandomResizedCrop (the official loader's), drawn from rng.
    """
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height  # fallback: the largest centred crop within the ratio range
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def augment(image: Image.Image, rng: np.random.Generator, img_size: int,
            randcrop_prob: float) -> np.ndarray:
    """Official training transform up to ToTensor: (3, S, S) uint8.

    With probability randcrop_prob a random resized crop, then resize to img_size (bilinear,
    antialiased as torchvision does for PIL images), then a horizontal flip with probability 0.5.
    """
    size = (img_size, img_size)
    if rng.random() < randcrop_prob:
        image = image.resize(size, Image.Resampling.BILINEAR, box=crop_box(*image.size, rng))
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def to_unit_range(x: "torch.Tensor") -> "torch.Tensor":
    """uint8 [0, 255] -> float32 [-1, 1]: ToTensor then Normalize(0.5, 0.5)."""
    return x.float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- one chunk -> training rows


def chunk_rows(table: ImageTable, plan: Plan, epoch: int, index: int, img_size: int,
               randcrop_prob: float, report: Callable[[list[tuple[str, str]]], Any] | None = None
               ) -> dict[str, np.ndarray]:
    """Decode one chunk's images once and draw its training rows (see the module docstring)."""
    rng = np.random.default_rng([plan.seed, epoch, index, 0xDA7A])
    images: list[Image.Image] = []
    labels, ids, bad = [], [], []
    for group in plan.chunk(epoch, index):
        for i, label, data, path in table.read_group(int(group)):
            try:
                if isinstance(data, BadImage):
                    raise data
                images.append(folders.decode(data, min_side=load_size(img_size)))
            except BadImage as err:
                bad.append((path, str(err)))
                continue
            labels.append(label)
            ids.append(i)
    if bad and report is not None:
        report(bad)
    labels_arr, ids_arr = np.asarray(labels, np.int64), np.asarray(ids, np.int64)
    members = [np.flatnonzero(labels_arr == d) for d in range(len(table.domains))]
    sources = [d for d, m in enumerate(members) if len(m) >= 1]
    refs = [d for d, m in enumerate(members) if len(m) >= 2]
    n = len(images)
    if not refs:  # a chunk of nothing but bad files; the run goes on with the next chunk
        return _empty_rows(img_size)

    y_src = rng.choice(sources, size=n)
    y_ref = rng.choice(refs, size=n)
    i_src = np.empty(n, np.int64)
    i_ref = np.empty(n, np.int64)
    i_ref2 = np.empty(n, np.int64)
    for row in range(n):
        pool = members[y_src[row]]
        i_src[row] = pool[rng.integers(len(pool))]
        pool = members[y_ref[row]]
        a = rng.integers(len(pool))
        b = (a + 1 + rng.integers(len(pool) - 1)) % len(pool)  # any other image of the domain
        i_ref[row], i_ref2[row] = pool[a], pool[b]

    out = {}
    for column, picks in zip(IMAGE_COLUMNS, (i_src, i_ref, i_ref2)):
        out[column] = np.stack([augment(images[k], rng, img_size, randcrop_prob) for k in picks])
    out.update(y_src=y_src.astype(np.int64), y_ref=y_ref.astype(np.int64),
               i_src=ids_arr[i_src], i_ref=ids_arr[i_ref], i_ref2=ids_arr[i_ref2],
               epoch=np.full(n, epoch, np.int64))
    return out


def _empty_rows(img_size: int) -> dict[str, np.ndarray]:
    out = {c: np.zeros((0, 3, img_size, img_size), np.uint8) for c in IMAGE_COLUMNS}
    out.update({c: np.zeros(0, np.int64) for c in ("y_src", "y_ref", "i_src", "i_ref", "i_ref2",
                                                   "epoch")})
    return out


# ---------------------------------------------------------------- epochs


def epoch_of_step(step: int, batch_size: int, world_size: int, num_images: int) -> int:
    return step * batch_size * world_size // num_images


def epochs_needed(cfg: "ExperimentConfig", world_size: int, start_step: int,
                  num_images: int) -> int:
    """Epochs that cover the remaining steps of all workers, plus one for uneven chunks."""
    rows = max(cfg.train.total_iters - start_step, 1) * cfg.data.batch_size * world_size
    return math.ceil(rows / num_images) + 1


# ---------------------------------------------------------------- bad files across tasks


class BadImageLog:
    """Collects skipped files; logs each path the first time any task meets it.

    Used in-process by local_batches and as a Ray actor (0 CPUs) by the Ray pipeline, so a file
    met again every epoch, or by several tasks, is reported once.
    """

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def report(self, items: list[tuple[str, str]]) -> int:
        for path, reason in items:
            if path not in self.seen:
                self.seen[path] = reason
                logging.getLogger("stargan_ray.data").warning(
                    "skipping unreadable image %s: %s (%d skipped so far)", path, reason,
                    len(self.seen))
        return len(self.seen)

    def summary(self) -> dict[str, str]:
        return dict(self.seen)


# ---------------------------------------------------------------- Ray Data


def _ray_chunk(batch: dict[str, np.ndarray], *, table: ImageTable, plan: Plan, start_epoch: int,
               img_size: int, randcrop_prob: float, bad_log: Any) -> dict[str, np.ndarray]:
    (row,) = batch["id"].tolist()  # one descriptor row per task: (epoch, chunk) flattened
    epoch, index = start_epoch + row // plan.chunks_per_epoch, row % plan.chunks_per_epoch
    report = (lambda items: bad_log.report.remote(items)) if bad_log is not None else None
    return chunk_rows(table, plan, epoch, index, img_size, randcrop_prob, report)


def build_train_dataset(cfg: "ExperimentConfig", num_workers: int = 1, start_step: int = 0, *,
                        seed: int | None = None, bad_log: Any = None,
                        table: ImageTable | None = None) -> "ray.data.Dataset":
    """The Ray Dataset for ``TorchTrainer(datasets={"train": ...})``, built on the driver.

    Folder trees, prepared shards (a folder with manifest.json) and "synthetic" are all accepted
    as ``data.train_dir``. Validates train and val before any worker starts. Covers the epochs of
    steps start_step..train.total_iters for num_workers workers; pass ``train_data_config()`` as
    the trainer's dataset_config so the split is deterministic. ``bad_log`` is a BadImageLog actor
    handle (one is created when None).
    """
    import ray

    seed = cfg.train.seed if seed is None else seed
    bad = []
    if table is None:
        table, bad = open_train_table(cfg)
    if bad_log is None:
        bad_log = ray.remote(num_cpus=0)(BadImageLog).remote()
    if bad:
        bad_log.report.remote(bad)
    size = cfg.model.img_size
    plan = make_plan(table.counts, table.group_size, size, seed, num_workers)
    num_images = len(table.labels)
    start_epoch = epoch_of_step(start_step, cfg.data.batch_size, num_workers, num_images)
    num_tasks = epochs_needed(cfg, num_workers, start_step, num_images) * plan.chunks_per_epoch
    fn = partial(_ray_chunk, table=table, plan=plan, start_epoch=start_epoch, img_size=size,
                 randcrop_prob=cfg.data.randcrop_prob, bad_log=bad_log)
    ds = ray.data.range(num_tasks, override_num_blocks=num_tasks)
    ds = ds.map_batches(fn, batch_size=None, num_cpus=1)
    # One chunk = one block, so Ray's split hands a chunk to exactly one worker.
    ds.context.target_max_block_size = None
    return ds


def ingest_options():
    """Ray Train's default ingest ExecutionOptions with preserve_order on.

    With preserve_order the split assigns blocks in task order (ignoring locality), which makes
    each worker's batches a function of the seed and the worker count.
    """
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def train_data_config(names: tuple[str, ...] = ("train",)):
    """``ray.train.DataConfig`` for ``TorchTrainer(dataset_config=...)``: split the named
    training datasets across workers with ``ingest_options()``."""
    from ray.train import DataConfig

    return DataConfig(datasets_to_split=list(names),
                      execution_options={name: ingest_options() for name in names})


def to_batch(raw: dict[str, "torch.Tensor"], latent_dim: int, seed: int, rank: int, step: int,
             device: "torch.device | str" = "cpu") -> "Batch":
    """A Batch on device from pipeline rows: images to [-1, 1] there, latent codes drawn here.

    z depends only on (seed, rank, step), so a resumed run draws what it would have drawn.
    """
    import torch

    from stargan_ray.engine import Batch

    state = np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    n = raw["y_src"].shape[0]
    z_trg = torch.randn(n, latent_dim, generator=gen)
    z_trg2 = torch.randn(n, latent_dim, generator=gen)
    return Batch(x_src=to_unit_range(raw["x_src"].to(device)), y_src=raw["y_src"].to(device),
                 x_ref=to_unit_range(raw["x_ref"].to(device)),
                 x_ref2=to_unit_range(raw["x_ref2"].to(device)), y_ref=raw["y_ref"].to(device),
                 z_trg=z_trg.to(device), z_trg2=z_trg2.to(device))


def iter_raw_batches(shard: Any, batch_size: int, prefetch_batches: int = 4
                     ) -> Iterator[dict[str, "torch.Tensor"]]:
    """Endless uint8 row batches (with image ids and epoch) from a DataIterator or Dataset."""
    while True:
        got_any = False
        for raw in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, device="cpu",
                                            prefetch_batches=prefetch_batches):
            got_any = True
            yield raw
        if not got_any:
            raise DataError(f"the training dataset produced no batch of {batch_size} rows")
        log.warning("training data ran past its planned epochs; starting over")


def iter_train_batches(shard: Any, cfg: "ExperimentConfig", *, seed: int | None = None,
                       world_rank: int = 0, device: "torch.device | str" = "cpu",
                       start_step: int = 0, prefetch_batches: int = 4) -> Iterator["Batch"]:
    """Endless Batches in a Ray Train worker from ``ray.train.get_dataset_shard("train")``.

    The shard covers the run's planned steps; should it run out, it starts over.
    """
    seed = cfg.train.seed if seed is None else seed
    raws = iter_raw_batches(shard, cfg.data.batch_size, prefetch_batches)
    for step, raw in enumerate(raws, start=start_step):
        yield to_batch(raw, cfg.model.latent_dim, seed, world_rank, step, device)


# ---------------------------------------------------------------- without Ray


def local_raw_batches(cfg: "ExperimentConfig", seed: int | None = None, *, world_rank: int = 0,
                      world_size: int = 1, start_step: int = 0, table: ImageTable | None = None,
                      bad_log: BadImageLog | None = None) -> Iterator[dict[str, "torch.Tensor"]]:
    """Endless uint8 row batches in this process, drawn by the rules of the Ray pipeline.

    With world_size > 1, rank r takes chunks r, r + world_size, ... (Ray's split deals the same
    chunks whole, in the order workers ask for them).
    """
    import torch

    seed = cfg.train.seed if seed is None else seed
    bad_log = bad_log if bad_log is not None else BadImageLog()
    if table is None:
        table, bad = open_train_table(cfg)
        bad_log.report(bad)
    size, batch_size = cfg.model.img_size, cfg.data.batch_size
    plan = make_plan(table.counts, table.group_size, size, seed, world_size)
    epoch = epoch_of_step(start_step, batch_size, world_size, len(table.labels))
    task = epoch * plan.chunks_per_epoch
    buffer = _empty_rows(size)
    while True:
        if task % world_size == world_rank:
            rows = chunk_rows(table, plan, task // plan.chunks_per_epoch,
                              task % plan.chunks_per_epoch, size, cfg.data.randcrop_prob,
                              bad_log.report)
            buffer = {k: np.concatenate([buffer[k], rows[k]]) for k in buffer}
            while len(buffer["y_src"]) >= batch_size:
                yield {k: torch.from_numpy(v[:batch_size]) for k, v in buffer.items()}
                buffer = {k: v[batch_size:] for k, v in buffer.items()}
        task += 1


def local_batches(cfg: "ExperimentConfig", seed: int | None = None, *, world_rank: int = 0,
                  world_size: int = 1, start_step: int = 0, device: "torch.device | str" = "cpu",
                  table: ImageTable | None = None, bad_log: BadImageLog | None = None
                  ) -> Iterator["Batch"]:
    """Endless Batches in this process (no Ray): for unit tests of the core and benchmarks."""
    seed = cfg.train.seed if seed is None else seed
    raws = local_raw_batches(cfg, seed, world_rank=world_rank, world_size=world_size,
                             start_step=start_step, table=table, bad_log=bad_log)
    for step, raw in enumerate(raws, start=start_step):
        yield to_batch(raw, cfg.model.latent_dim, seed, world_rank, step, device)


__all__ = [
    "build_train_dataset", "train_data_config", "ingest_options", "iter_train_batches",
    "iter_raw_batches", "to_batch", "local_batches", "local_raw_batches", "open_train_table",
    "open_table", "ImageTable", "Plan", "make_plan", "spread_order", "chunk_rows", "augment",
    "crop_box", "load_size", "to_unit_range", "BadImageLog", "GROUP_SIZE",
]
