"""Many requests through the generator at once, with the outputs each would get alone (no Ray).

A request's styles are computed one at a time (Translator.latent_styles / reference_styles), so
they never depend on the other requests. The generator then runs on every (source, style) pair of
the batch, but always in chunks of exactly ``translator.batch_size`` rows, padded with copies of
the last row (Translator.generate_fixed_shape): a row's output then does not depend on the batch
it came in, so batching concurrent requests changes no output pixel; the price is a full chunk of
work for a lone request.
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
def run_jobs(tr: Translator, jobs: Sequence[Job]) -> list[np.ndarray]:
    """Every job's outputs as (outputs, S, S, 3) uint8, all through the generator together."""
    styles = [job_styles(tr, job) for job in jobs]
    counts = [len(s) for s in styles]
    x = torch.cat([torch.tensor(job.source)[None].expand(n, -1, -1, -1)
                   for job, n in zip(jobs, counts)]).to(tr.device)
    out = tr.generate_fixed_shape(x, torch.cat(styles))
    pixels = to_pixels(out.cpu())
    return list(np.split(pixels, np.cumsum(counts)[:-1]))
