"""The evaluation worker: generates the fakes of an item, extracts Inception features into moment
sums and computes LPIPS; the same class runs in this process or inside a Ray actor (eval_ray).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..data import folders
from ..inference import pixels_to_input, test_pixels
from ..models import Networks
from . import fid as fidlib
from . import lpips as lpipslib
from .eval_plan import MODES, Item, Job, Task, seeded_generator


@dataclass
class ItemResult:
    key: tuple
    images: int
    lpips: dict[int, float] = field(default_factory=dict)  # source index -> its pair mean
    bad: list[tuple[str, str]] = field(default_factory=list)  # real files left out: (path, why)


class EvalWorker:
    """Generates, extracts Inception features and LPIPS for items; keeps its moment sums."""

    def __init__(self, job: Job, nets: Networks, inception: nn.Module,
                 lpips_net: lpipslib.LPIPSNet | None, device: torch.device | str) -> None:
        self.job = job
        self.nets = nets
        self.inception = inception
        self.lpips_net = lpips_net
        self.device = torch.device(device)
        self.moments: dict[tuple, fidlib.FeatureMoments] = {}
        self._pixels: dict[str, torch.Tensor] = {}  # val images, decoded once (uint8)

    def _image(self, path: str) -> torch.Tensor:
        """The official generation loader (inference.test_pixels / pixels_to_input)."""
        if path not in self._pixels:
            # decoded as training decodes: 8-bit RGB files give the official pixels
            # (made square as training makes it: data.fit)
            self._pixels[path] = test_pixels(folders.load_image(path, fit=self.job.cfg.data.fit),
                                             self.job.cfg.model.img_size)
        return pixels_to_input(self._pixels[path])

    def images(self, paths: Iterable[str]) -> torch.Tensor:
        return torch.stack([self._image(p) for p in paths]).to(self.device)

    def _accumulate(self, key: tuple, features: torch.Tensor) -> None:
        if key not in self.moments:
            self.moments[key] = fidlib.FeatureMoments.zeros(features.shape[1], self.device)
        self.moments[key].add(features)

    def _features(self, images_uint8: np.ndarray) -> torch.Tensor:
        batch = self.job.cfg.eval.batch_size
        size = self.job.cfg.model.img_size
        return torch.cat([self.inception(fidlib.uint8_to_inception(images_uint8[i:i + batch],
                                                                   size).to(self.device))
                          for i in range(0, len(images_uint8), batch)])

    @torch.inference_mode()
    def run(self, item: Item) -> ItemResult:
        """Run one item; its features join this worker's moment sums (see results())."""
        if item.kind == "real":
            return self._run_real(item)
        return self._run_fake(item)

    def _run_real(self, item: Item) -> ItemResult:
        trg = item.key[1]
        files = [self.job.data.train[trg][i] for i in item.indices]
        bad: list[tuple[str, str]] = []  # named by the driver (this may be a Ray actor)
        moments = fidlib.features_of_files(files, self.job.cfg.model.img_size, self.inception,
                                           self.job.cfg.eval.batch_size, self.device,
                                           on_bad=lambda p, r: bad.append((p, r)))
        if item.key in self.moments:
            moments = self.moments[item.key] + moments
        self.moments[item.key] = moments
        return ItemResult(item.key, len(files), bad=bad)

    def style_draw(self, mode: str, task: Task, index: int,
               out: int) -> tuple[torch.Tensor | None, int | None]:
        """(z, None) in latent mode, (None, reference index) in reference mode; seeded per key."""
        g = seeded_generator(self.job.seed, MODES.index(mode), task.src, task.trg, index, out)
        if mode == "latent":
            return torch.randn(self.job.cfg.model.latent_dim, generator=g), None
        refs = self.job.data.val[task.trg]
        return None, int(torch.randint(len(refs), (1,), generator=g))

    def _run_fake(self, item: Item) -> ItemResult:
        mode, t = item.key
        task = self.job.tasks[t]
        nets = self.nets
        x_src = self.images(self.job.data.val[task.src][i] for i in item.indices)
        y_trg = torch.full((len(item.indices),), task.trg, dtype=torch.long, device=self.device)
        masks = nets.masks(x_src)
        outputs = []
        for out in range(self.job.num_outs):
            draws = [self.style_draw(mode, task, i, out) for i in item.indices]
            if mode == "latent":
                z_trg = torch.stack([z for z, _ in draws]).to(self.device)
                s_trg = nets.mapping_network(z_trg, y_trg)
            else:
                x_ref = self.images(self.job.data.val[task.trg][r] for _, r in draws)
                s_trg = nets.style_encoder(x_ref, y_trg)
            x_fake = nets.generator(x_src, s_trg, masks=masks)
            self._accumulate(item.key, self._features(fidlib.quantize(x_fake)))
            if self.lpips_net is not None:
                outputs.append(x_fake)
        result = ItemResult(item.key, len(item.indices) * self.job.num_outs)
        if self.lpips_net is not None:
            values = lpipslib.pairwise_per_source(outputs, self.lpips_net).double().cpu().tolist()
            result.lpips = dict(zip(item.indices, values))
        return result

    def results(self) -> dict[tuple, fidlib.FeatureMoments]:
        """This worker's moment sums on the CPU, keyed ("real", trg) or (mode, task index)."""
        return {key: m.cpu() for key, m in self.moments.items()}


__all__ = ["ItemResult", "EvalWorker"]
