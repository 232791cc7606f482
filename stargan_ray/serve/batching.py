"""Many requests through the generator at once (no Ray).

A request's styles are computed one at a time (Translator.latent_styles / reference_styles), so
they never depend on the other requests. The generator then runs on every (source, style) pair of
the batch with the rows it has (chunks of at most ``translator.batch_size``): a lone request pays
for its own rows only. float32 kernels sum in an order that depends on the number of rows, so a
request's pixels may differ by rounding (at most one uint8 level, on rare pixels) with what else
shares its call. exact=True pads every call to exactly ``batch_size`` rows
(Translator.generate_fixed_shape): outputs then never depend on the batch, at the price of a full
call for a lone request (``serve --exact-batching``). Batcher forms the batches: continuous
batching, one generator call at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..inference import Translator, to_pixels


@dataclass
class Job:
    """One request: a source after the test transform and what to translate it into.

    source: (3, S, S) float32 in [-1, 1]; references: (K, 3, S, S) or None for seeds; steps: that
    many outputs along the line from the first style to the second, instead of one per style.
    """

    source: np.ndarray
    domain: int
    seeds: Sequence[int] = (0,)
    references: np.ndarray | None = None
    psi: float = 1.0
    steps: int | None = None


@torch.no_grad()
def job_styles(tr: Translator, job: Job) -> torch.Tensor:
    """(outputs, style_dim) for one job, independent of any other job."""
    if job.references is not None:
        s = tr.reference_styles(torch.tensor(job.references), job.domain)
    else:
        s = tr.latent_styles(job.domain, list(job.seeds), job.psi)
    if job.steps is not None:
        t = torch.linspace(0, 1, job.steps, device=s.device)[:, None]
        s = torch.lerp(s[0:1].expand(job.steps, -1), s[1:2].expand(job.steps, -1), t)
    return s


@torch.no_grad()
def run_jobs(tr: Translator, jobs: Sequence[Job], exact: bool = False) -> list[np.ndarray]:
    """Every job's outputs as (outputs, S, S, 3) uint8, all through the generator together;
    exact: in fixed-shape calls, so that no output depends on the other jobs."""
    styles = [job_styles(tr, job) for job in jobs]
    counts = [len(s) for s in styles]
    x = torch.cat([torch.tensor(job.source)[None].expand(n, -1, -1, -1)
                   for job, n in zip(jobs, counts)]).to(tr.device)
    s = torch.cat(styles)
    out = tr.generate_fixed_shape(x, s) if exact else tr.generate(x, s)
    pixels = to_pixels(out.cpu())
    return list(np.split(pixels, np.cumsum(counts)[:-1]))


@dataclass
class _Waiting:
    """A submitted request: its item, the future its caller awaits, when it arrived (event loop
    time) and whether other requests were queued or in a call then (load)."""

    item: Any
    future: asyncio.Future
    arrived: float
    loaded: bool


@dataclass
class BatchStats:
    """What the calls held and where their requests waited, since the replica started."""

    calls: int = 0
    requests: int = 0
    busy_s: float = 0.0  # generator calls, end to end
    queued_s: float = 0.0  # summed over requests: from arrival to the start of their call
    started: float = field(default_factory=time.monotonic)

    def add(self, batch: list[_Waiting], start: float, end: float) -> None:
        self.calls += 1
        self.requests += len(batch)
        self.busy_s += end - start
        self.queued_s += sum(start - w.arrived for w in batch)

    def summary(self) -> dict:
        """requests per call, the fraction of the time the generator ran, mean seconds a
        request waited for its call and mean seconds of a call."""
        wall = max(time.monotonic() - self.started, 1e-9)
        return {"calls": self.calls, "requests": self.requests,
                "per_call": self.requests / max(self.calls, 1), "busy": self.busy_s / wall,
                "queued_s": self.queued_s / max(self.requests, 1),
                "call_s": self.busy_s / max(self.calls, 1)}


class Batcher:
    """Continuous batching on one event loop: one generator call at a time; the next batch is
    formed when it has finished, from every request that arrived meanwhile (up to max_batch),
    plus those arriving while it is not full: until wait_s after its first request when that
    request found the replica idle (light load: a lone request waits wait_s at most), until
    fill_s after it when it did not (load: it arrived while other requests were queued or in a
    call).

    Why two waits: where the generator is not the bottleneck (a small model, a GPU), requests
    reach the replica one by one at the pace of the HTTP path (proxy, ingress, two Ray hops), and
    a call formed as soon as the generator is free holds only those that arrived during the last
    call (5.3 requests per call at 32 concurrent clients, max batch 16, toy model on 2 CPUs).
    Under load, holding a batch back for more costs little throughput (the other requests are
    still on their way) and fills it; without load, waiting only adds latency.
    """

    def __init__(self, fn: Callable[[list], list], max_batch: int, wait_s: float,
                 fill_s: float | None = None):
        self.fn = fn  # called in a thread with the batch's items; returns one result per item
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.fill_s = wait_s if fill_s is None else fill_s
        self.calls = 0
        self.stats = BatchStats()
        self._in_flight = 0  # requests submitted and not answered yet
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Any) -> tuple[Any, int, int]:
        """(item's result, items in its call, the call's number)."""
        loop = asyncio.get_running_loop()
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._serve())
        future = loop.create_future()
        self._queue.put_nowait(_Waiting(item, future, loop.time(), self._in_flight > 0))
        self._in_flight += 1
        try:
            return await future
        finally:
            self._in_flight -= 1

    async def _next_batch(self) -> list[_Waiting]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = batch[0].arrived + (self.fill_s if batch[0].loaded else self.wait_s)
        while len(batch) < self.max_batch:
            if not self._queue.empty():  # arrived during the last call: no waiting for them
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [w for w in batch if not w.future.done()]  # done: the client went away

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.calls += 1
            call, start = self.calls, loop.time()
            try:
                results = await asyncio.to_thread(self.fn, [w.item for w in batch])
            except Exception as err:  # a bug, not a bad request: every caller gets it
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(err)
                continue
            finally:
                self.stats.add(batch, start, loop.time())
            for w, result in zip(batch, results):
                if not w.future.done():
                    w.future.set_result((result, len(batch), call))
