"""Adaptive embedded Runge-Kutta on the probability-flow ODE ``dx/dt = den.velocity(x, t)``.

Between consecutive grid points the ODE is integrated with an embedded pair and
step-size control (Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I",
section II.4): Dormand & Prince 5(4) (J. Comp. Appl. Math. 1980, ``'dopri5'``) or
Bogacki & Shampine 3(2) (Appl. Math. Lett. 1989, ``'bosh3'``), propagating the
higher-order solution. Error control is per sample (RMS over all non-batch dimensions of
``err / (atol + rtol max(|x|, |x_new|))``), each row with its own time and step size (the
step-size rule is a separate ``StepSizeController``, as diffrax separates solver and controller), so
a sample's path does not depend on its batch; rows still integrating are evaluated
together through ``den.select(rows)``. The last stage is not reused (no FSAL), so an
attempted step costs ``stages`` evaluations. The step to ``t = 0`` returns the denoised
estimate (the velocity is singular there for VP processes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..process import expand_to
from ..registry import Registry
from .base import Solver, SolverState


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded Runge-Kutta pair: nodes ``c``, matrix ``a`` (lower-triangular
    rows), weights ``b`` of the propagated order ``order`` and ``b_low`` of the embedded one."""

    c: tuple
    a: tuple
    b: tuple
    b_low: tuple
    order: int
    low_order: int


DOPRI5 = Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((), (1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    b_low=(5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
    order=5, low_order=4)

BOSH3 = Tableau(
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_low=(7 / 24, 1 / 4, 1 / 3, 1 / 8),
    order=3, low_order=2)

METHODS = Registry("adaptive method", {"dopri5": lambda: DOPRI5, "bosh3": lambda: BOSH3})


def rk_attempt(den, x: Tensor, t: Tensor, h: Tensor, tab: Tableau) -> tuple[Tensor, Tensor]:
    """One embedded RK step from per-row times ``t`` ``[b]`` down by ``h`` ``[b]`` (``h > 0``):
    the propagated solution and the error estimate (both ``[b, ...]``)."""
    dt = expand_to(-h, x)  # [b, 1, ...]: time runs backwards
    ks: list[Tensor] = []
    for ci, row in zip(tab.c, tab.a):
        xi = x
        for aij, kj in zip(row, ks):
            if aij != 0.0:
                xi = xi + dt * (aij * kj)
        ks.append(den.velocity(xi, t - ci * h))
    x_new = x + dt * sum(bi * k for bi, k in zip(tab.b, ks) if bi != 0.0)
    err = dt * sum((bi - bl) * k for bi, bl, k in zip(tab.b, tab.b_low, ks) if bi != bl)
    return x_new, err


@dataclass(frozen=True)
class StepSizeController:
    """Integral step-size control (Hairer, Norsett & Wanner I, section II.4): a step is
    accepted where the per-row RMS of ``err / (atol + rtol max(|x|, |x_new|))`` is at most 1,
    and the next step is ``h * clamp(safety * norm^(-1/(q+1)), min_factor, max_factor)``
    (``q`` the embedded order; ``max_factor`` where the error is zero)."""

    rtol: float = 1e-5
    atol: float = 1e-5
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 5.0

    def __post_init__(self):
        if not (self.rtol >= 0 and self.atol >= 0 and self.rtol + self.atol > 0):
            raise ValueError(f"need rtol >= 0, atol >= 0 and one of them > 0, got rtol={self.rtol}, atol={self.atol}")

    def error_norm(self, x: Tensor, x_new: Tensor, err: Tensor) -> Tensor:
        """Per-row RMS of the scaled error (``[b]``, float64, on the CPU); ``inf`` for a row
        whose candidate is not finite."""
        scale = self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())
        norm = (err / scale).to(torch.float64).flatten(1).pow(2).mean(1).sqrt()
        norm = torch.where(torch.isfinite(x_new.flatten(1)).all(1), norm, torch.full_like(norm, float("inf")))
        return norm.cpu()  # step control (times, sizes, counts) lives on the CPU

    def factor(self, norm: Tensor, low_order: int) -> Tensor:
        """The step-size factor per row (``[b]``)."""
        exponent = 1.0 / (low_order + 1)
        factor = torch.where(norm > 0, self.safety * norm.pow(-exponent), torch.full_like(norm, self.max_factor))
        return factor.clamp(self.min_factor, self.max_factor)


@dataclass(frozen=True)
class AdaptiveState(SolverState):
    """Per-row step control: the proposed next step ``h``, ``accepted`` / ``rejected`` step
    counts and ``evals`` (model evaluations each row took part in), all ``[B]`` on the CPU."""

    h: Tensor | None = None
    accepted: Tensor | None = None
    rejected: Tensor | None = None
    evals: Tensor | None = None

    batch_fields: ClassVar[tuple[str, ...]] = ("h", "accepted", "rejected", "evals")


class AdaptiveRK(Solver):
    """Adaptive Dormand-Prince 5(4) / Bogacki-Shampine 3(2) on the probability-flow ODE
    (module docstring) with ``rtol`` / ``atol`` (or a ``controller``); per-sample step control.

    The state keeps per-row ``accepted`` and ``rejected`` step counts, ``evals`` (model
    evaluations each row took part in) and the proposed next step ``h``; ``den.nfe``
    counts batched calls. ``max_steps`` bounds the attempts per grid interval.
    """

    name = "adaptive"
    stochastic = False
    evals_per_step = 0  # variable: see state.evals
    State = AdaptiveState

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 max_steps: int = 10000, safety: float = 0.9, controller: StepSizeController | None = None):
        self.method, self.tableau = method, METHODS.get(method)
        self.order = self.tableau.order
        self.controller = controller or StepSizeController(float(rtol), float(atol), float(safety))
        self.max_steps = int(max_steps)

    def options(self) -> dict:
        c = self.controller
        return {"method": self.method, "rtol": c.rtol, "atol": c.atol, "max_steps": self.max_steps}

    def initial_fields(self, grid, x) -> dict:
        B = x.shape[0]
        return {"h": torch.full((B,), float("nan"), dtype=torch.float64),
                "accepted": torch.zeros(B, dtype=torch.long), "rejected": torch.zeros(B, dtype=torch.long),
                "evals": torch.zeros(B, dtype=torch.long)}

    def step(self, den, x: Tensor, i: int, state: AdaptiveState):
        grid = state.grid
        t, t_next = grid.ts[i], grid.ts[i + 1]
        B = x.shape[0]
        if grid.t[i + 1] == 0.0:  # the denoised estimate
            return den.predict(x, grid.point(i)).x0, state.replace(evals=state.evals + 1)
        tab, control = self.tableau, self.controller
        t_row = torch.full((B,), grid.t[i], dtype=torch.float64)
        h = torch.where(torch.isnan(state.h), t - t_next, state.h)  # [B]
        x = x.clone()
        accepted, rejected, evals = state.accepted.clone(), state.rejected.clone(), state.evals.clone()
        for _ in range(self.max_steps):
            active = (t_row > t_next).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            sub = den if active.numel() == B else den.select(active)
            remaining = t_row[active] - t_next
            h_try = torch.minimum(h[active], remaining)
            if bool((h_try <= 1e-14 * t_row[active].clamp(min=1e-3)).any()):
                raise RuntimeError(f"adaptive step size underflow at t={float(t_row[active].min()):.6g}")
            xa = x[active.to(x.device)]
            x_new, err = rk_attempt(sub, xa, t_row[active], h_try, tab)
            evals[active] += len(tab.c)
            norm = control.error_norm(xa, x_new, err)  # [b]
            ok = norm <= 1.0
            factor = control.factor(norm, tab.low_order)
            acc_rows, rej_rows = active[ok], active[~ok]
            x[acc_rows.to(x.device)] = x_new[ok.to(x.device)]
            landed = h_try >= remaining
            t_row[acc_rows] = torch.where(landed[ok], t_next.expand(int(ok.sum())), t_row[acc_rows] - h_try[ok])
            proposal = h_try * factor
            # a step cut short to land on the grid point does not shrink the validated proposal
            keep = ok & landed
            h[active] = torch.where(keep, torch.maximum(proposal, h[active]), proposal)
            accepted[acc_rows] += 1
            rejected[rej_rows] += 1
        else:
            raise RuntimeError(f"adaptive solver exceeded max_steps={self.max_steps} "
                               f"on [{float(t_next):.6g}, {float(t):.6g}]")
        return x, state.replace(h=h, accepted=accepted, rejected=rejected, evals=evals)


__all__ = ["AdaptiveRK", "AdaptiveState", "StepSizeController", "Tableau", "DOPRI5", "BOSH3", "METHODS", "rk_attempt"]
