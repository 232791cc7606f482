"""What a training run shows: console lines, metrics.jsonl, W&B, TensorBoard, events. It only logs:
the training loop makes the sample grids (samples.py) and the quick evaluation (quick_eval.py) and
hands them over.

Only rank 0 writes; every method may be called on every rank. W&B runs offline unless configured
and never fails or delays a run: an online run whose server cannot be reached is logged offline
instead (one console line says how to upload it), and an error while logging turns W&B off with
one warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from ..config import ExperimentConfig
from ..storage import basename

log = logging.getLogger(__name__)
# Before an online W&B run: how long a TCP connection to the server (or its proxy) may take to open.
# Without this check an unreachable server held the first training step for wandb.init's whole
# init_timeout (90 s) and then W&B was off, with nothing kept of the run.
WANDB_PROBE_TIMEOUT_S = 5.0
# wandb.init's own limit once the host answered (a server that accepts connections but does not
# respond); then the run is logged offline. wandb's default is 90 s.
WANDB_INIT_TIMEOUT_S = 30.0
URGENT_EVENTS = ("preemption", "stopped")  # uploaded at once on a URI run folder


def console(line: str) -> None:
    """Print one line to the process's stdout, once.

    Ray Train workers patch print to send lines to the root logger and, when sys.stdout has been
    replaced (it is, in Ray workers), to the original print as well: every line twice. A line
    written to the real stdout skips the patch.
    """
    print(line, file=sys.__stdout__, flush=True)


def local_run_dir(run_dir: str) -> Path:
    """Where the records are written: the run folder itself when local, else a local folder
    whose files records.RecordSync uploads to the run folder."""
    if "://" in run_dir:
        return Path("runs_local") / basename(run_dir)  # a URI's query left out
    return Path(run_dir)


class RunLogger:
    """The run's records. run_name names the W&B run (its id derives from it, so a resumed run
    continues it); wandb: online | offline | disabled, None for WANDB_MODE or offline."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str, *, run_name: str,
                 wandb: str | None = None, wandb_group: str | None = None, rank: int = 0) -> None:
        self.cfg, self.rank = cfg, rank
        self.run_dir = local_run_dir(run_dir)
        self.wandb = None
        self._tb = None  # TensorBoard event files (dashboards.EventWriter), rank 0
        self._artifacts = None  # checkpoints as W&B artifacts (dashboards.CheckpointArtifacts)
        self._unplotted = False  # metrics logged since plots/losses.png was last drawn
        self._wandb_step = 0  # the latest step logged to W&B
        self._wandb_evals: list[dict[str, Any]] = []  # evaluations waiting for a W&B step
        self._wandb_eval_step = -1  # the W&B step holding the latest evaluation
        self.records = None  # records.RecordSync: uploads for a URI run folder (rank 0)
        if rank != 0:
            return
        (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
        from ..dashboards import CheckpointArtifacts, EventWriter
        from .records import RecordSync

        # A URI run folder: the earlier records first (appended to), then uploads as they change
        self.records = RecordSync.start(run_dir, self.run_dir)

        self._tb = EventWriter(self.run_dir)
        self._init_wandb(wandb, run_name, wandb_group)
        if self.wandb is not None:
            run = self.wandb
            _quietly(lambda: run.define_metric("fid_quick", step_metric="eval_step"))
            self._artifacts = CheckpointArtifacts(self.wandb, run_name,
                                                  {"experiment": self.cfg.name})

    # ------------------------------------------------------------ W&B

    def _init_wandb(self, mode: str | None, run_name: str, group: str | None) -> None:
        mode = mode or os.environ.get("WANDB_MODE") or "offline"
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError as err:
            log.warning("W&B disabled for this run: %s", err)
            return
        run_args = dict(
            project=os.environ.get("WANDB_PROJECT", "stargan-ray"),
            group=group, name=run_name, id=_wandb_id(run_name),
            resume="allow", dir=str(self.run_dir), config=self.cfg.to_dict())
        why_offline = None
        if mode not in ("offline", "dryrun"):
            base_url, proxies = _wandb_server()
            why_offline = wandb_unreachable(base_url, proxies)
            if why_offline is None:
                try:
                    self.wandb = wandb.init(mode=mode, settings=wandb.Settings(
                        silent=True, console="off", init_timeout=WANDB_INIT_TIMEOUT_S), **run_args)
                    return
                except Exception as err:  # refused key, no answer in time: log offline instead
                    why_offline = f"wandb.init failed: {_one_line(err)}"
                    _quietly(wandb.teardown)  # its service still holds the run id we reuse
        try:
            self.wandb = wandb.init(mode="offline",
                                    settings=wandb.Settings(silent=True, console="off"), **run_args)
        except Exception as err:  # W&B must never fail a training run
            log.warning("W&B disabled for this run: %s", err)
            self.wandb = None
            return
        if why_offline is not None:
            folder = self.wandb.settings.sync_dir
            console(f"[stargan-ray] W&B {mode} unavailable ({why_offline}); logging offline to "
                    f"{folder}; upload it later with `wandb sync {folder}`")

    def _wandb_log(self, data: dict[str, Any], step: int) -> None:
        if self.wandb is None:
            return
        try:
            self.wandb.log(data, step=step)
            self._wandb_step = max(self._wandb_step, step)
        except Exception as err:  # unreachable server, full disk: keep training
            log.warning("W&B logging failed, turning it off: %s", err)
            self.wandb = None

    # ------------------------------------------------------------ outputs

    def event(self, kind: str, **fields: Any) -> None:
        if self.rank != 0:
            return
        record = {"event": kind, "time": time.time(), **fields}
        with open(self.run_dir / "events.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if kind != "start" or fields.get("step"):
            console(f"[stargan-ray] {kind}: {fields}")
        if kind in URGENT_EVENTS and self.records is not None:
            self.records.nudge()  # the node may not last until the next upload round

    def start(self, step: int, pid: int, workers: int) -> None:
        """The `start` event of a worker group; when the group before it in this run had another
        size (an elastic run that grew or shrank, a --resume with another count) a `resize`
        event too, with each worker's rows of the same total batch (data/layout.py lanes)."""
        if self.rank != 0:
            return
        before = [e.get("workers") for e in self._events() if e.get("event") == "start"]
        self.event("start", step=step, pid=pid, workers=workers)
        if before and before[-1] != workers:
            from ..data.layout import lanes_of

            total = self.cfg.data.batch_size
            self.event("resize", step=step, workers_before=before[-1], workers=workers,
                       batch_size=total,
                       rows_per_worker=[len(lanes_of(r, workers, total)) for r in range(workers)])

    def _events(self) -> list[dict[str, Any]]:
        try:
            lines = (self.run_dir / "events.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: the records around it count
                continue
        return out

    def log(self, step: int, metrics: dict[str, float], line: str) -> None:
        if self.rank != 0:
            return
        console(line)
        self._wandb_log(metrics, step)
        self._flush_wandb_evals()
        self._record_metrics(step, metrics)

    def _record_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """One JSON line per log in metrics.jsonl (what plots/losses.png is drawn from) and the
        same scalars as TensorBoard events; neither ever fails the run."""
        record = {"step": step, "time": time.time(),
                  **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self._unplotted = True
        except Exception as err:  # a full disk: keep training
            from ..plots import _warn_once

            _warn_once("metrics.jsonl", err)
        if self._tb is not None:
            self._tb.add_scalars(step, metrics)

    def plot(self) -> None:
        """Redraw plots/losses.png from metrics.jsonl when something was logged since (rank 0)."""
        if self.rank != 0 or not self._unplotted:
            return
        from ..plots import write_losses_png

        self._unplotted = False
        write_losses_png(self.run_dir, self.cfg.name)

    def images(self, step: int, images: dict[str, Image.Image]) -> None:
        """The step's sample grids (train.samples): PNGs under samples/, W&B; the loss plot
        refreshes with them."""
        if self.rank != 0:
            return
        for name, image in images.items():
            image.save(self.run_dir / "samples" / f"{step:06d}_{name}.png")
        self.plot()
        if self._tb is not None:
            self._tb.add_images(step, images)
        if self.wandb is not None:
            import wandb

            self._wandb_log({f"samples/{k}": wandb.Image(v) for k, v in images.items()}, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """A step's quick evaluation (inline, or a validation beside the loop that finished
        later): a console line, a metrics.jsonl record and TensorBoard at that step. W&B keeps
        its steps increasing, so a late one goes to its latest step with eval_step naming the
        evaluated one (its charts plot fid_quick over eval_step)."""
        if self.rank != 0 or not metrics:
            return
        console(f"[{step}] " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        self._wandb_evals.append({**metrics, "eval_step": step})
        self._flush_wandb_evals()
        self._record_metrics(step, metrics)

    def _flush_wandb_evals(self, final: bool = False) -> None:
        """Log the waiting evaluations to W&B, one per W&B step: a W&B row keeps one value per
        key, so an evaluation whose step already holds another one (several late ones picked up
        together) waits for the next logged step; at the end, the steps after the last."""
        while self._wandb_evals and self.wandb is not None:
            step = max(self._wandb_evals[0]["eval_step"], self._wandb_step)
            if step <= self._wandb_eval_step:
                if not final:
                    return
                step = self._wandb_eval_step + 1
            self._wandb_log(self._wandb_evals.pop(0), step)
            self._wandb_eval_step = step

    def checkpoint_saved(self, checkpoint_dir: str, step: int, metrics: dict[str, Any],
                         aliases: tuple[str, ...]) -> None:
        """Log a complete checkpoint folder (in the run's storage) as a W&B artifact (rank 0)."""
        if self._artifacts is not None:
            self._artifacts.log(checkpoint_dir, step, aliases, metrics.get("fid_quick"))

    def finish(self) -> None:
        self._flush_wandb_evals(final=True)
        self.plot()
        if self._tb is not None:
            self._tb.close()
        if self.records is not None:
            self.records.close()  # the last records to the run's storage
            self.records = None
        if self._artifacts is not None:
            self._artifacts.close()  # every queued artifact handed to W&B before finish
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception as err:  # never fail the run on the way out
                log.warning("W&B finish failed: %s", err)


def _wandb_id(run_name: str) -> str:
    """A stable W&B run id from the run name, so a resumed run continues the same W&B run."""
    import hashlib

    return "sr-" + hashlib.sha1(run_name.encode()).hexdigest()[:12]


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _quietly(fn) -> None:
    try:
        fn()
    except Exception as err:  # W&B clean-up must never fail a run
        log.warning("W&B clean-up failed: %s", err)


def _wandb_server() -> tuple[str, dict[str, str]]:
    """The W&B server URL and proxies as wandb resolves them (WANDB_BASE_URL, its settings file)."""
    try:
        from wandb.sdk import wandb_setup

        settings = wandb_setup.singleton().settings  # loads settings; starts no service process
        base_url = settings.base_url
        proxies = {k: v for k, v in (("http", settings.http_proxy),
                                     ("https", settings.https_proxy)) if v}
    except Exception:  # another wandb version: its environment variable, else its default
        base_url, proxies = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"), {}
    return base_url, proxies


def wandb_unreachable(base_url: str, proxies: dict[str, str] | None = None,
                      timeout: float = WANDB_PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server at base_url cannot be reached, or None when it can.

    Opens and closes one TCP connection to the server's host, or to the proxy that requests to it
    would go through (wandb's settings, else HTTP(S)_PROXY unless NO_PROXY names the host). The
    connection runs in a thread that is given up after timeout seconds, because name resolution
    has no timeout of its own.
    """
    url = urlsplit(base_url)
    host = url.hostname
    if not host:
        return f"no host in {base_url!r}"
    port = url.port or (443 if url.scheme == "https" else 80)
    proxy = (proxies or {}).get(url.scheme)
    if proxy is None and not urllib.request.proxy_bypass(host):
        proxy = urllib.request.getproxies().get(url.scheme)
    target = base_url
    if proxy:
        purl = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or "", purl.port or (443 if purl.scheme == "https" else 80)
        target = f"{base_url} through proxy {host}:{port}"
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{target}: {_one_line(err)}")

    thread = threading.Thread(target=connect, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"{target}: no connection within {timeout:g} s"
