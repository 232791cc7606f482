"""What a run shows in TensorBoard and W&B beyond scalars, and W&B checkpoints as inputs.

- EventWriter: TensorBoard event files with the scalars (plots.ScalarWriter), the sample grids as
  images at their step, and the evaluation numbers.
- CheckpointArtifacts: a run's checkpoints as W&B `model` artifacts (aliases `latest`, `best`;
  step and fid_quick in the metadata), by reference for s3:// and gs:// storage (W&B records the
  URI, no second copy), logged from one background thread so that training never waits.
- EvalDashboards: `stargan-ray eval` results as a W&B Table (one row per mode and task) and as
  TensorBoard scalars at the checkpoint's step.
- checkpoint_source: `wandb://ENTITY/PROJECT/NAME:ALIAS` fetched through the W&B API.

Nothing here may fail a training run: every W&B or TensorBoard error is one warning, and what
follows carries on without it. Fetching a checkpoint is the exception: it is what the user asked
for, so it fails with one line (UserError).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UserError
from .plots import ScalarWriter, _warn_once
from .storage import is_uri, split_query

log = logging.getLogger(__name__)
ARTIFACT_TYPE = "model"
CHECKPOINT_FILE = "checkpoint.pt"  # as checkpoint.CHECKPOINT_FILE (not imported: that is torch)
REFERENCE_SCHEMES = ("s3", "gs")  # storage W&B records by reference (its handlers read them)
WANDB_SCHEME = "wandb://"
TABLE_COLUMNS = ["mode", "source", "target", "FID", "KID", "LPIPS"]
_WANDB_URI = re.compile(r"wandb://([^/:]+)/([^/:]+)/([^/:]+):([^/:]+)")


# ---------------------------------------------------------------- TensorBoard


class EventWriter(ScalarWriter):
    """ScalarWriter with images: the sample grids as TensorBoard images beside the scalars."""

    def add_images(self, step: int, images: dict[str, Any], prefix: str = "samples/") -> None:
        """Each PIL image as the image `{prefix}{name}` at step (HWC, uint8)."""
        def write(writer) -> None:
            for name, image in images.items():
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
                writer.add_image(f"{prefix}{name}", pixels, step, dataformats="HWC")

        self._write(step, write, "TensorBoard images")


# ---------------------------------------------------------------- W&B checkpoint artifacts


def artifact_name(run_name: str) -> str:
    """The W&B artifact of a run's checkpoints: model-<run name>, in W&B's allowed characters."""
    return "model-" + re.sub(r"[^A-Za-z0-9_.-]", "-", run_name)


def checkpoint_entry(checkpoint_dir: str) -> tuple[str, str | None]:
    """(what to add, how) for a checkpoint folder: ("s3://.../checkpoint.pt", "reference") for
    object storage W&B reads, (local file, "file") for a local folder, (location, None) when W&B
    can neither copy nor reference it. A URI's query (pyarrow's endpoint_override) is left out:
    W&B takes the endpoint from AWS_S3_ENDPOINT_URL."""
    if not is_uri(checkpoint_dir):
        return str(Path(checkpoint_dir) / CHECKPOINT_FILE), "file"
    base = split_query(checkpoint_dir)[0].rstrip("/")
    if base.split("://", 1)[0] in REFERENCE_SCHEMES:
        return f"{base}/{CHECKPOINT_FILE}", "reference"
    return base, None


class CheckpointArtifacts:
    """Logs checkpoints of one W&B run as versions of one `model` artifact, in the background.

    log() only queues; one daemon thread builds each artifact (hashing a local file takes
    seconds for a large checkpoint) and hands it to W&B, whose own service uploads it. close()
    waits for the queue, so that wandb.finish() sees every artifact.
    """

    def __init__(self, run, run_name: str, metadata: dict[str, Any] | None = None) -> None:
        self.run, self.name = run, artifact_name(run_name)
        self.metadata = dict(metadata or {})
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def log(self, checkpoint_dir: str, step: int, aliases: Sequence[str],
            fid_quick: float | None = None) -> None:
        """Queue the checkpoint folder of step (its checkpoint.pt) with aliases."""
        with self._lock:  # the loop and the checkpoint upload thread both log
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="wandb-artifacts",
                                                daemon=True)
                self._thread.start()
        self._queue.put((checkpoint_dir, step, tuple(aliases), fid_quick))

    def close(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._log_one(*item)
            except Exception as err:  # a missing file, an unreadable bucket: keep training
                _warn_once("W&B checkpoint artifact", err)

    def _log_one(self, checkpoint_dir: str, step: int, aliases: tuple[str, ...],
                 fid_quick: float | None) -> None:
        import wandb

        target, how = checkpoint_entry(checkpoint_dir)
        if how is None:
            raise ValueError(f"{checkpoint_dir}: W&B can neither copy nor reference this storage")
        score = None if fid_quick is None or not math.isfinite(fid_quick) else float(fid_quick)
        artifact = wandb.Artifact(self.name, type=ARTIFACT_TYPE, metadata={
            **self.metadata, "step": step, "fid_quick": score, "checkpoint": checkpoint_dir})
        if how == "reference":  # W&B keeps the URI; the bucket holds the only copy
            artifact.add_reference(target, name=CHECKPOINT_FILE, checksum=False)
        else:
            artifact.add_file(target, name=CHECKPOINT_FILE)
        self.run.log_artifact(artifact, aliases=list(aliases))


# ---------------------------------------------------------------- evaluation results


def task_rows(results: dict[str, float | None], domains: Sequence[str]) -> list[list[Any]]:
    """One row per (mode, task) of evaluate()'s results, in the official task order:
    [mode, source, target, FID, KID, LPIPS] (None where a metric was not computed)."""
    rows = []
    for mode in sorted({k.split("/", 1)[0].split("_", 1)[1] for k in results
                        if k.startswith("FID_")}):
        for trg in domains:
            for src in domains:
                task = f"{src}2{trg}"
                if src == trg or f"FID_{mode}/{task}" not in results:
                    continue
                rows.append([mode, src, trg, *(results.get(f"{metric}_{mode}/{task}")
                                               for metric in ("FID", "KID", "LPIPS"))])
    return rows


def _numbers(results: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in results.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


class EvalDashboards:
    """Where `stargan-ray eval` shows its numbers besides the JSON files: TensorBoard events in
    out_dir (scalars at the checkpoint's step) and, when W&B is on, one W&B run (job_type eval)
    with a table per step."""

    def __init__(self, out_dir: str | Path, config: dict[str, Any], name: str,
                 wandb_mode: str | None) -> None:
        self.events = EventWriter(out_dir)
        self.run = None
        if wandb_mode in (None, "disabled"):
            return
        try:
            import wandb

            self.run = wandb.init(
                mode=wandb_mode, project=os.environ.get("WANDB_PROJECT", "stargan-ray"),
                job_type="eval", name=name, dir=str(out_dir), config=config,
                settings=wandb.Settings(silent=True, console="off"))
        except Exception as err:  # the numbers are in the JSON files already
            log.warning("W&B off for this evaluation: %s", err)
            self.run = None

    def add(self, step: int, results: dict[str, float | None], domains: Sequence[str]) -> None:
        self.events.add_scalars(step, _numbers(results))
        if self.run is None:
            return
        try:
            import wandb

            table = wandb.Table(columns=TABLE_COLUMNS, data=task_rows(results, domains))
            means = {k: v for k, v in _numbers(results).items() if k.endswith("/mean")}
            self.run.log({"eval/tasks": table, **means}, step=step)
        except Exception as err:
            log.warning("W&B evaluation table not logged: %s", err)

    def close(self) -> None:
        self.events.close()
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as err:
                log.warning("W&B finish failed: %s", err)


# ---------------------------------------------------------------- wandb:// checkpoints


def parse_wandb_uri(uri: str) -> tuple[str, str, str, str]:
    """(entity, project, name, alias) of wandb://ENTITY/PROJECT/NAME:ALIAS."""
    match = _WANDB_URI.fullmatch(uri)
    if not match:
        raise UserError(f"--checkpoint {uri}: expected wandb://ENTITY/PROJECT/NAME:ALIAS, e.g. "
                        "wandb://me/stargan-ray/model-afhq:best")
    return match.groups()


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def checkpoint_source(location: str | None, *, keep_references: bool = False) -> str | None:
    """location unchanged, or the checkpoint file of a wandb:// artifact.

    The artifact is downloaded into $STARGAN_RAY_CACHE/wandb/ENTITY/PROJECT/NAME/VERSION (kept:
    a second use does not download again). keep_references: an artifact that only references
    an s3:// / gs:// object gives that URI instead (Serve replicas on other nodes read it).
    """
    if location is None or not str(location).startswith(WANDB_SCHEME):
        return location
    entity, project, name, alias = parse_wandb_uri(str(location))
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise UserError(f"--checkpoint {location}: W&B is {mode} (WANDB_MODE={mode}); fetching "
                        "an artifact needs the W&B server: unset WANDB_MODE, or download it "
                        "where W&B is reachable (`wandb artifact get`) and pass the file")
    try:
        import wandb

        artifact = wandb.Api(timeout=30).artifact(f"{entity}/{project}/{name}:{alias}")
        entry = artifact.manifest.entries.get(CHECKPOINT_FILE)
        if entry is None:
            raise ValueError(f"the artifact has no {CHECKPOINT_FILE} (it holds "
                             f"{', '.join(sorted(artifact.manifest.entries)) or 'nothing'})")
        if keep_references and entry.ref and entry.ref.split("://", 1)[0] in REFERENCE_SCHEMES:
            return entry.ref
        from .data.synthetic import cache_root

        root = cache_root() / "wandb" / entity / project / name / artifact.version
        folder = artifact.download(root=str(root))
    except UserError:
        raise
    except Exception as err:  # no key, no server, no such artifact: one line, not a traceback
        raise UserError(f"--checkpoint {location}: cannot fetch the W&B artifact: "
                        f"{_one_line(err)[:300]}") from None
    return str(Path(folder) / CHECKPOINT_FILE)

