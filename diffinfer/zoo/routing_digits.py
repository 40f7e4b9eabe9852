"""A small DiT on the digits, trained with and without Denoising Task Routing (DTR).

Park et al., "Denoising Task Routing for Diffusion Models" (ICLR 2024) report faster
convergence and better FID on ImageNet-scale DiTs. This is the same comparison at toy size:
one unconditional VP eps-prediction DiT (``nets.dit.DiT``, ``routing=None`` or a DTR
config), the same seed, data order, noise draws and number of steps, measured by

- ``eval_loss``: the denoising loss on a fixed set of (digit, time, noise) triples (all
  1,797 digits, 4 draws each), the training objective without its sampling noise;
- ``fd``: Frechet distance of ``n`` samples (DPM-Solver++ 2M, 20 steps) to the real digits
  in the bundled classifier's feature space (``zoo.quality.fd_digits``).
"""
from __future__ import annotations

import torch

from ..denoiser import Denoiser
from ..process import VP
from ..train import TrainConfig, denoising_loss, fit, sample_times

#: the small DiT of the comparison (156k parameters; 16 tokens of 2x2 patches)
DIT_KWARGS = {"in_channels": 1, "image_size": 8, "patch": 2, "d_model": 48, "depth": 3, "n_heads": 4,
              "emb_dim": 64}


def train_dit(routing: dict | None, steps: int, seed: int = 0, batch: int = 128, lr: float = 2e-3,
              progress: bool = False):
    """Train the DiT (``routing`` as ``DiT(routing=...)``) for ``steps`` steps; returns
    ``(net, losses)``. The initial weights, batches, times and noise depend on ``seed`` only
    (routing adds no parameters, so both variants start from the same weights)."""
    from ..nets.dit import DiT
    from .data import digits
    x, _ = digits()
    process = VP()
    torch.manual_seed(seed)
    net = DiT(**DIT_KWARGS, routing=routing)

    def loss_fn(model, gen):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        return denoising_loss(Denoiser(model, process, "eps", check=False), x[idx], generator=gen)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(100, steps // 10), ema_decay=0.0, seed=seed,
                      checkpoint_every=0)
    result = fit(net, loss_fn, cfg, progress=progress, desc="dtr" if routing else "plain")
    return result.model, result.losses


def eval_loss(net, draws: int = 4, seed: int = 1234) -> float:
    """Mean denoising loss over all digits x ``draws`` fixed (time, noise) draws."""
    from .data import digits
    x, _ = digits()
    process = VP()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            t = sample_times(process, x.shape[0], g)
            eps = torch.randn(x.shape, generator=g)
            total += float(denoising_loss(Denoiser(net, process, "eps", check=False), x, t=t, eps=eps))
    return total / draws


def sample_fd(net, n: int = 512, steps: int = 20, seed: int = 0) -> tuple[float, torch.Tensor]:
    """FD of ``n`` samples to the real digits, and the samples ``[n, 1, 8, 8]``."""
    from ..loop import sample
    from .quality import fd_digits
    den = Denoiser(net, VP(), "eps", check=False)
    with torch.no_grad():
        x = sample(den, shape=(n, 1, 8, 8), solver="dpmpp-2m", steps=steps, seed=seed, progress=False).x
    x = x.clamp(-1, 1)
    return fd_digits(x), x


def compare(configs: dict[str, dict | None], steps: int, seeds=(0,), n: int = 512, progress: bool = False) -> list[dict]:
    """One row per (config name, seed): ``name, seed, steps, final_loss`` (mean of the last
    50 training losses), ``eval_loss``, ``fd``."""
    rows = []
    for seed in seeds:
        for name, routing in configs.items():
            net, losses = train_dit(routing, steps, seed=seed, progress=progress)
            tail = losses[-50:]
            fd, _ = sample_fd(net, n=n, seed=seed)
            rows.append({"name": name, "seed": int(seed), "steps": int(steps),
                         "final_loss": sum(tail) / len(tail), "eval_loss": eval_loss(net), "fd": fd})
    return rows
