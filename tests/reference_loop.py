"""The official StarGAN v2 iteration written naively, as the reference for parity tests.

It follows the official solver step by step (every generator output recomputed, every network
with parameter gradients, optimisers zeroed before each backward, lambda_ds passed in), so that
engine.train_step, which skips redundant work, can be checked against it parameter by parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _adv(logits, target):
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def _r1(d_out, x_in):
    grad = torch.autograd.grad(d_out.sum(), x_in, create_graph=True, retain_graph=True,
                               only_inputs=True)[0]
    return 0.5 * grad.pow(2).view(x_in.size(0), -1).sum(1).mean(0)


def reference_d_loss(nets, lambda_reg, x_real, y_org, y_trg, z_trg=None, x_ref=None, masks=None):
    x_real.requires_grad_()
    out = nets.discriminator(x_real, y_org)
    loss_real = _adv(out, 1)
    loss_reg = _r1(out, x_real)
    with torch.no_grad():
        s_trg = (nets.mapping_network(z_trg, y_trg) if z_trg is not None
                 else nets.style_encoder(x_ref, y_trg))
        x_fake = nets.generator(x_real, s_trg, masks=masks)
    loss_fake = _adv(nets.discriminator(x_fake, y_trg), 0)
    return loss_real + loss_fake + lambda_reg * loss_reg


def reference_g_loss(nets, lam, x_real, y_org, y_trg, z_trgs=None, x_refs=None, masks=None,
                     w_hpf=0.0):
    if z_trgs is not None:
        s_trg = nets.mapping_network(z_trgs[0], y_trg)
    else:
        s_trg = nets.style_encoder(x_refs[0], y_trg)
    x_fake = nets.generator(x_real, s_trg, masks=masks)
    loss_adv = _adv(nets.discriminator(x_fake, y_trg), 1)
    loss_sty = torch.mean(torch.abs(nets.style_encoder(x_fake, y_trg) - s_trg))
    if z_trgs is not None:
        s_trg2 = nets.mapping_network(z_trgs[1], y_trg)
    else:
        s_trg2 = nets.style_encoder(x_refs[1], y_trg)
    x_fake2 = nets.generator(x_real, s_trg2, masks=masks).detach()
    loss_ds = torch.mean(torch.abs(x_fake - x_fake2))
    masks_rec = nets.fan.get_heatmap(x_fake) if w_hpf > 0 else None
    s_org = nets.style_encoder(x_real, y_org)
    x_rec = nets.generator(x_fake, s_org, masks=masks_rec)
    loss_cyc = torch.mean(torch.abs(x_rec - x_real))
    return loss_adv + lam["sty"] * loss_sty - lam["ds"] * loss_ds + lam["cyc"] * loss_cyc


def reference_iteration(nets, nets_ema, optims, batch, *, lambda_reg, lambda_sty, lambda_ds,
                        lambda_cyc, w_hpf=0.0, ema_beta=0.999):
    """One official iteration, mutating nets, nets_ema and optims in place."""
    lam = {"sty": lambda_sty, "ds": lambda_ds, "cyc": lambda_cyc}
    x_real, y_org, y_trg = batch.x_src.clone(), batch.y_src, batch.y_ref
    masks = nets.fan.get_heatmap(x_real) if w_hpf > 0 else None

    def reset():
        for opt in optims.values():
            opt.zero_grad()

    loss = reference_d_loss(nets, lambda_reg, x_real, y_org, y_trg, z_trg=batch.z_trg, masks=masks)
    reset(); loss.backward(); optims["discriminator"].step()
    loss = reference_d_loss(nets, lambda_reg, x_real, y_org, y_trg, x_ref=batch.x_ref, masks=masks)
    reset(); loss.backward(); optims["discriminator"].step()
    loss = reference_g_loss(nets, lam, x_real, y_org, y_trg, z_trgs=[batch.z_trg, batch.z_trg2],
                            masks=masks, w_hpf=w_hpf)
    reset(); loss.backward()
    for name in ("generator", "mapping_network", "style_encoder"):
        optims[name].step()
    loss = reference_g_loss(nets, lam, x_real, y_org, y_trg, x_refs=[batch.x_ref, batch.x_ref2],
                            masks=masks, w_hpf=w_hpf)
    reset(); loss.backward(); optims["generator"].step()
    for name in ("generator", "mapping_network", "style_encoder"):
        for p, p_ema in zip(getattr(nets, name).parameters(), getattr(nets_ema, name).parameters()):
            p_ema.data = torch.lerp(p.data, p_ema.data, ema_beta)
