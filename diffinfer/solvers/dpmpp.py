"""DPM-Solver++ multistep in data prediction: 2M, 3M and the 2M SDE variant.

Lu, Zhou, Bao, Chen, Li & Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models" (2022), Algorithm 2 (multistep second order) and the third-order
multistep, in the form of diffusers' ``DPMSolverMultistepScheduler``
(``algorithm_type='dpmsolver++'``, ``solver_type='midpoint'``); the SDE variant is
``algorithm_type='sde-dpmsolver++'`` (also k-diffusion ``sample_dpmpp_2m_sde``). The 3M
update's second-difference weight is corrected by default so that it is third order
(``third_order='taylor'``); ``third_order='diffusers'`` reproduces diffusers' (second-order)
weights bit for bit (see ``dpmpp_correction``).

With ``lambda = log(alpha / sigma)`` (half the log-SNR) and ``h = lambda_next - lambda``,
every update is the first-order (DDIM) step plus corrections built from divided
differences of the data predictions ``m_k = x0_hat(x_{t_k}, t_k)``:

    x_next = ddim(x, m_0) + alpha_next * sum_k c_k(h) D_k

The first-order part is the DDIM step (``ddim``) written with ``exp(-h) = (a0 s1)/(s0 a1)``, finite
where ``alpha = 0`` (rectified flow at ``t = 1``, ``lambda = -inf``). A history point whose
``lambda`` is ``-inf`` is infinitely far away in ``lambda``: its divided difference is
zero, so it carries no slope information and is dropped from the history (the step uses
the lower order the remaining points allow; for 2M this is exactly what diffusers'
``inf`` arithmetic gives).
"""
from __future__ import annotations

import math

from torch import Tensor

from ..grids.grid import Grid
from .base import MultistepState, Solver, combine
from .ddim import ddim_at

#: diffusers lowers the order of the last steps only for grids shorter than this
LOWER_ORDER_FINAL_BELOW = 15


def usable_history(grid: Grid, history) -> tuple[list[Tensor], list[float]]:
    """The history's data predictions and their ``lambda`` (Python floats from the grid;
    newest last), without points at ``lambda = -inf`` (they carry no slope information; see
    the module docstring)."""
    preds, lams = [], []
    for k, m in history:
        if math.isfinite(grid.lam[k]):
            preds.append(m)
            lams.append(grid.lam[k])
    return preds, lams


def multistep_order(order: int, n_usable: int, i: int, n_steps: int, lower_order_final: bool) -> int:
    """The order of step ``i`` of ``n_steps``: warm-up (at most one more than the usable history)
    and, as diffusers, order 1 / at most 2 for the last two steps of grids shorter than 15."""
    k = min(order, n_usable)
    if lower_order_final and n_steps < LOWER_ORDER_FINAL_BELOW:
        if i == n_steps - 1:
            k = 1
        elif i == n_steps - 2:
            k = min(k, 2)
    return max(k, 1)


THIRD_ORDER_FORMS = ("taylor", "diffusers")


def dpmpp_correction(order: int, h: float, lams: list[float], third_order: str = "taylor") -> list[float]:
    """Weights of the DPM-Solver++ multistep correction of order 2 (midpoint form) or 3, per
    data prediction (newest last, ``lams`` their ``lambda``; ``h`` the step in ``lambda``,
    finite): the correction is ``alpha_next * sum_j w_j m_j`` (Python floats, float64).

    With ``r0 = (lam_0 - lam_1)/h``, ``r1 = (lam_1 - lam_2)/h`` and the divided differences
    ``d1_0 = (m0 - m1)/r0``, ``d1_1 = (m1 - m2)/r1``: order 2 is ``-(e^{-h} - 1)/2 d1_0``;
    order 3 is ``c1 D1 + c2 D2`` with ``D1 = d1_0 + r0/(r0 + r1) (d1_0 - d1_1)``,
    ``D2 = (d1_0 - d1_1)/(r0 + r1)``, ``c1 = (e^{-h} - 1)/h + 1``. ``D2`` estimates
    ``h^2 x0''/2`` while the weight ``c2 = -(phi_2/h - 1/2)`` is that of ``h^2 x0''``:
    ``'taylor'`` doubles it, so the update is exact for an ``x0_hat`` quadratic in ``lambda``
    (third order); ``'diffusers'`` keeps the single weight of diffusers'
    ``DPMSolverMultistepScheduler`` and of the DPM-Solver reference code (bit-compatible up to
    round-off, but only second order)."""
    em1 = math.expm1(-h)  # exp(-h) - 1
    r0 = (lams[-1] - lams[-2]) / h
    if order == 2:
        c = -0.5 * em1 / r0  # times d1_0 * r0 = m0 - m1
        return [-c, c]
    r1 = (lams[-2] - lams[-3]) / h
    c1 = em1 / h + 1.0
    c2 = -((em1 + h) / (h * h) - 0.5) * (2.0 if third_order == "taylor" else 1.0)
    a = (c1 * r0 + c2) / (r0 + r1)  # correction = (c1 + a) d1_0 - a d1_1
    w0, w1 = (c1 + a) / r0, a / r1
    return [w1, -w0 - w1, w0]


class DPMSolverPP(Solver):
    """DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order
    multistep), data prediction, 1 NFE per step.

    ``third_order='taylor'`` (default) weights the second divided difference so that the
    3M step is exact for a quadratic ``x0_hat(lambda)``; ``'diffusers'`` reproduces
    diffusers' ``DPMSolverMultistepScheduler(solver_order=3)`` bit for bit, whose weight is
    half that and which is therefore second order (see ``dpmpp_correction``).

    The first step is first order (warm-up), the second at most second order; with
    ``lower_order_final`` the last two steps of grids shorter than 15 steps use order 1 and
    at most 2, as diffusers. The step to ``t = 0`` returns the denoised estimate.
    """

    stochastic = False
    State = MultistepState

    def __init__(self, order: int = 2, lower_order_final: bool = True, third_order: str = "taylor"):
        if order not in (2, 3):
            raise ValueError(f"DPM-Solver++ multistep order must be 2 or 3, got {order!r}")
        if third_order not in THIRD_ORDER_FORMS:
            raise ValueError(f"unknown third_order form {third_order!r}; valid: {', '.join(THIRD_ORDER_FORMS)}")
        self.order = int(order)
        self.name = f"dpmpp-{order}m"
        self.lower_order_final = bool(lower_order_final)
        self.third_order = third_order

    def options(self) -> dict:
        opts = {"order": self.order, "lower_order_final": self.lower_order_final}
        if self.order == 3:
            opts["third_order"] = self.third_order
        return opts

    def _first_order(self, x: Tensor, i: int, grid: Grid) -> tuple[object, float, float]:
        """``(w_x, w_x0, w_z)`` of the first-order (DDIM, ``eta = 0``) part; ``w_x`` the grid's
        ``sigma`` ratio as a 0-d tensor of ``x``'s dtype."""
        return grid.on(x).sigma_ratio[i], ddim_at(grid, i).w_x0, 0.0

    def _correction(self, order: int, h: float, lams: list[float]) -> list[float]:
        return dpmpp_correction(order, h, lams, self.third_order)

    def step(self, den, x: Tensor, i: int, state: MultistepState):
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]
        state = state.replace(history=state.push(i, x0, self.order))
        if grid.t[i + 1] == 0.0:  # the denoised estimate
            return x0, state
        w_x, w_x0, w_z = self._first_order(x, i, grid)
        m, lams = usable_history(grid, state.history)
        order = multistep_order(self.order, len(m), i, grid.steps, self.lower_order_final)
        preds, weights = [x0], [w_x0]
        if order > 1:
            h = grid.lam[i + 1] - grid.lam[i]  # finite: both ends finite here
            preds = m[-order:]
            weights = [grid.alpha[i + 1] * w for w in self._correction(order, h, lams[-order:])]
            weights[-1] += w_x0  # m[-1] is x0
        noise = state.rng.randn_like(x) if self.stochastic else None  # per-row (DPMSolverPP2MSDE)
        return combine(x, w_x, preds, weights, noise, w_z), state


class DPMSolverPP2MSDE(DPMSolverPP):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", section 5 / appendix; diffusers
    ``algorithm_type='sde-dpmsolver++'``, midpoint; k-diffusion ``sample_dpmpp_2m_sde``).

    The first-order part is the exact Gaussian step of the reverse SDE with the data
    prediction frozen, which is DDPM's ancestral step (``ddim`` with ``eta = 1``:
    ``x' = (s1/s0) e^{-h} x + a1 (1 - e^{-2h}) x0 + s1 sqrt(1 - e^{-2h}) z``); the
    second-order correction adds ``0.5 a1 (1 - e^{-2h}) D1``. Noise ``z`` comes from each
    row's own stream (``state.rng``). ``order = 2`` names its multistep drift, as
    k-diffusion does; as a stochastic scheme it converges in distribution, not pathwise.
    """

    stochastic = True

    def __init__(self, lower_order_final: bool = True):
        super().__init__(order=2, lower_order_final=lower_order_final)
        self.name = "dpmpp-2m-sde"

    def options(self) -> dict:
        return {"lower_order_final": self.lower_order_final}

    def _first_order(self, x: Tensor, i: int, grid: Grid) -> tuple[object, float, float]:
        """The exact Gaussian step with the prediction frozen: DDIM with ``eta = 1``."""
        w = ddim_at(grid, i, eta=1.0)
        return w.w_x, w.w_x0, w.noise

    def _correction(self, order: int, h: float, lams: list[float]) -> list[float]:
        """``0.5 (1 - e^{-2h}) D1`` with ``D1 = (m0 - m1) / r0``."""
        c = -0.5 * math.expm1(-2.0 * h) / ((lams[-1] - lams[-2]) / h)
        return [-c, c]


def dpmpp_2m(**options) -> DPMSolverPP:
    return DPMSolverPP(order=2, **options)


def dpmpp_3m(**options) -> DPMSolverPP:
    """DPM-Solver++(3M); ``third_order='diffusers'`` for diffusers' (second-order) weights."""
    return DPMSolverPP(order=3, **options)


__all__ = ["THIRD_ORDER_FORMS", "DPMSolverPP", "DPMSolverPP2MSDE", "dpmpp_2m", "dpmpp_3m",
           "usable_history", "dpmpp_correction", "multistep_order", "LOWER_ORDER_FINAL_BELOW"]
