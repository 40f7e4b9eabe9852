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
  (model, EMA, optimiser, generators, step, the run's configuration) and a tqdm bar
  showing the loss. Checkpoints are written atomically every ``checkpoint_every`` steps,
  every ``checkpoint_seconds`` of work and on SIGINT / SIGTERM (then ``TrainingInterrupted``);
  a resumed run is bitwise the uninterrupted one, and resuming a checkpoint of a different
  configuration raises ``ResumeMismatch`` naming the difference. An ``evaluate`` callback run
  on the EMA weights every ``eval_every`` steps keeps a learning curve (``TrainResult.history``:
  step, training seconds summed over sessions, the metrics), carried across resumes.

How each bundled model is trained (``RECIPES``, ``train_model``) is in ``diffinfer.zoo.recipes``.
"""
from __future__ import annotations

import copy
import json
import math
import os
import pathlib
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
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
    ``lr * final_lr_fraction``; gradient clipping at ``clip``; EMA ``ema_decay``.
    Checkpoints: every ``checkpoint_every`` steps (0: off) and after ``checkpoint_seconds``
    of work since the last one (``None``: off); ``fit``'s ``evaluate`` runs every
    ``eval_every`` steps (0: off). These and ``log_every`` may change between a run and its
    resumption, every other field may not."""

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
    checkpoint_seconds: float | None = None
    eval_every: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        def bad(name, value, valid):
            raise ValueError(f"TrainConfig.{name} must be {valid}, got {value!r}")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            bad("steps", self.steps, "a positive int")
        for name in ("warmup", "checkpoint_every", "seed", "eval_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                bad(name, v, "an int >= 0")
        if not (isinstance(self.log_every, int) and self.log_every >= 1):
            bad("log_every", self.log_every, "a positive int")
        for name in ("lr", "final_lr_fraction", "weight_decay", "clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                bad(name, v, "a finite number >= 0")
        if not (isinstance(self.ema_decay, (int, float)) and 0.0 <= self.ema_decay < 1.0):
            bad("ema_decay", self.ema_decay, "in [0, 1)")
        cs = self.checkpoint_seconds
        if cs is not None and not (isinstance(cs, (int, float)) and math.isfinite(cs) and cs > 0):
            bad("checkpoint_seconds", cs, "None or a finite number > 0")
        return self

    def run_fields(self) -> dict:
        """The fields that define the run (a resumed run must match them)."""
        d = asdict(self)
        for k in ("checkpoint_every", "log_every", "checkpoint_seconds", "eval_every"):
            d.pop(k)
        return d


class ResumeMismatch(ValueError):
    """A checkpoint was written by a run with a different configuration."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped training; the checkpoint holds the last finished step."""

    def __init__(self, step: int, checkpoint, signum: int):
        self.step, self.checkpoint, self.signum = step, checkpoint, signum
        where = f"checkpoint saved to {checkpoint}; rerun to resume" if checkpoint else "no checkpoint path given"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step} ({where})")


@dataclass
class TrainResult:
    model: nn.Module
    ema: EMA
    step: int
    losses: list[float]
    history: list[dict] = field(default_factory=list)  # {"step", "train_seconds", metric: value}
    train_seconds: float = 0.0  # optimiser-step time summed over every session of the run

    def ema_model(self) -> nn.Module:
        m = copy.deepcopy(self.model)
        self.ema.copy_to(m)
        return m


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k, '<absent>')!r}, this run {current.get(k, '<absent>')!r}"
            for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>")]


class _StopSignals:
    """Turn SIGINT / SIGTERM into a flag the loop checks after each step (main thread only)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum = None
        self._old = {}

    def __enter__(self):
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:  # a second signal: stop now, without waiting for the step to end
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], Tensor], cfg: TrainConfig,
        checkpoint: str | os.PathLike | None = None, resume: bool = True, progress: bool = True,
        stop_at: int | None = None, desc: str = "train", run_config: dict | None = None,
        evaluate: Callable[[nn.Module], dict] | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps of ``loss_fn(model, generator) -> scalar``.

    All randomness (batches, times, noise) must come from the generator passed to
    ``loss_fn`` (or torch's global generator, which is saved too), so a run is determined by
    ``cfg.seed``. If ``checkpoint`` exists and ``resume``, training continues from it and
    ends bitwise where an uninterrupted run would; the checkpoint must come from a run with
    the same ``cfg.run_fields()`` and ``run_config`` (a JSON-able description of everything
    else that defines the run: data, model, ...), else ``ResumeMismatch`` lists the
    differences. Checkpoints are written atomically (temporary file, fsync, rename) every
    ``cfg.checkpoint_every`` steps, after ``cfg.checkpoint_seconds`` of work, at the end and
    on SIGINT / SIGTERM, which then raise ``TrainingInterrupted``. ``stop_at`` stops early
    (after saving), to test resuming.

    ``evaluate(ema_model) -> {metric: float}`` (a copy of the model holding the EMA weights,
    in eval mode, under ``no_grad``) runs before the first step and every ``cfg.eval_every``
    steps; each result joins ``TrainResult.history`` with the step and the training seconds
    so far (time in optimiser steps only, summed over resumed sessions). It must not draw
    from torch's global generator (seed its own), or a resumed run would differ.
    """
    from .atomic import atomic_path, remove_stale_temporaries
    cfg.validate()
    if stop_at is not None and stop_at < 0:
        raise ValueError(f"stop_at must be >= 0, got {stop_at}")
    identity = {**cfg.run_fields(), **{f"run.{k}": v for k, v in (run_config or {}).items()}}
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    torch.manual_seed(cfg.seed)  # for any module that draws from the global generator
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    step, losses, history, train_seconds = 0, [], [], 0.0
    path = pathlib.Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        remove_stale_temporaries(path)
    if path is not None and resume and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ResumeMismatch(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                                 f"delete it or train without resuming") from None
        saved = json.loads(state["run"]) if "run" in state else None
        if saved is None:
            raise ResumeMismatch(f"checkpoint {path} records no run configuration (an older format); "
                                 f"delete it or train without resuming")
        diff = _differences(saved, identity)
        if diff:
            raise ResumeMismatch(f"checkpoint {path} is from a different run ({'; '.join(diff)}); "
                                 f"use the same settings, another work directory, or no resume")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, losses = int(state["step"]), [float(v) for v in state["losses"]]
        history = json.loads(state.get("history", "[]"))
        train_seconds = float(state.get("train_seconds", 0.0))

    def save():
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step,
                        "losses": torch.tensor(losses, dtype=torch.float64),
                        "history": json.dumps(history), "train_seconds": train_seconds,
                        "run": json.dumps(identity, sort_keys=True)}, tmp)

    def record():
        if evaluate is None or any(h["step"] == step for h in history):
            return
        ema_model = copy.deepcopy(model)
        ema.copy_to(ema_model)
        ema_model.eval()
        with torch.no_grad():
            metrics = evaluate(ema_model)
        bad = {k: v for k, v in metrics.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            raise FloatingPointError(f"evaluate returned non-finite or non-numeric metrics at step {step}: {bad}")
        history.append({"step": step, "train_seconds": round(train_seconds, 3), **{k: float(v) for k, v in metrics.items()}})
        if bar is not None:
            bar.write(f"{desc} step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True, mininterval=2.0)
    model.train()
    running = None
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    last_save = time.monotonic()
    if cfg.eval_every and step == 0:
        record()
    try:
        with _StopSignals(enabled=path is not None) as stop:
            while step < end:
                began = time.perf_counter()
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
                train_seconds += time.perf_counter() - began
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    record()
                running = value if running is None else 0.98 * running + 0.02 * value
                if bar is not None:
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == end:
                        bar.set_postfix(loss=f"{running:.4f}")
                if stop.signum is not None:
                    save()
                    raise TrainingInterrupted(step, path, stop.signum)
                due = cfg.checkpoint_seconds is not None and time.monotonic() - last_save >= cfg.checkpoint_seconds
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or due:
                    save()
                    last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.close()
    save()
    model.eval()
    return TrainResult(model, ema, step, losses, history, train_seconds)
