"""StarGAN v2 losses. The engine computes the generated images; these functions score them.

d_loss / g_loss return (loss, stats) with the official stat names; stats are detached 0-dim
tensors so that a training step never synchronises with the device just to log. With ADA
(loss.ada_target > 0) the discriminator sees every image through augment.py's pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .models import Networks

Stats = dict[str, torch.Tensor]
Augment = Callable[[torch.Tensor], torch.Tensor]  # what D sees of an image (augment.py)


def adv_loss(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Non-saturating GAN loss: BCE with logits against a constant real (1) / fake (0) target."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def r1_reg(d_out: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
    """Zero-centred gradient penalty on real images: 0.5 * E_x ||grad_x D(x)||^2.

    create_graph=True so that the penalty itself is differentiated (a double backward).
    """
    (grad,) = torch.autograd.grad(d_out.sum(), x_in, create_graph=True)
    return 0.5 * grad.pow(2).flatten(1).sum(1).mean(0)


def style_loss(s_pred: torch.Tensor, s_trg: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(s_pred - s_trg))


def diversity_loss(x_fake: torch.Tensor, x_fake2: torch.Tensor) -> torch.Tensor:
    """Mean L1 between two outputs of different styles; subtracted from the G loss (maximised)."""
    return torch.mean(torch.abs(x_fake - x_fake2.detach()))


def cycle_loss(x_rec: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    return torch.mean(torch.abs(x_rec - x_real))


@dataclass(frozen=True)
class GWeights:
    lambda_sty: float
    lambda_ds: float
    lambda_cyc: float


def d_loss(nets: Networks, x_real: torch.Tensor, y_org: torch.Tensor, y_trg: torch.Tensor,
           x_fake: torch.Tensor, r1_weight: float,
           augment: tuple[Augment, Augment] | None = None) -> tuple[torch.Tensor, Stats]:
    """Discriminator loss on a real batch and a (detached) fake batch; R1 when r1_weight > 0.

    augment (ADA, off when None): the (real, fake) augmentations D sees its inputs through. R1
    stays the gradient at the real images before augmentation (as StyleGAN2-ADA), and the stats
    gain "signs", the sum of sign(D(real)) that ADA's r_t is made of.
    """
    discriminator = nets.discriminator
    aug_real, aug_fake = augment or (None, None)
    if r1_weight > 0:
        x_real = x_real.detach().requires_grad_(True)
    out = discriminator(x_real if aug_real is None else aug_real(x_real), y_org)
    loss_real = adv_loss(out, 1)
    loss_reg = r1_reg(out, x_real) if r1_weight > 0 else torch.zeros((), device=out.device)
    x_fake = x_fake.detach()
    loss_fake = adv_loss(discriminator(x_fake if aug_fake is None else aug_fake(x_fake), y_trg), 0)
    loss = loss_real + loss_fake + r1_weight * loss_reg
    stats = {"real": loss_real.detach(), "fake": loss_fake.detach(), "reg": loss_reg.detach()}
    if augment is not None:
        stats["signs"] = out.detach().sign().sum()
    return loss, stats


def g_loss(nets: Networks, x_real: torch.Tensor, y_trg: torch.Tensor, s_trg: torch.Tensor,
           x_fake: torch.Tensor, x_fake2: torch.Tensor, s_org: torch.Tensor,
           masks_rec: tuple[torch.Tensor, torch.Tensor] | None,
           weights: GWeights) -> tuple[torch.Tensor, Stats]:
    """Generator loss given x_fake = G(x_real, s_trg) and x_fake2 = G(x_real, s_trg2).

    With ADA the engine passes nets whose discriminator augments its input (augment.Augmented).
    s_org = E(x_real, y_org) is the style used to reconstruct the source (cycle term);
    masks_rec are the FAN masks of x_fake (w_hpf > 0) or None.
    """
    loss_adv = adv_loss(nets.discriminator(x_fake, y_trg), 1)
    loss_sty = style_loss(nets.style_encoder(x_fake, y_trg), s_trg)
    loss_ds = diversity_loss(x_fake, x_fake2)
    x_rec = nets.generator(x_fake, s_org, masks=masks_rec)
    loss_cyc = cycle_loss(x_rec, x_real)
    loss = (loss_adv + weights.lambda_sty * loss_sty - weights.lambda_ds * loss_ds
            + weights.lambda_cyc * loss_cyc)
    return loss, {"adv": loss_adv.detach(), "sty": loss_sty.detach(), "ds": loss_ds.detach(),
                  "cyc": loss_cyc.detach()}
