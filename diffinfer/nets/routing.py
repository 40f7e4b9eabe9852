"""Denoising Task Routing: a fixed, timestep-dependent binary channel mask.

Park et al., "Denoising Task Routing for Diffusion Models" (DTR, ICLR 2024). Each noise
level is a task; the mask of task ``t`` activates a contiguous window of
``C_beta = int(beta * C)`` of the ``C`` channels starting at

    o(t) = round((t / t_max) ** alpha * (C - C_beta)),

so the window slides from the first channels (``t = 0``, data) to the last (``t = t_max``,
noise). Tasks at nearby times share more channels (task affinity: the overlap of the
windows of ``t`` and ``t'`` is ``max(0, C_beta - |o(t) - o(t')|)``, non-increasing in
``|t - t'|``), and ``alpha > 1`` moves the window faster at high noise, giving those
tasks more task-specific channels (task weights). The masks add no parameters.

In a block (the authors' DiT): ``out = (1 - m) * x + Block(m * x)``: the block sees only
the active channels, and the inactive ones are carried past it by the skip.

The paper's tasks are DDPM's integer timesteps ``0 .. T-1`` with ``o = round(linspace(0, 1,
T) ** alpha * (C - C_beta))``; here the time is the network's continuous time input divided
by ``t_max`` (our ``t`` in ``[0, 1]`` by default), which gives the same masks at
``t = k / (T - 1)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


class TaskRouting:
    """The DTR mask of ``channels`` channels: ``beta`` the active fraction, ``alpha`` the
    window's speed profile (1: uniform in ``t``; the paper's code uses 4), ``t_max`` the
    time input at full noise."""

    def __init__(self, channels: int, beta: float = 0.8, alpha: float = 1.0, t_max: float = 1.0):
        if not (isinstance(channels, int) and channels >= 1):
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not (isinstance(beta, (int, float)) and 0.0 < beta <= 1.0):
            raise ValueError(f"beta (the active fraction) must be in (0, 1], got {beta!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        if not (isinstance(t_max, (int, float)) and math.isfinite(t_max) and t_max > 0):
            raise ValueError(f"t_max must be a finite number > 0, got {t_max!r}")
        self.channels, self.beta, self.alpha, self.t_max = channels, float(beta), float(alpha), float(t_max)
        self.active = int(channels * self.beta)  # C_beta, as the authors' int(C * beta)
        if self.active < 1:
            raise ValueError(f"beta={beta} activates no channel of {channels}")

    def config(self) -> dict:
        return {"beta": self.beta, "alpha": self.alpha, "t_max": self.t_max}

    def offsets(self, t: Tensor) -> Tensor:
        """First active channel ``o(t)`` ``[B]`` (int64) for times ``t`` ``[B]``."""
        t = torch.as_tensor(t)
        if t.dim() != 1:
            raise ValueError(f"t must be [B], got shape {tuple(t.shape)}")
        # on t's own device, so an accelerator never waits on a host copy
        u = t.detach().to(torch.float32 if t.device.type == "mps" else torch.float64) / self.t_max
        ok = torch.isfinite(u).all() & (u >= 0).all() & (u <= 1 + 1e-12).all()
        if u.device.type == "cpu":
            if not bool(ok):
                raise ValueError(f"routing times must lie in [0, t_max={self.t_max}], got "
                                 f"[{float(t.min())}, {float(t.max())}]")
        else:  # checked without a host sync: raises at the next synchronisation
            torch._assert_async(ok, f"routing times must lie in [0, t_max={self.t_max}]")
        return torch.round(u.clamp(0.0, 1.0) ** self.alpha * (self.channels - self.active)).to(torch.int64)

    def mask(self, t: Tensor, dtype=torch.float32, device=None) -> Tensor:
        """The binary masks ``[B, C]`` (1 on the window ``o(t) <= c < o(t) + C_beta``)."""
        o = self.offsets(t)  # [B], on t's device
        c = torch.arange(self.channels, device=o.device)  # [C]
        m = (c >= o[:, None]) & (c < o[:, None] + self.active)  # [B, C]
        return m.to(dtype=dtype, device=device if device is not None else torch.as_tensor(t).device)

    def overlap(self, t: Tensor, t2: Tensor) -> Tensor:
        """Channels active for both ``t`` and ``t2`` (``[B]``, closed form)."""
        return (self.active - (self.offsets(t) - self.offsets(t2)).abs()).clamp(min=0)

    def __repr__(self) -> str:
        return (f"TaskRouting(channels={self.channels}, beta={self.beta}, alpha={self.alpha}, "
                f"t_max={self.t_max})")
