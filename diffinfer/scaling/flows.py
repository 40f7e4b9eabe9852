"""Inference-time scaling for flow models: stochastic sampling, path conversion, RBF.

Kim et al. 2025, "Inference-Time Scaling for Flow Models via Stochastic Generation and
Rollover Budget Forcing":

- ``FlowSDE``: a velocity (or any) model sampled by the reverse SDE that has the
  probability-flow ODE's marginals for a *chosen* diffusion coefficient ``eps(t)``:
  ``dx = [v(x, t) - (eps(t)^2 / 2) grad log p_t(x)] dt + eps(t) dW`` integrated backward
  in ``t`` by Euler-Maruyama (Song et al. 2021, eq. 13 family; Kim et al. section 4.1).
  ``eps = 0`` is the Euler ODE step; the score comes from the same prediction.
- ``PathConversion``: the same model on another path (Kim et al. section 4.2, "interpolant
  conversion"; Albergo et al. 2023): a point ``x'`` at ``t'`` of path ``Q`` is the point
  ``x = (sigma_P(t) / sigma_Q(t')) x'`` of path ``P`` at the ``t`` with the same log-SNR, and
  ``(x0, eps)`` are the same for both. So a rectified-flow model can be sampled on a VP
  path (more diverse stochastic samples).
- ``rollover_budget_forcing``: a fixed NFE budget spread over the steps; at each step
  candidates of the stochastic transition are drawn until one beats the current reward of
  ``x0_hat``, and unused budget rolls over to the next step (Kim et al. section 4.3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .. import solvers as solver_registry
from ..denoiser import DenoiserBase, Prediction
from ..process import Process, as_time, expand_to
from ..rng import SampleRNG
from ..loop import initial_noise, rollout
from ..solvers.base import Solver, SolverState, combine
from .common import ScalingResult, Tap, grid, sample_shape
from .verifiers import as_verifier


@dataclass(frozen=True)
class FlowSDEState(SolverState):
    """``diffusion``: ``e(t_k)`` at each grid point (host floats)."""

    diffusion: tuple[float, ...] = ()


class FlowSDE(Solver):
    """Euler-Maruyama on the marginal-preserving reverse SDE with diffusion ``eps(t)``.

    Args:
        diffusion: ``eps(t)`` as a callable of float64 ``t``; default ``noise * sigma(t)``
            (finite at both ends for rectified flow, unlike the process's own ``g(t)``).
        noise: the scale of the default diffusion (0 gives the Euler ODE step).
    """

    name = "flow-sde"
    order = 1
    State = FlowSDEState

    def __init__(self, diffusion: Callable[[Tensor], Tensor] | None = None, noise: float = 1.0):
        if not noise >= 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.diffusion, self.noise = diffusion, float(noise)
        self.stochastic = diffusion is not None or self.noise > 0

    def options(self) -> dict:
        return {"noise": self.noise} if self.diffusion is None else {"diffusion": self.diffusion}

    def coefficient(self, process: Process, t) -> float:
        """The diffusion ``e(t)``: ``diffusion(t)``, or ``noise * sigma(t)``."""
        t = as_time(t)
        return float(self.diffusion(t)) if self.diffusion is not None else self.noise * float(process.sigma(t))

    def initial_fields(self, grid, x) -> dict:
        """The diffusion ``e(t_k)`` at every grid point (host floats, evaluated once per run)."""
        return {"diffusion": tuple(self.coefficient(grid.process, t) for t in grid.ts)}

    @staticmethod
    def weights(grid, i: int, e: float) -> tuple[float, float, float]:
        """``(w_x, w_x0, w_z)`` of the step from grid point ``i`` in data-prediction form,
        ``x' = w_x x + w_x0 x0 + w_z z`` with diffusion ``e`` there: with
        ``eps = (x - a x0)/s`` and ``k = s' + e^2/(2 s)``, the step below is
        ``(1 - h k/s) x + h (k a/s - a') x0 + e sqrt(h) z``."""
        a, s, da, ds = grid.alpha[i], grid.sigma[i], grid.d_alpha[i], grid.d_sigma[i]
        h = grid.t[i] - grid.t[i + 1]
        k = ds + 0.5 * e * e / s
        return 1.0 - h * k / s, h * (k * a / s - da), e * math.sqrt(h)

    def step(self, den, x: Tensor, i: int, state: "FlowSDEState"):
        """``x' = x - h (v - eps^2/2 * score) + eps sqrt(h) z`` with ``h = t - t_next``,
        ``v = a' x0 + s' eps`` and ``score = -eps / s`` from one prediction; the weights
        (``weights``) are host floats of the grid, so a step reads no tensor."""
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]
        if grid.t[i + 1] == 0.0:
            return x0, state
        w_x, w_x0, w_z = self.weights(grid, i, state.diffusion[i])
        noise = state.rng.randn_like(x) if w_z > 0 else None
        return combine(x, w_x, (x0,), (w_x0,), noise, w_z), state


class PathConversion(DenoiserBase):
    """Present ``den`` (trained on its own process ``P``) as a model on ``process`` (``Q``).

    ``predict(x', t')`` maps ``t'`` to ``t = P.t_from_logsnr(Q.logsnr(t'))`` and ``x'`` to
    ``(sigma_P(t)/sigma_Q(t')) x'`` and returns the inner ``(x0, eps)`` unchanged (both are
    path-invariant). Shares the inner model's NFE counter.
    """

    def __init__(self, den: DenoiserBase, process: Process):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a diffinfer Process, got {type(process).__name__}")
        self.den, self.process = den, process
        self._counter = den._counter

    def source_time(self, t) -> Tensor:
        """The time on the model's own path with the same log-SNR as ``t`` on the new one."""
        return self.den.process.t_from_logsnr(self.process.logsnr(as_time(t))).clamp(0.0, 1.0)

    def predict(self, x: Tensor, t) -> Prediction:
        t = as_time(t)
        t_src = self.source_time(t)
        ratio = self.den.process.sigma(t_src) / self.process.sigma(t)
        return self.den.predict(expand_to(ratio, x) * x, t_src)

    def select(self, idx: Tensor) -> "PathConversion":
        return PathConversion(self.den.select(idx), self.process)


class PredictionCache(DenoiserBase):
    """Reuse one stored prediction: a call at ``t_ref`` whose rows all equal ``x_ref`` returns
    the stored ``(x0, eps)`` without a network call (RBF scores a candidate with ``x0_hat``
    and then steps from it: the second evaluation is free)."""

    def __init__(self, den: DenoiserBase):
        self._wrap(den)
        self.ref: tuple[Tensor, Tensor, Prediction] | None = None

    def store(self, x: Tensor, t, pred: Prediction) -> None:
        self.ref = (x, as_time(t), pred)

    def predict(self, x: Tensor, t) -> Prediction:
        if self.ref is not None:
            x_ref, t_ref, pred = self.ref
            t_value = as_time(t)
            if t_value.dim() == 0 and bool(t_value == t_ref) and x.shape[1:] == x_ref.shape[1:] and torch.equal(x, x_ref.expand_as(x)):
                return Prediction(pred.x0.expand_as(x), pred.eps.expand_as(x))
        return self.den.predict(x, t)


def rollover_budget_forcing(den: DenoiserBase, reward, budget: int, shape, solver=None, steps: int = 20,
                            ts=None, chunk: int = 1, seed: int = 0, dtype=torch.float32,
                            device="cpu") -> ScalingResult:
    """Rollover Budget Forcing (Kim et al. 2025, Algorithm 1) for one sample.

    ``budget`` per-sample NFE, split evenly over the stochastic steps. At step ``i``
    candidates ``x_{i+1}`` are drawn ``chunk`` at a time from the solver's transition and
    scored by ``reward(x0_hat(x_{i+1}))`` (1 NFE + 1 verifier call each); the first one that
    beats the current reward is taken and the budget it did not use rolls over; if none
    does, the best drawn is taken. The last stochastic step spends all that is left and
    takes its best candidate; the final step (to ``t = 0``) is deterministic.
    """
    solver = FlowSDE() if solver is None else solver_registry.get(solver)
    if not solver.stochastic:
        raise ValueError(f"rollover budget forcing draws candidates of a stochastic transition; "
                         f"{solver.name!r} is deterministic (use FlowSDE(noise>0) or ddpm)")
    verifier = as_verifier(reward)
    calls0 = verifier.calls
    tap = Tap(den)
    cached = PredictionCache(tap)
    ts = grid(den.process, steps, ts)
    n_int = ts.numel() - 1
    rng = SampleRNG.from_seed(seed, batch=1, device=device)
    x = initial_noise(tap, (1,) + sample_shape(shape), ts, rng, dtype=dtype, device=device)
    state = solver.init(cached, x, ts, rng)  # branched below: one step per candidate (rollout)
    pred = tap.predict(x, ts[0])
    best_r = verifier(pred.x0)
    per_step = int(budget) // max(n_int - 1, 1)
    if per_step < 1:
        raise ValueError(f"budget {budget} is below one candidate per step ({n_int - 1} steps)")
    carry, used_per_step = 0, []
    for i in range(n_int - 1):
        cached.store(x, ts[i], pred)
        allowed, used = per_step + carry, 0
        cands, preds, rewards = [], [], []
        while used < allowed:
            m = min(int(chunk), allowed - used)
            idx = torch.zeros(m, dtype=torch.long)
            st = state.select(idx)
            st = st.replace(rng=st.rng.fork(1000 * i + used + 1))
            xc, st = rollout(cached, solver, x[idx], ts, i, i + 1, state=st)
            pc = tap.predict(xc, ts[i + 1])
            rc = verifier(pc.x0)
            used += m
            cands.append((xc, st))
            preds.append(pc)
            rewards.append(rc)
            if i < n_int - 2 and bool((rc > best_r).any()):
                break  # the last stochastic step has no successor: it spends what is left
        r_all = torch.cat(rewards)
        better = (r_all > best_r).nonzero()
        j = int(better[0]) if better.numel() and i < n_int - 2 else int(torch.argmax(r_all.double()))
        # locate candidate j in its chunk
        for (xc, st), pc, rc in zip(cands, preds, rewards):
            if j < xc.shape[0]:
                x = xc[j:j + 1]
                state = st.select(torch.tensor([j]))
                pred = Prediction(pc.x0[j:j + 1], pc.eps[j:j + 1])
                best_r = rc[j:j + 1]
                break
            j -= xc.shape[0]
        carry = allowed - used
        used_per_step.append(used)
    cached.store(x, ts[n_int - 1], pred)
    x, _ = rollout(cached, solver, x, ts, n_int - 1, n_int, state=state)
    r = verifier(x)
    return ScalingResult(x=x, reward=r, nfe=tap.rows, verifier_calls=verifier.calls - calls0, method="rbf",
                         info={"used_per_step": used_per_step})
