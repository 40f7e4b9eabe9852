"""Minimal training loops: losses, EMA, a seeded resumable loop.

- ``denoising_loss``: ``E_{t, x0, eps} w(t) || net(x_t, t) - target ||^2`` for any process
  and prediction type of the core, the target from ``denoiser.from_x0_eps`` (Ho et al.
  2020 for ``eps``; Salimans & Ho 2022 for ``v``; Lipman et al. 2022 / Liu et al. 2022 for
  flow ``velocity``; Song et al. 2021 denoising score matching for ``score``).
- ``masked_diffusion_loss``: the continuous-time masked-diffusion ELBO with the linear
  schedule, ``E_t [1/t * sum_{masked} -log p(x_i | x_t)] / L`` (Sahoo et al. 2024 "MDLM",
  Shi et al. 2024 "MD4", Ou et al. 2024 "RADD").
- ``autoregressive_loss``: next-token cross-entropy.
- ``EMA``: exponential moving average of weights (Polyak averaging, as in DDPM).
- ``fit``: the loop, with one ``torch.Generator`` for all randomness, checkpoint/resume
  (model, EMA, optimiser, generator, step) and a tqdm bar showing the loss.

How each bundled model is trained (``RECIPES``, ``train_model``) is in ``diffinfer.zoo.recipes``.
"""
from __future__ import annotations

import copy
import math
import os
import pathlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .denoiser import Denoiser, from_x0_eps
from .process import as_time


# --- losses ---------------------------------------------------------------------------
def sample_times(process, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """``[B]`` float64 times uniform on ``[process.t_min, process.t_max]``."""
    u = torch.rand(batch, dtype=torch.float64, generator=generator)
    return process.t_min + (process.t_max - process.t_min) * u


def denoising_loss(den: Denoiser, x0: Tensor, t: Tensor | None = None, eps: Tensor | None = None,
                   generator: torch.Generator | None = None,
                   weight: Callable[[Tensor], Tensor] | None = None, reduce: bool = True) -> Tensor:
    """Mean squared error between the network's raw output and its target.

    Args:
        den: a ``Denoiser`` (network, process, prediction type, time input, conditioning).
        x0: clean data ``[B, ...]``.
        t: ``[B]`` times (default uniform on the process's range); eps: ``[B, ...]`` noise
            (default standard normal); both from ``generator``.
        weight: optional ``w(t) [B] -> [B]`` (float64) per-sample weight.
        reduce: mean over the batch, else per-sample losses ``[B]``.
    """
    if not isinstance(den, Denoiser):
        raise TypeError(f"den must be a Denoiser, got {type(den).__name__}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or Inf")
    B = x0.shape[0]
    t = sample_times(den.process, B, generator) if t is None else as_time(t)
    if t.shape != (B,):
        raise ValueError(f"t must be [B]={B}, got {tuple(t.shape)}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    c = den.process.at(t).broadcast(x0)
    x_t = c.alpha * x0 + c.sigma * eps  # [B, ...]
    target = from_x0_eps(x0, eps, den.prediction, c)
    per_sample = (den.raw(x_t, t) - target).pow(2).flatten(1).mean(1)  # [B]
    if weight is not None:
        per_sample = per_sample * weight(t).to(per_sample.dtype)
    return per_sample.mean() if reduce else per_sample


def mask_tokens(tokens: Tensor, t: Tensor, mask_id: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Mask each token of row ``b`` independently with probability ``t[b]`` (the linear
    masking schedule ``alpha_t = 1 - t``). Returns ``(masked tokens, mask [B, L] bool)``."""
    u = torch.rand(tokens.shape, generator=generator)
    mask = u < t.to(u.dtype).unsqueeze(1)
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


def masked_diffusion_loss(model: Callable[[Tensor], Tensor], tokens: Tensor, mask_id: int,
                          t: Tensor | None = None, generator: torch.Generator | None = None,
                          t_min: float = 1e-3, stratified: bool = False) -> Tensor:
    """MDLM / MD4's continuous-time ELBO (nats per token) for a time-free model.

    ``t ~ U(t_min, 1)`` per row; ``loss = mean_b [ (1 / t_b) * sum_{i masked} CE_i ] / L``.
    ``stratified=True`` draws the batch's times as ``(u + b / B) mod 1`` (MDLM's
    low-discrepancy sampler: the same expectation, less variance). ``model(tokens [B, L])
    -> logits [B, L, V]``.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
    B, L = tokens.shape
    if t is None:
        u = torch.rand(1 if stratified else B, generator=generator)
        if stratified:
            u = torch.remainder(u + torch.arange(B) / B, 1.0)
        t = t_min + (1 - t_min) * u
    else:
        t = torch.as_tensor(t, dtype=torch.float32)
    noisy, mask = mask_tokens(tokens, t, mask_id, generator)
    logits = model(noisy)  # [B, L, V]
    ce = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten(), reduction="none").view(B, L)
    per_row = (ce * mask).sum(1) / t.to(ce.dtype)  # [B]
    return per_row.mean() / L


def autoregressive_loss(model: Callable[[Tensor], Tensor], tokens: Tensor) -> Tensor:
    """Next-token cross-entropy (nats per token) of a causal model on ``[B, L]`` tokens."""
    logits = model(tokens[:, :-1])  # [B, L-1, V]
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


# --- EMA ------------------------------------------------------------------------------
class EMA:
    """``shadow <- decay * shadow + (1 - decay) * param`` after each step (buffers copied)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


# --- the loop -------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """``steps`` optimiser steps of Adam(``lr``) with linear warm-up and cosine decay to
    ``lr * final_lr_fraction``; gradient clipping at ``clip``; EMA ``ema_decay``."""

    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50


@dataclass
class TrainResult:
    model: nn.Module
    ema: EMA
    step: int
    losses: list[float]

    def ema_model(self) -> nn.Module:
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m)
        return m


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], Tensor], cfg: TrainConfig,
        checkpoint: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
        stop_at: int | None = None, desc: str = "train") -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps of ``loss_fn(model, generator) -> scalar``.

    All randomness (batches, times, noise) must come from the generator passed to
    ``loss_fn``, so a run is determined by ``cfg.seed``. If ``checkpoint`` exists and
    ``resume``, training continues from it and ends bitwise where an uninterrupted run
    would. ``stop_at`` stops early (after saving), to test resuming.
    """
    torch.manual_seed(cfg.seed)  # for any module that draws from the global generator
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, losses = 0, []
    path = pathlib.Path(checkpoint) if checkpoint is not None else None
    if path is not None and resume and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, losses = int(state["step"]), [float(v) for v in state["losses"]]

    def save():
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                    "losses": torch.tensor(losses, dtype=torch.float64)}, tmp)
        os.replace(tmp, path)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True, mininterval=2.0)
    model.train()
    running = None
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    while step < end:
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = loss_fn(model, gen)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        ema.update(model)
        step += 1
        losses.append(value)
        running = value if running is None else 0.98 * running + 0.02 * value
        if bar is not None:
            bar.update(1)
            if step % cfg.log_every == 0 or step == end:
                bar.set_postfix(loss=f"{running:.4f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save()
    if bar is not None:
        bar.close()
    save()
    model.eval()
    return TrainResult(model, ema, step, losses)
