"""The digits translation task of ``diffinfer.bridges``: paired digits, a small bridge network,
its seeded training recipe (seconds on one CPU core) and its scores.

Pairings, each from scikit-learn's 8x8 digits (``data.digits``), target ``x0`` = the digit's
mirror image (flipped left-right), source ``x1``:

- ``mirror``: the digit itself (the translation is deterministic: a perfect model returns
  the mirror exactly);
- ``mirror-coarse``: the digit at 4x4 (2x2 means, shown at 8x8): the mirror's detail is
  lost, so ``p(x0 | x1)`` is spread and the bridge must sample it.

Training and evaluation use the digits classifier's split (``recipes.digits_classifier_split``):
the bridge trains on its 1,617 training digits and is scored on the 180 held-out ones, by the
clean ``digits-classifier``'s accuracy on the outputs mirrored back (against the true labels)
and by the RMSE to the true mirror.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..bridges import BridgeDenoiser, BrownianBridge, bridge_loss, translate
from ..nets.mlp import MLPDenoiser
from .data import digits
from .recipes import digits_classifier_split

PAIRINGS = ("mirror", "mirror-coarse")


def mirror(x: Tensor) -> Tensor:
    """Digits ``[N, 1, 8, 8]`` flipped left-right."""
    return torch.flip(x, dims=(-1,))


def coarse(x: Tensor) -> Tensor:
    """Digits ``[N, 1, 8, 8]`` at 4x4 (2x2 means), shown at 8x8 (nearest)."""
    return F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")


def make_pairs(x: Tensor, pairing: str) -> tuple[Tensor, Tensor]:
    """``(x0, x1)``: target (the mirror) and source for digits ``x`` ``[N, 1, 8, 8]``."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; valid: {', '.join(PAIRINGS)}")
    return mirror(x), (x if pairing == "mirror" else coarse(x))


class PairNet(nn.Module):
    """``net(x_t, t, source) -> x0_hat`` for 8x8 digits: the residual ``MLPDenoiser`` on the
    concatenated ``[x_t, x1]`` (128 features), its first 64 outputs read as ``x0_hat``."""

    def __init__(self, hidden: int = 256, depth: int = 3, dim: int = 64):
        super().__init__()
        self.dim = dim
        self.mlp = MLPDenoiser(2 * dim, hidden=hidden, depth=depth)

    def forward(self, x: Tensor, t: Tensor, source: Tensor) -> Tensor:
        B = x.shape[0]
        h = torch.cat([x.reshape(B, -1), source.reshape(B, -1)], dim=1)  # [B, 128]
        return self.mlp(h, t)[:, :self.dim].reshape(x.shape)


@dataclass
class Trained:
    """A trained bridge model and its record."""

    den: BridgeDenoiser
    pairing: str
    steps: int
    final_loss: float   # mean of the last 10% of the steps
    seconds: float


def train(pairing: str = "mirror", steps: int = 1500, batch: int = 128, lr: float = 2e-3, sigma: float = 1.0,
          seed: int = 0, hidden: int = 256, progress: bool = False) -> Trained:
    """Train a ``PairNet`` x0-prediction bridge on the training split's pairs (``bridge_loss``;
    AdamW, cosine decay; one generator from ``seed`` for every draw)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    x, _ = digits()
    train_idx, _ = digits_classifier_split()
    x0, x1 = make_pairs(x[train_idx], pairing)
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # the network's initialisation
    net = PairNet(hidden=hidden)
    den = BridgeDenoiser(net, BrownianBridge(sigma), "x0", check=False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps)))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train bridge", leave=False)
    losses = []
    start = time.perf_counter()
    for _ in range(int(steps)):
        idx = torch.randint(0, x0.shape[0], (batch,), generator=g)
        loss = bridge_loss(den, x0[idx], x1[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if bar is not None:
        bar.close()
    net.eval().requires_grad_(False)
    tail = losses[-max(1, len(losses) // 10):]
    return Trained(den, pairing, int(steps), sum(tail) / len(tail), time.perf_counter() - start)


def heldout(pairing: str, n: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(x0, x1, labels)`` of the first ``n`` (default all 180) held-out digits."""
    x, labels = digits()
    _, held = digits_classifier_split()
    held = held if n is None else held[:n]
    x0, x1 = make_pairs(x[held], pairing)
    return x0, x1, labels[held]


def scores(out: Tensor, x0: Tensor, labels: Tensor) -> dict:
    """``accuracy``: the clean digits classifier on ``mirror(out)`` against ``labels``;
    ``rmse``: ``out`` against the true mirror ``x0`` (per entry, data in ``[-1, 1]``)."""
    from .quality import classifier_accuracy
    return {"accuracy": classifier_accuracy(mirror(out).float(), labels),
            "rmse": float((out.double() - x0.double()).pow(2).mean().sqrt())}


def evaluate(trained: Trained, steps: int = 20, eta: float = 1.0, n: int | None = None, seed: int = 0) -> dict:
    """Translate the held-out sources with ``translate`` and score them (``scores``), with
    the outputs (``x``), sources, targets and labels."""
    x0, x1, labels = heldout(trained.pairing, n)
    with torch.no_grad():
        res = translate(trained.den, x1, steps=steps, eta=eta, seed=seed)
    return {**scores(res.x, x0, labels), "nfe": res.nfe, "x": res.x, "x0": x0, "x1": x1, "labels": labels}
