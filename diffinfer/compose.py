"""Composition of diffusion models by superposition, with the Ito density estimator.

Skreta et al. 2025, "The Superposition of Diffusion Models Using the Ito Density
Estimator" (SuperDiff). For the forward SDE ``dx = f x dt + g dW`` (``Process.at(t).f``, ``.g2``) and a
path integrated *backward* in ``t`` by Euler-Maruyama with the full noise ``g``, Ito's
lemma and the Fokker-Planck equation give the change of every model's log-density along
that path without any divergence (the Laplacian terms cancel):

    d log q_i(x_t) = <s_i(x_t), dx> + h [D f + f <x_t, s_i> - (g^2/2) |s_i|^2]

with ``h = t - t_next > 0``, ``s_i = grad log q_i`` the model's score and ``D`` the
dimension (SuperDiff, Theorem 1). The path follows the reverse SDE with the combined score
``kappa s_1 + (1 - kappa) s_2``:

- ``or``: ``kappa_i = softmax_i(log q_i(x_t) + log w_i)``: the exact score of the mixture
  ``w_1 q_1 + w_2 q_2``, so the path samples the mixture (SuperDiff, Proposition 1);
- ``and``: ``kappa`` solves ``log q_1 = log q_2`` after the step (a linear equation in
  ``kappa``), keeping the two log-densities equal (SuperDiff, Proposition 6).

``ito_log_density`` runs one model's own reverse SDE and returns the estimated
log-density change (converges to the exact change as the steps grow).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from . import grids
from .denoiser import DenoiserBase, Prediction, summed_counter
from .likelihood import gaussian_prior
from .loop import initial_noise, iterate
from .process import Process, expand_to
from .rng import SampleRNG
from .solvers.base import Solver, SolverState
from .solvers.sde import EulerMaruyama

MODES = ("or", "and")


@dataclass
class SuperpositionResult:
    """``x``: samples ``[B, ...]``; ``log_q``: running log-density estimates of each
    model at ``t_end`` ``[B, 2]``; ``kappa``: the weights of model 1 per step
    ``[steps, B]``; ``t_end``: the last positive time of the path; ``nfe``."""

    x: Tensor
    log_q: Tensor
    kappa: Tensor
    t_end: float
    nfe: int
    x_end: Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


def ito_increment(x: Tensor, dx: Tensor, h: float, score: Tensor, f: float, g2: float) -> Tensor:
    """``d log q(x_t)`` ``[B]`` along an Euler-Maruyama step ``dx`` of the reverse SDE
    from ``t`` to ``t - h``, with ``(f, g2)`` the forward SDE's at ``t`` (Ito density
    estimator, SuperDiff Theorem 1)."""
    dim = x[0].numel()
    return _dot(score, dx) + h * (dim * f + f * _dot(x, score) - 0.5 * g2 * _dot(score, score))


def _positive_grid(process: Process, steps: int, ts) -> tuple[Tensor, bool]:
    ts = grids.resolve(process, steps, ts)
    ends_at_zero = float(ts[-1]) == 0.0
    return (ts[:-1] if ends_at_zero else ts), ends_at_zero


def _em_drift(x: Tensor, h: float, score: Tensor, noise: Tensor, f: float, g2: float) -> Tensor:
    """The reverse-SDE Euler-Maruyama increment ``h (g^2 s - f x) + g sqrt(h) z``."""
    return h * (g2 * score - f * x) + math.sqrt(g2 * h) * noise


class ModelPair(DenoiserBase):
    """Two models on one process, for a solver that steps with both (``Superposition``).
    ``predict`` is the first model's; the NFE counter is the pair's together."""

    def __init__(self, first: DenoiserBase, second: DenoiserBase):
        self.first, self.second, self.process = first, second, first.process
        self._counter = summed_counter([first, second])

    def predict(self, x: Tensor, t) -> Prediction:
        return self.first.predict(x, t)

    def select(self, idx: Tensor) -> "ModelPair":
        return ModelPair(self.first.select(idx), self.second.select(idx))


@dataclass(frozen=True)
class SuperpositionState(SolverState):
    """``log_q`` ``[B, 2]``: the running log-density estimates of the two models; ``kappa``
    ``[B]``: the last step's weight of the first model."""

    log_q: Tensor | None = None
    kappa: Tensor | None = None

    batch_fields: ClassVar[tuple[str, ...]] = ("log_q", "kappa")


class Superposition(Solver):
    """One Euler-Maruyama step of the reverse SDE with the combined score
    ``kappa s_1 + (1 - kappa) s_2`` of a ``ModelPair``, and the Ito update of both
    log-densities (module docstring; SuperDiff, Theorem 1 and Propositions 1 and 6)."""

    name = "superposition"
    stochastic = True
    evals_per_step = 2
    State = SuperpositionState

    def __init__(self, mode: str, log_w: Tensor):
        self.mode, self.log_w = mode, log_w

    def initial_fields(self, grid, x) -> dict:
        p = gaussian_prior(grid.process)(x, grid.ts[0]).double()  # [B]: both start at N(0, s^2)
        return {"log_q": p.unsqueeze(1).repeat(1, 2)}

    def step(self, den: ModelPair, x: Tensor, i: int, state: SuperpositionState):
        grid = state.grid
        t, h = grid.point(i), grid.t[i] - grid.t[i + 1]
        f, g2 = grid.f[i], grid.g2[i]
        s1, s2 = den.first.score(x, t), den.second.score(x, t)
        base = _em_drift(x, h, s2, state.rng.randn_like(x), f, g2)  # dx with kappa = 0
        diff = s1 - s2
        log_q = state.log_q
        if self.mode == "or":
            kappa = torch.softmax(log_q + self.log_w, 1)[:, 0]
        else:
            still = torch.zeros_like(x)
            c = (ito_increment(x, still, h, s1, f, g2) - ito_increment(x, still, h, s2, f, g2)).double()
            num = (log_q[:, 0] - log_q[:, 1]) + c + _dot(diff, base).double()
            den_k = h * g2 * _dot(diff, diff).double()
            kappa = torch.where(den_k > 1e-12, -num / den_k.clamp(min=1e-12), torch.full_like(num, 0.5))
        dx = base + h * g2 * expand_to(kappa, x) * diff
        log_q = log_q + torch.stack([ito_increment(x, dx, h, s1, f, g2),
                                     ito_increment(x, dx, h, s2, f, g2)], 1).double()
        return x + dx, state.replace(log_q=log_q, kappa=kappa)


def superpose(den1: DenoiserBase, den2: DenoiserBase, shape, mode: str = "or", steps: int = 200, ts=None,
              seed: int = 0, weights=(0.5, 0.5), x_T: Tensor | None = None, dtype=torch.float32,
              device="cpu") -> SuperpositionResult:
    """Sample the superposition of two models that share a process (SuperDiff).

    Args:
        shape: ``[B, ...]``; ``mode``: ``or`` (mixture) or ``and`` (equal density).
        steps / ts: the grid; Euler-Maruyama runs over its positive points, and a grid
            ending at ``t = 0`` finishes with the combined denoised estimate.
        weights: mixture weights for ``or``.
        x_T: starting points (default ``sigma(t_0) z`` with per-sample streams).
    """
    if mode not in MODES:
        raise ValueError(f"unknown superposition mode {mode!r}; valid: {', '.join(MODES)}")
    process = den1.process
    if type(den2.process) is not type(process) or repr(den2.process) != repr(process):
        raise ValueError(f"both models must share one process, got {den1.process!r} and {den2.process!r}")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (2,) or bool((w <= 0).any()):
        raise ValueError(f"weights must be two positive numbers, got {weights}")
    ts, ends_at_zero = _positive_grid(process, steps, ts)
    shape = tuple(int(s) for s in shape)
    rng = SampleRNG.from_seed(seed, batch=shape[0], device=device)
    x = initial_noise(den1, shape, ts, rng, dtype=dtype, device=device) if x_T is None else x_T
    pair = ModelPair(den1, den2)
    nfe0 = pair.nfe
    log_w = torch.log(w / w.sum())
    kappas, state = [], None
    for step in iterate(pair, Superposition(mode, log_w), x, ts, rng):
        x, state = step.x, step.state
        kappas.append(state.kappa)
    log_q = state.log_q
    x_end = x
    if ends_at_zero:
        s1, s2 = den1.score(x, ts[-1]), den2.score(x, ts[-1])
        k = expand_to(kappas[-1], x) if mode == "and" else expand_to(torch.softmax(log_q + log_w, 1)[:, 0], x)
        c = process.at(ts[-1]).broadcast(x)
        a, s = c.alpha, c.sigma
        x = (x + s * s * (k * s1 + (1 - k) * s2)) / a  # Tweedie with the combined score
    nfe = pair.nfe - nfe0
    return SuperpositionResult(x=x, log_q=log_q, kappa=torch.stack(kappas), t_end=float(ts[-1]), nfe=nfe, x_end=x_end)


class _ScoreTap(DenoiserBase):
    """Remembers the last prediction's input and score (what the Ito increment needs)."""

    def __init__(self, den: DenoiserBase):
        self._wrap(den)
        self.last: tuple[Tensor, Tensor] | None = None  # (x, score at x)

    def predict(self, x: Tensor, t) -> Prediction:
        pred = self.den.predict(x, t)
        self.last = (x, pred.eps * expand_to(-1.0 / self.process.sigma(t), x))
        return pred


def ito_log_density(den: DenoiserBase, x_T: Tensor, steps: int = 200, ts=None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Run the model's own reverse SDE from ``x_T`` (Euler-Maruyama over the grid's positive
    points, ``solvers.EulerMaruyama``) and return ``(x_end, delta)``: the end point and the
    Ito estimate of ``log q_{t_end}(x_end) - log q_{t_0}(x_T)`` ``[B]``."""
    process = den.process
    ts, _ = _positive_grid(process, steps, ts)
    rng = SampleRNG.from_seed(seed, batch=x_T.shape[0], device=x_T.device)
    tap = _ScoreTap(den)
    x = x_T
    delta = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for step in iterate(tap, EulerMaruyama(), x, ts, rng):
        grid, i = step.state.grid, step.i
        x_prev, score = tap.last
        delta = delta + ito_increment(x_prev, step.x - x_prev, grid.t[i] - grid.t[i + 1], score,
                                      grid.f[i], grid.g2[i]).double()
        x = step.x
    return x, delta
