"""Brownian-bridge diffusion between paired domains: a process that starts at a given source
sample ``x1`` (``t = 1``) instead of noise and ends at a target-domain sample ``x0`` (``t = 0``).

The bridge between a target ``x0`` and its paired source ``x1`` is

    x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) eps,    eps ~ N(0, I),

the Brownian bridge of Li et al., "BBDM: Image-to-Image Translation with Brownian Bridge
Diffusion Models" (CVPR 2023; their ``delta_t = 2 s (m_t - m_t^2)`` with ``m_t = t`` is
``sigma^2 = 2 s``), the path EBDM ("Exemplar-guided Image Translation with Brownian-Bridge
Diffusion Models", 2024) samples with an exemplar-conditioned network, and the VE bridge of
Zhou et al., "Denoising Diffusion Bridge Models" (DDBM, ICLR 2024) in the time ``sigma_t^2``.

How it reuses the core, and where a bridge differs:

- **Process.** Given the source, ``y = x_t - t x1`` is ``alpha(t) x0 + sigma(t) eps`` with
  ``alpha = 1 - t`` and ``sigma = sigma_b sqrt(t (1 - t))``: an ``Interpolant`` (Albergo et
  al.'s stochastic interpolant between two densities), so ``BrownianBridge`` *is* a
  ``Process`` (``at``, ``Grid``, the uniform default grid) plus the source coefficient
  ``source(t) = t``. Unlike every other process ``sigma`` is 0 at *both* ends: ``x_1 = x1``
  holds no noise, and the log-SNR at ``t = 1`` is undefined (a grid records NaN there; no
  step reads it).
- **Exact transition.** As a Gaussian process given ``(x0, x1)``, ``y`` has
  ``Cov(y_s, y_t) = sigma_b^2 s (1 - t) = (alpha_t / alpha_s) sigma_s^2`` for ``s < t``:
  exactly the covariance of the DDPM forward chain of that interpolant. So the bridge's
  transition ``x_s | x_t, x0`` (``s < t``) is DDPM's posterior in ``y``,
  ``N((1 - s/t) x0 + (s/t) x_t, sigma_b^2 s (t - s) / t)`` (free of ``x1``: the bridge is
  Markov), and the DDIM family ``solvers.ddim(alpha_t, sigma_t, alpha_s, sigma_s, eta)`` on
  ``y`` gives every step here (``eta = 1`` that transition, ``eta = 0`` the deterministic,
  marginal-preserving DDIM-like step, which needs ``x1``). ``step_weights`` is the one place.
- **Start.** ``x_1 = x1`` is a point, so no ODE can leave it (a deterministic map of a point
  is a point): the first step from ``t = 1`` is always the bridge's own draw
  ``x_s = (1 - s) x0_hat + s x1 + sigma_s z`` (as DDBM's first stochastic step), and the
  sampler is stochastic for every ``eta``.
- **Model.** ``BridgeDenoiser`` is a ``Denoiser`` whose network also takes the source
  (``den.bind(source=x1)``); it converts the network's output in the shifted variable ``y``
  with the core's one conversion (``to_prediction``), so ``x0`` *and* ``eps`` are the
  bridge's (a plain ``Denoiser`` on this process would leave the source out of ``eps``).
- **Energy guidance.** EBDM's guidance is its exemplar conditioning, which is the network's
  input (``bind(exemplar=...)``), not an inference-time term. ``EnergyGuidance`` adds what an
  energy ``E(x0)`` can: the score of ``exp(-scale E(x0_hat))`` through the denoiser
  (``guidance.GradientGuidance``), exact for a linear energy on a Gaussian pair, except at
  ``t = 1`` (no guidance can act where ``alpha = 0``; see its docstring).

Use: ``translate(den, source, steps=20, eta=1.0, seed=0)`` (or ``sample(den.bind(source=x1),
x_T=x1, solver=BridgeSampler(eta), ...)``); training: ``bridge_loss``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import torch
from torch import Tensor

from . import grids
from .denoiser import Denoiser, DenoiserBase, GuidanceDivergenceError, Prediction, to_prediction
from .grids.grid import Grid
from .guidance import GradientGuidance
from .loop import SampleResult, sample
from .process import Interpolant, as_time, expand_to
from .solvers.base import Solver, SolverState, combine
from .solvers.ddim import ddim

_F64 = torch.float64


class BridgeWeights(NamedTuple):
    """One bridge step ``t -> s``: ``x_s = w_x x_t + w_x0 x0 + w_src x1 + noise z``."""

    w_x: float
    w_x0: float
    w_src: float
    noise: float


class BrownianBridge(Interpolant):
    """``x_t = (1 - t) x0 + t x1 + sigma sqrt(t (1 - t)) eps`` (module docstring).

    As a ``Process`` it describes ``y = x_t - source(t) x1`` (``alpha = 1 - t``,
    ``sigma(t) = sigma sqrt(t (1 - t))``); ``source(t) = t`` is the source's coefficient.
    ``sigma`` is the bridge's diffusion scale (BBDM's ``s = 1`` is ``sigma = sqrt(2)``)."""

    name = "brownian-bridge"

    def __init__(self, sigma: float = 1.0):
        sigma = float(sigma)
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"the bridge's sigma must be a finite positive number, got {sigma}")
        self.scale = sigma
        self.t_min, self.t_max = 0.0, 1.0

    # --- the process in y = x - t x1 ---------------------------------------------------
    def alpha(self, t) -> Tensor:
        return 1.0 - as_time(t)

    def sigma(self, t) -> Tensor:
        t = as_time(t)
        return self.scale * torch.sqrt(torch.clamp(t * (1.0 - t), min=0.0))

    def d_alpha(self, t) -> Tensor:
        return torch.full_like(as_time(t), -1.0)

    def d_sigma(self, t) -> Tensor:
        t = as_time(t)  # +inf at t = 0, -inf at t = 1 (sqrt at 0)
        return self.scale * (1.0 - 2.0 * t) / (2.0 * torch.sqrt(t * (1.0 - t)))

    def t_from_logsnr(self, lam) -> Tensor:
        """logSNR = log((1 - t) / (sigma^2 t)) decreases in t: t = 1 / (1 + sigma^2 e^lam)."""
        return 1.0 / (1.0 + self.scale ** 2 * torch.exp(as_time(lam)))

    # --- the source ---------------------------------------------------------------------
    def source(self, t) -> Tensor:
        """The source's coefficient ``b(t) = t`` (float64, ``t``'s shape)."""
        return as_time(t).clone()

    def marginal(self, x0: Tensor, x1: Tensor, t, eps: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + source(t) x1 + sigma(t) eps`` (``t`` scalar or ``[B]``)."""
        t = as_time(t)
        return expand_to(self.alpha(t), x0) * x0 + expand_to(self.source(t), x0) * x1 \
            + expand_to(self.sigma(t), x0) * eps

    def step_weights(self, t: float, s: float, eta: float = 1.0) -> BridgeWeights:
        """The step ``t -> s`` (``1 >= t > s >= 0``) with the exact ``x0``: ``x_s = w_x x_t
        + w_x0 x0 + w_src x1 + noise z``. ``eta = 1``: the bridge's transition (``w_src = 0``);
        ``eta = 0``: deterministic (after ``t = 1``), mapping the bridge's marginal at ``t`` to
        its marginal at ``s``; between: DDIM's family in ``y``. From ``t = 1`` (where
        ``x_t = x1``) every ``eta`` takes the exact draw ``(1 - s) x0 + s x1 + sigma_s z``."""
        t, s, eta = float(t), float(s), float(eta)
        if not 0.0 <= s < t <= 1.0:
            raise ValueError(f"a bridge step needs 1 >= t > s >= 0, got t={t}, s={s}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        c = self.at(torch.tensor([t, s], dtype=_F64))
        a0, a1 = c.alpha.tolist()
        s0, s1 = c.sigma.tolist()
        b0, b1 = self.source(torch.tensor([t, s], dtype=_F64)).tolist()
        if t == 1.0:  # x_1 = x1: the bridge's marginal at s given x0 and x1
            return BridgeWeights(b1, a1, 0.0, s1)
        w = ddim(a0, s0, a1, s1, eta)  # the step in y = x - b x1
        w_src = b1 - w.w_x * b0
        if eta == 1.0:  # the bridge is Markov: b_s = (s/t) b_t, exactly (round-off aside)
            w_src = 0.0
        return BridgeWeights(w.w_x, w.w_x0, w_src, w.noise)

    def transition(self, x_t: Tensor, x0: Tensor, t: float, s: float, x1: Tensor | None = None,
                   eta: float = 1.0) -> tuple[Tensor, float]:
        """The law of ``x_s`` given ``x_t`` and ``x0`` (and ``x1``, needed only for
        ``eta < 1``): ``(mean [B, ...], std)``; ``eta = 1`` is the Brownian bridge's exact
        ``N((1 - s/t) x0 + (s/t) x_t, sigma^2 s (t - s) / t)``."""
        w = self.step_weights(t, s, eta)
        mean = w.w_x * x_t + w.w_x0 * x0
        if w.w_src != 0.0:
            if x1 is None:
                raise ValueError(f"the step t={t} -> s={s} with eta={eta} needs the source x1")
            mean = mean + w.w_src * x1
        return mean, w.noise

    def __repr__(self) -> str:
        return f"BrownianBridge(sigma={self.scale})"


# --- the model view ------------------------------------------------------------------------
class BridgeDenoiser(Denoiser):
    """A ``Denoiser`` for a bridge: ``net(x_t, t_in, source=x1, **cond)``, the source bound
    with ``den.bind(source=x1)`` (``[B, ...]``, rows as ``x_t``'s; ``select`` indexes it).

    The output is converted in ``y = x_t - t x1`` with the core's ``to_prediction``, so any
    of the five prediction types works (``velocity`` is then ``dy/dt``, which leaves out the
    source's ``x1``) and ``eps`` is the bridge's noise. ``x0`` (as DDBM's preconditioned
    network and BBDM's objective after rewriting) is the usual choice."""

    source_key = "source"

    def __init__(self, net: Callable, process: BrownianBridge, prediction: str = "x0", **options):
        if not isinstance(process, BrownianBridge):
            raise TypeError(f"a BridgeDenoiser needs a BrownianBridge process, got {type(process).__name__}")
        super().__init__(net, process, prediction, **options)

    def bind(self, **cond) -> "BridgeDenoiser":
        new = super().bind(**cond)
        out = object.__new__(BridgeDenoiser)
        out.__dict__.update(new.__dict__)
        return out

    def source_of(self, x: Tensor) -> Tensor:
        """The bound source, checked against the sample ``x`` ``[B, ...]``."""
        src = self.cond.get(self.source_key)
        if src is None:
            raise ValueError("a bridge model needs its source: den.bind(source=x1) (x1 [B, ...])")
        if not isinstance(src, Tensor) or src.shape != x.shape:
            got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
            raise ValueError(f"the bound source has shape {got}, the sample {tuple(x.shape)}")
        return src

    def predict(self, x: Tensor, t) -> Prediction:
        src = self.source_of(x)
        y = self.raw(x, t)  # counts one NFE, checks shape and finiteness
        tt = as_time(t)
        c = self.process.at(tt).broadcast(x)
        shifted = x - expand_to(self.process.source(tt), x) * src  # y = x_t - b(t) x1
        return to_prediction(y, self.prediction, shifted, c)

    def __repr__(self) -> str:
        return f"BridgeDenoiser({type(self.net).__name__}, {self.process!r}, prediction={self.prediction!r})"


def _base_model(den: DenoiserBase) -> DenoiserBase:
    """The model under any wrappers (following ``.den``)."""
    for _ in range(32):
        inner = den.__dict__.get("den")
        if not isinstance(inner, DenoiserBase):
            return den
        den = inner
    return den


def check_bridge_model(den: DenoiserBase) -> BrownianBridge:
    """``den``'s bridge process; a model on another process, or a plain ``Denoiser`` that
    converts a non-``x0`` output without the source, raises."""
    if not isinstance(den, DenoiserBase):
        raise TypeError(f"den must be a Denoiser (or wrapper), got {type(den).__name__}")
    if not isinstance(den.process, BrownianBridge):
        raise ValueError(f"a bridge sampler needs a model on a BrownianBridge process, got {den.process!r}")
    base = _base_model(den)
    if isinstance(base, Denoiser) and not isinstance(base, BridgeDenoiser) and base.prediction != "x0":
        raise ValueError(f"a plain Denoiser with prediction={base.prediction!r} converts without the source "
                         "term: use BridgeDenoiser (or prediction='x0')")
    return den.process


# --- the sampler ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BridgeState(SolverState):
    """``weights``: one ``BridgeWeights`` per step (host floats); ``source``: ``x1``
    ``[B, ...]`` (recorded at ``t = 1``, where ``x = x1``; ``None`` on a grid that starts
    below 1, which only ``eta = 1`` allows)."""

    weights: tuple[BridgeWeights, ...] = ()
    source: Tensor | None = None

    batch_fields: ClassVar[tuple[str, ...]] = ("source",)


class BridgeSampler(Solver):
    """Bridge sampling from the source (``x_1 = x1``) to the target domain (``t = 0``).

    Each step takes the model's ``x0_hat`` and the bridge's exact step with it
    (``BrownianBridge.step_weights``): ``eta = 1`` draws ``x_s`` from the bridge's transition
    ``N((1 - s/t) x0_hat + (s/t) x_t, sigma^2 s (t - s) / t)`` (exact when ``x0_hat`` is the
    true ``x0``; BBDM's sampler, DDPM's posterior step in ``y = x - t x1``); ``eta = 0`` is
    the DDIM-like step ``x_s = (1 - s) x0_hat + s x1 + sigma_s eps_hat`` (deterministic
    after the first step, which always draws from the bridge: ``x_1`` is a point). The step
    to ``t = 0`` returns ``x0_hat``. One model call per step; per-row noise streams."""

    name = "bridge"
    order = 1
    stochastic = True
    State = BridgeState

    def __init__(self, eta: float = 1.0):
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        self.eta = eta

    def options(self) -> dict:
        return {"eta": self.eta}

    def init(self, den: DenoiserBase, x: Tensor, ts, rng=None) -> BridgeState:
        check_bridge_model(den)
        return super().init(den, x, ts, rng)

    def initial_fields(self, grid: Grid, x: Tensor) -> dict:
        proc = grid.process
        weights = grid.memo(("bridge", self.eta), lambda: tuple(
            proc.step_weights(grid.t[k], grid.t[k + 1], self.eta) for k in range(grid.steps)))
        source = x if grid.t[0] == 1.0 else None
        if source is None and any(w.w_src != 0.0 for w in weights):
            raise ValueError(f"the bridge sampler with eta={self.eta} needs the source x1: start the grid at "
                             f"t = 1 (where x = x1), not t = {grid.t[0]:.6g} (eta = 1 needs no source)")
        return {"weights": weights, "source": source}

    def step(self, den: DenoiserBase, x: Tensor, i: int, state: BridgeState):
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]
        if grid.t[i + 1] == 0.0:  # the bridge's end: the target-domain estimate
            return x0, state
        w = state.weights[i]
        preds, ws = (x0,), (w.w_x0,)
        if w.w_src != 0.0:
            preds, ws = (x0, state.source), (w.w_x0, w.w_src)
        noise = state.rng.randn_like(x) if w.noise != 0.0 else None
        return combine(x, w.w_x, preds, ws, noise, w.noise), state


def translate(den: DenoiserBase, source: Tensor, steps: int = 20, eta: float = 1.0, ts=None, seed=None,
              progress: bool = False, return_trajectory: bool = False, bind: str | None = "source") -> SampleResult:
    """Translate ``source`` ``[B, ...]`` (domain of ``x1``) into the target domain with the
    bridge model ``den``: ``BridgeSampler(eta)`` from ``x_1 = source`` over ``ts`` (default
    ``grids.quadratic``: ``steps`` steps from 1 to 0, uniform in ``sqrt(t)``; on the Gaussian
    oracle the sampler's covariance error at 50 steps is about half the uniform grid's). ``bind``: the keyword under which the source is
    bound to ``den`` (``den.bind(source=source)``); ``None`` if ``den`` (e.g. a wrapper) is
    already bound. Returns the core's ``SampleResult`` (``x``: the translations)."""
    check_bridge_model(den)
    if not isinstance(source, Tensor) or source.dim() < 2 or not source.is_floating_point() or source.numel() == 0:
        raise ValueError("source must be a non-empty real floating-point tensor shaped [B, ...]")
    if not bool(torch.isfinite(source).all()):
        raise ValueError("source contains NaN or Inf")
    ts = grids.quadratic(den.process, steps) if ts is None else grids.validate(ts)
    if float(ts[0]) != 1.0:
        raise ValueError(f"a translation starts at the source, t = 1; the grid starts at {float(ts[0]):.6g}")
    if bind is not None:
        if not callable(getattr(den, "bind", None)):
            raise TypeError(f"{type(den).__name__} cannot bind the source: bind it to the model it wraps "
                            "and pass bind=None")
        den = den.bind(**{bind: source})
    return sample(den, x_T=source, solver=BridgeSampler(eta), ts=ts, seed=seed, progress=progress,
                  return_trajectory=return_trajectory)


# --- training ------------------------------------------------------------------------------
def bridge_loss(den: BridgeDenoiser, x0: Tensor, x1: Tensor, t: Tensor | None = None, eps: Tensor | None = None,
                generator: torch.Generator | None = None, reduce: bool = True) -> Tensor:
    """``E || net(x_t, t, source=x1) - x0 ||^2`` over pairs ``(x0, x1)`` ``[B, ...]``, ``t``
    uniform on ``[0, 1]``, ``x_t`` the bridge's marginal: the regression whose minimiser is
    ``E[x0 | x_t, x1]`` (an ``x0``-prediction ``BridgeDenoiser``)."""
    if not isinstance(den, BridgeDenoiser) or den.prediction != "x0":
        raise TypeError("bridge_loss trains an x0-prediction BridgeDenoiser")
    if x0.shape != x1.shape:
        raise ValueError(f"pairs must have one shape, got x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)}")
    B = x0.shape[0]
    t = torch.rand(B, dtype=_F64, generator=generator) if t is None else as_time(t)
    if t.shape != (B,):
        raise ValueError(f"t must be [B]={B}, got {tuple(t.shape)}")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    x_t = den.process.marginal(x0, x1, t, eps)  # [B, ...]
    per_sample = (den.bind(**{den.source_key: x1}).raw(x_t, t) - x0).pow(2).flatten(1).mean(1)  # [B]
    return per_sample.mean() if reduce else per_sample


# --- energy guidance -----------------------------------------------------------------------
class EnergyGuidance(GradientGuidance):
    """Steer a bridge model toward low energy ``E(x0) -> [B]``: the score gains
    ``-scale grad_{x_t} E(x0_hat(x_t))`` (through the denoiser, as universal guidance /
    DPS), i.e. ``x0_hat += (sigma_t^2 / alpha_t) * that`` in ``y = x_t - t x1`` (Tweedie in
    the bridge's own variable; the source shift does not change gradients in ``x_t``).

    Exact for a linear energy ``E = -r . x0`` and a Gaussian pair (the tilted target is
    ``N(mu + P r, P)``; ``grad r . x0_hat`` is then the exact tilt's score) at every ``t < 1``;
    at ``t = 1`` (``alpha = 0``, the first step) the guidance cannot act and the first step
    uses the unguided ``x0_hat``, an ``O(1 / steps)`` error. The base class's divergence
    bound assumes ``x_t = alpha x0 + sigma eps`` (no source term), so only NaN / Inf are
    refused here."""

    def __init__(self, den: DenoiserBase, energy: Callable[[Tensor], Tensor], scale=1.0, interval=None):
        check_bridge_model(den)
        self.energy = energy
        super().__init__(den, lambda x, t, pred: -self.energy(pred.x0), scale, interval, through_denoiser=True,
                         method="EnergyGuidance")

    def check_divergence(self, x: Tensor, t, what: str = "x_t") -> None:
        if not bool(torch.isfinite(x).all()):
            raise GuidanceDivergenceError(f"EnergyGuidance diverged at t={float(as_time(t).max()):.4g}: {what} is "
                                          f"NaN/Inf; use {self._scale_text()} (or more steps)")

    def predict(self, x: Tensor, t) -> Prediction:
        if bool((self.process.alpha(as_time(t)) == 0).all()):  # t = 1: nothing to guide
            return self.den.predict(x, t)
        return super().predict(x, t)
