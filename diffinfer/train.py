"""Minimal training loops for the zoo: losses, EMA, a seeded resumable loop.

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
- ``RECIPES`` / ``train_model(name)``: how each bundled model is trained (``diffinfer train
  NAME``), writing the EMA weights and their config to ``zoo_weights/NAME.safetensors``.
"""
from __future__ import annotations

import copy
import math
import os
import pathlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .denoiser import Denoiser, from_x0_eps
from .process import as_time

Tensor = torch.Tensor


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


# --- recipes: how each bundled model is trained ---------------------------------------
@dataclass
class Recipe:
    """``nets`` (trained together as one ``ModuleDict``), ``loss_fn(model, gen)``, the
    training config, and the zoo ``config`` written into the checkpoint's metadata."""

    nets: dict
    loss_fn: Callable
    cfg: TrainConfig
    config: dict


def _drop_labels(labels: Tensor, p: float, null: int, generator: torch.Generator) -> Tensor:
    """Replace each label by the null class with probability ``p`` (classifier-free
    guidance training, Ho & Salimans 2022)."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop, torch.full_like(labels, null), labels)


def _digits_denoiser_recipe(process_name: str, prediction: str, seed: int, steps: int,
                            ema_decay: float) -> Recipe:
    from .data import digits
    from .nets.unet import UNet
    from .process import get_process
    x, y = digits()
    unet_kwargs = {"in_channels": 1, "channels": [48, 96, 96], "emb_dim": 128, "num_classes": 10}
    net = UNet(**unet_kwargs)
    process = get_process(process_name)
    batch, p_uncond = 128, 0.1

    def loss_fn(model, gen):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        labels = _drop_labels(y[idx], p_uncond, 10, gen)
        den = Denoiser(model["net"], process, prediction, cond={"label": labels}, check=False)
        return denoising_loss(den, x[idx], generator=gen)

    cfg = TrainConfig(steps=steps, lr=1e-3, warmup=200, ema_decay=ema_decay, seed=seed)
    config = {"kind": "denoiser", "process": process_name, "prediction": prediction, "shape": [1, 8, 8],
              "num_classes": 10, "null_label": 10, "label_dropout": p_uncond, "batch": batch,
              "networks": {"net": {"arch": "unet", "kwargs": unet_kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


def recipe_digits() -> Recipe:
    """Class-conditional VP (linear) eps-prediction UNet with 10% label dropout."""
    return _digits_denoiser_recipe("vp-linear", "eps", seed=0, steps=3000, ema_decay=0.999)


def recipe_digits_flow() -> Recipe:
    """Rectified-flow velocity UNet (class-conditional, 10% label dropout)."""
    return _digits_denoiser_recipe("rectified-flow", "velocity", seed=1, steps=1000, ema_decay=0.995)


def recipe_digits_classifier() -> Recipe:
    """A noise-conditional classifier on VP-noised digits (ADM-style, for classifier
    guidance and verification) and a clean classifier (features for ``fd_digits``), both
    trained on 90% of the digits with one-pixel random shifts; 10% held out."""
    from .data import digits
    from .nets.unet import UNetClassifier
    from .process import get_process
    x, y = digits()
    train_idx, _ = digits_classifier_split()
    kw = {"in_channels": 1, "channels": [32, 64, 64], "emb_dim": 128, "num_classes": 10}
    noisy = UNetClassifier(**kw, time_conditional=True)
    clean = UNetClassifier(**kw, time_conditional=False)
    process = get_process("vp-linear")
    batch = 128

    def shift(images, gen):
        pad = F.pad(images, (1, 1, 1, 1), value=-1.0)
        dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
        return pad[:, :, dy:dy + 8, dx:dx + 8]

    def loss_fn(model, gen):
        idx = train_idx[torch.randint(0, train_idx.numel(), (batch,), generator=gen)]
        x0 = shift(x[idx], gen)
        t = sample_times(process, batch, gen)
        x_t = process.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
        return (F.cross_entropy(model["noisy"](x_t, t.float()), y[idx])
                + F.cross_entropy(model["clean"](x0), y[idx]))

    cfg = TrainConfig(steps=3000, lr=1e-3, warmup=100, ema_decay=0.995, seed=2, weight_decay=1e-4)
    config = {"kind": "classifiers", "process": "vp-linear", "shape": [1, 8, 8], "num_classes": 10,
              "split_seed": 1234, "train_fraction": 0.9,
              "networks": {"noisy": {"arch": "unet-classifier", "kwargs": {**kw, "time_conditional": True}},
                           "clean": {"arch": "unet-classifier", "kwargs": {**kw, "time_conditional": False}}}}
    return Recipe({"noisy": noisy, "clean": clean}, loss_fn, cfg, config)


def digits_classifier_split() -> tuple[Tensor, Tensor]:
    """Indices (train, held out) of the digits split the classifiers use."""
    n = 1797  # scikit-learn's digits
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1234))
    n_train = int(0.9 * n)
    return perm[:n_train], perm[n_train:]


def recipe_sunspots() -> Recipe:
    """Unconditional VP (linear) eps-prediction ``SeriesNet`` on the 224 windows of 32 years
    that end before the held-out last ``SUNSPOTS_HELDOUT_YEARS`` (1955-2008) of the yearly
    sunspot series (scaled to ``[-1, 1]``)."""
    from .data import sunspots_windows
    from .nets.series import SeriesNet
    from .process import get_process
    x = sunspots_windows(32, split="train")
    kwargs = {"in_channels": 1, "channels": 64, "depth": 6, "emb_dim": 64, "num_classes": 0}
    net = SeriesNet(**kwargs)
    process = get_process("vp-linear")
    batch = 64

    def loss_fn(model, gen):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        return denoising_loss(Denoiser(model["net"], process, "eps", check=False), x[idx], generator=gen)

    cfg = TrainConfig(steps=1500, lr=1e-3, warmup=100, ema_decay=0.995, seed=3)
    config = {"kind": "denoiser", "process": "vp-linear", "prediction": "eps", "shape": [1, 32],
              "window": 32, "scale": "2 x / 200 - 1 (sunspot number to [-1, 1])", "batch": batch,
              "networks": {"net": {"arch": "series", "kwargs": kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


SHAKESPEARE_NET = {"d_model": 128, "n_layers": 4, "n_heads": 4, "max_len": 256}


def _shakespeare_recipe(causal: bool, steps: int, seed: int, lr: float = 2e-3, warmup: int = 100,
                        init_from: str | None = None) -> Recipe:
    from .data import random_windows, shakespeare_tokens, shakespeare_vocab
    from .mdm.model import shift_right
    from .nets.char_transformer import CharTransformer
    vocab = shakespeare_vocab()
    stream = shakespeare_tokens("train")
    kwargs = {"vocab_size": vocab.size, **SHAKESPEARE_NET, "causal": causal}
    shift = init_from is not None  # Dream's logit shift keeps the causal model's next-token head
    net = CharTransformer(**kwargs)
    if init_from is not None:  # start from another bundled model with the same shapes
        from . import zoo
        net.load_state_dict(zoo.read_checkpoint(zoo.weights_path(init_from))[0]["net"].state_dict())
    batch, length = 16, SHAKESPEARE_NET["max_len"]

    def loss_fn(model, gen):
        tokens = random_windows(stream, length + (1 if causal else 0), batch, gen)  # [B, L(+1)]
        if causal:
            return autoregressive_loss(model["net"], tokens)
        net = model["net"]
        logits = (lambda x: shift_right(net(x))) if shift else net
        return masked_diffusion_loss(logits, tokens, vocab.mask_id, generator=gen, stratified=True)

    cfg = TrainConfig(steps=steps, lr=lr, warmup=warmup, ema_decay=0.99, seed=seed,
                      final_lr_fraction=0.05, checkpoint_every=100)
    config = {"kind": "text", "causal": causal, "vocab": vocab.chars, "mask_id": vocab.mask_id,
              "batch": batch, "length": length, "split": "first 90% of each play (train), rest held out",
              "init_from": init_from, "shift_logits": shift,
              "networks": {"net": {"arch": "char-transformer", "kwargs": kwargs}}}
    return Recipe({"net": net}, loss_fn, cfg, config)


def recipe_shakespeare_char() -> Recipe:
    """Bidirectional time-free character transformer with the masked-diffusion loss,
    initialised from ``shakespeare-ar``'s weights with Dream's logit shift (Ye et al. 2025;
    an AR-initialised masked-diffusion model as DiffuLLaMA, Gong et al. 2024): the shift keeps
    the causal model's next-token head, so the held-out ELBO starts at 3.37 nats per character
    instead of 4.19 (unshifted) and falls below the unshifted model's 1,500-step value within
    50 steps. From random weights the model sat at the unigram entropy for 700 steps."""
    return _shakespeare_recipe(causal=False, steps=2000, seed=4, lr=1.5e-3, warmup=50, init_from="shakespeare-ar")


def recipe_shakespeare_ar() -> Recipe:
    """Causal character transformer with next-token cross-entropy (the scorer)."""
    return _shakespeare_recipe(causal=True, steps=800, seed=5)


RECIPES: dict[str, Callable[[], Recipe]] = {
    "digits": recipe_digits,
    "digits-flow": recipe_digits_flow,
    "digits-classifier": recipe_digits_classifier,
    "shakespeare-char": recipe_shakespeare_char,
    "shakespeare-ar": recipe_shakespeare_ar,
    "sunspots": recipe_sunspots,
}


def train_model(name: str, steps: int | None = None, out_dir=None, work_dir=None, resume: bool = True,
                progress: bool = True, threads: int | None = None) -> pathlib.Path:
    """Train bundled model ``name`` with its recipe and write ``NAME.safetensors`` (the EMA
    weights, with the config and training summary in the metadata) to ``out_dir``
    (default: the package's ``zoo_weights``). The resumable checkpoint lives in
    ``work_dir`` (default ``./.diffinfer-train``)."""
    from . import zoo
    if name not in RECIPES:
        raise ValueError(f"no training recipe for {name!r}; valid: {', '.join(sorted(RECIPES))}")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)  # the networks' initial weights (built by the recipe), so a retrain from scratch is determined
    recipe = RECIPES[name]()
    if steps is not None:
        recipe.cfg.steps = int(steps)
    model = nn.ModuleDict(recipe.nets)
    work = pathlib.Path(work_dir or ".diffinfer-train")
    start = time.perf_counter()
    result = fit(model, recipe.loss_fn, recipe.cfg, checkpoint=work / f"{name}.pt", resume=resume,
                 progress=progress, desc=name)
    final = result.ema_model()
    tail = result.losses[-200:]
    config = dict(recipe.config)
    config["training"] = {"steps": result.step, "seed": recipe.cfg.seed, "lr": recipe.cfg.lr,
                          "ema_decay": recipe.cfg.ema_decay,
                          "final_loss": sum(tail) / max(1, len(tail)),
                          "wall_seconds_last_session": round(time.perf_counter() - start, 1),
                          "command": f"diffinfer train {name}"}
    out = pathlib.Path(out_dir) if out_dir else zoo.WEIGHTS_DIR
    return zoo.save_checkpoint(out / f"{name}.safetensors", dict(final.items()), config)
