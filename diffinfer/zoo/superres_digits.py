"""Digits 2x super-resolution (4x4 -> 8x8) with and without region-modulated training noise.

The SAM-DiffSR recipe (Wang et al. 2024, ``diffinfer.region_noise``) at toy size, on SRDiff's
residual formulation (the model generates ``hr - up(lr)``):

- degradation: ``lr = avg_pool2(hr)`` ``[B, 1, 4, 4]``; ``up`` is nearest-neighbour 2x;
- model: a small conditional UNet (``SRNet``): the noisy residual and ``up(lr)`` as two input
  channels, VP eps-prediction;
- segmentation: no SAM here; ``intensity_regions`` of ``up(lr)`` with thresholds (-0.5, 0.3)
  gives three regions (background, edge, stroke), encoded as shifts ``scale * (-1, 0, 1)``.
  It is computed from the low-resolution input, so it is known at sampling time and
  ``RegionShifted`` samples the exact process the model was trained on;
- training: the classifier's training split (90% of the digits), evaluation on its held-out
  10%: PSNR (images in [0, 1]) against the high-resolution truth, and the bundled digits
  classifier's accuracy on the outputs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..denoiser import Denoiser
from ..process import VP
from ..region_noise import RegionShifted, intensity_regions, region_loss, region_shift, region_values
from ..train import TrainConfig, denoising_loss, fit

THRESHOLDS = (-0.5, 0.3)
UNET_CHANNELS = (32, 64)


def degrade(hr: Tensor) -> Tensor:
    """``[B, 1, 8, 8]`` -> ``[B, 1, 4, 4]`` (2x2 average)."""
    return F.avg_pool2d(hr, 2)


def upsample(lr: Tensor) -> Tensor:
    """``[B, 1, 4, 4]`` -> ``[B, 1, 8, 8]`` (nearest neighbour)."""
    return F.interpolate(lr, scale_factor=2, mode="nearest")


def shift_for(lr_up: Tensor, scale: float) -> Tensor:
    """The region shift map ``[B, 1, 8, 8]`` of the upsampled low-resolution input."""
    labels = intensity_regions(lr_up, THRESHOLDS)
    return region_shift(labels, region_values(len(THRESHOLDS) + 1, scale), like=lr_up)


class SRNet(nn.Module):
    """``net(x [B, 1, H, W], t [B], lr_up [B, 1, H, W]) -> [B, 1, H, W]``: a UNet on the two
    channels ``(x, lr_up)``, its first output channel."""

    def __init__(self, channels=UNET_CHANNELS, emb_dim: int = 64):
        super().__init__()
        from ..nets.unet import UNet
        self.unet = UNet(in_channels=2, channels=channels, emb_dim=emb_dim)

    def forward(self, x: Tensor, t: Tensor, lr_up: Tensor) -> Tensor:
        return self.unet(torch.cat([x, lr_up.to(x.dtype)], dim=1), t)[:, :1]


def split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(hr_train, hr_test, labels_train, labels_test)`` on the digits classifier's split."""
    from .data import digits
    from .recipes import digits_classifier_split
    x, y = digits()
    train, test = digits_classifier_split()
    return x[train], x[test], y[train], y[test]


def train_sr(scale: float | None, steps: int, seed: int = 0, batch: int = 128, lr: float = 2e-3,
             progress: bool = False) -> tuple[SRNet, list[float]]:
    """Train ``SRNet`` on residuals; ``scale=None`` (or 0) for ordinary noise, else the
    region-modulated noise with shifts ``scale * (-1, 0, 1)``. Same seed: same initial weights,
    batches, times and base noise in both variants."""
    hr, _, _, _ = split()
    process = VP()
    torch.manual_seed(seed)
    net = SRNet()

    def loss_fn(model, gen):
        idx = torch.randint(0, hr.shape[0], (batch,), generator=gen)
        x_hr = hr[idx]
        lr_up = upsample(degrade(x_hr))
        den = Denoiser(model, process, "eps", cond={"lr_up": lr_up}, check=False)
        if scale:
            return region_loss(den, x_hr - lr_up, shift_for(lr_up, scale), generator=gen)
        return denoising_loss(den, x_hr - lr_up, generator=gen)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(100, steps // 10), ema_decay=0.0, seed=seed,
                      checkpoint_every=0)
    result = fit(net, loss_fn, cfg, progress=progress, desc="sr-region" if scale else "sr-plain")
    return result.model, result.losses


def super_resolve(net: SRNet, lr: Tensor, scale: float | None, correct: bool = True, solver: str = "ddpm",
                  steps: int = 50, seed: int = 0) -> Tensor:
    """8x8 outputs ``[B, 1, 8, 8]`` in [-1, 1] for low-resolution inputs ``[B, 1, 4, 4]``.
    With ``scale`` (a model trained on modulated noise) and ``correct``, sampling runs through
    ``RegionShifted``; ``correct=False`` is the paper's unchanged reverse process."""
    from ..loop import sample
    lr_up = upsample(lr)
    den = Denoiser(net, VP(), "eps", cond={"lr_up": lr_up}, check=False)
    if scale and correct:
        den = RegionShifted(den, shift_for(lr_up, scale))
    with torch.no_grad():
        res = sample(den, shape=tuple(lr_up.shape), solver=solver, steps=steps, seed=seed).x
    return (lr_up + res).clamp(-1.0, 1.0)


def psnr(x: Tensor, truth: Tensor) -> float:
    """Mean PSNR (dB) over images, both in [-1, 1] mapped to [0, 1]."""
    mse = (((x - truth) / 2.0) ** 2).flatten(1).mean(1).clamp(min=1e-12)
    return float((10.0 * torch.log10(1.0 / mse)).mean())


def evaluate(outputs: Tensor, hr: Tensor, labels: Tensor) -> dict:
    from .quality import classifier_accuracy
    return {"psnr": psnr(outputs, hr), "accuracy": classifier_accuracy(outputs.float(), labels)}


def baselines(n: int | None = None) -> dict:
    """PSNR / accuracy of nearest and bilinear upsampling and of the truth, on the held-out split
    (its first ``n`` digits; default all)."""
    _, hr, _, y = split()
    hr, y = hr[:n], y[:n]
    lr = degrade(hr)
    bilinear = F.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False)
    out = {"nearest": evaluate(upsample(lr), hr, y), "bilinear": evaluate(bilinear, hr, y)}
    out["truth"] = {"psnr": math.inf, "accuracy": evaluate(hr, hr, y)["accuracy"]}
    return out


def compare(steps: int, scale: float = 0.5, seeds=(0,), solver: str = "ddpm", sample_steps: int = 50,
            batch: int = 128, n: int | None = None, progress: bool = False,
            outputs: dict | None = None) -> list[dict]:
    """Rows ``name, seed, psnr, accuracy, final_loss`` for the plain model, the modulated model
    sampled with the correction, and the modulated model sampled as in the paper (uncorrected).
    ``outputs`` (a dict) receives each run's super-resolved images of the last seed; ``n``: the
    first ``n`` held-out digits (default all)."""
    _, hr, _, y = split()
    hr, y = hr[:n], y[:n]
    lr = degrade(hr)
    rows = []
    for seed in seeds:
        plain, lp = train_sr(None, steps, seed=seed, batch=batch, progress=progress)
        region, lrg = train_sr(scale, steps, seed=seed, batch=batch, progress=progress)
        runs = {"plain noise": (plain, None, True, lp), "region noise, corrected": (region, scale, True, lrg),
                "region noise, uncorrected": (region, scale, False, lrg)}
        for name, (net, sc, correct, losses) in runs.items():
            out = super_resolve(net, lr, sc, correct=correct, solver=solver, steps=sample_steps, seed=seed)
            tail = losses[-50:]
            if outputs is not None:
                outputs[name] = out
            rows.append({"name": name, "seed": int(seed), **evaluate(out, hr, y),
                         "final_loss": sum(tail) / len(tail)})
    return rows
