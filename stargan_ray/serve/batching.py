"""Many requests through the generator at once (no Ray).

A request's styles are computed one at a time (Translator.latent_styles / reference_styles), so
they never depend on the other requests. The generator then runs on every (source, style) pair of
the batch with the rows it has (chunks of at most ``translator.batch_size``): a lone request pays
for its own rows only. float32 kernels sum in an order that depends on the number of rows, so a
request's pixels may differ by rounding (at most one uint8 level, on rare pixels) with what else
shares its call. exact=True pads every call to exactly ``batch_size`` rows
(Translator.generate_fixed_shape): outputs then never depend on the batch, at the price of a full
call for a lone request (``serve --exact-batching``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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
