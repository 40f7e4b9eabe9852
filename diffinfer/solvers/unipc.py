"""UniPC: unified predictor-corrector multistep solver, data prediction.

Zhao, Bai, Rao, Zhou & Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models" (NeurIPS 2023), Algorithms 1-3 (UniP-p, UniC-p) with the
``B(h)`` choices ``bh1`` (``B(h) = h``) and ``bh2`` (``B(h) = e^h - 1``), in the form of
diffusers' ``UniPCMultistepScheduler`` (``predict_x0=True``).

Each step evaluates the model once, at the predicted point ``x~_{i+1}``; that evaluation
first corrects ``x~_{i+1}`` (UniC, using the previous point's history) and then drives the
next prediction (UniP), so NFE = steps. The corrected point is not re-evaluated.

Coefficients: with ``hh = -h`` and ``g_k = k! h phi_{k+1}(hh)`` the products
``B(h) rho`` solve ``R (B(h) rho) = g``, so ``B(h)`` cancels except in the two simplified
cases of the paper, ``rho = 1/2`` for the order-2 predictor and the order-1 corrector,
which are where ``bh1`` and ``bh2`` differ. Where ``alpha = 0`` at the step's start
(rectified flow at ``t = 1``) ``h = inf``: the predictor is first order there (no finite
history), and the order-1 corrector uses the exact limit ``B(h) rho -> -1`` of the
unsimplified coefficient (``B(h) = h`` is infinite), which puts all the weight on the
new point's prediction. History points at ``lambda = -inf`` are dropped as in ``dpmpp``.
"""
from __future__ import annotations

import torch

from ..process import expand_to
from .base import Solver, State, points
from .ddim import ddim_step
from .dpmpp import push_history

Tensor = torch.Tensor
VARIANTS = ("bh1", "bh2")


def _phi_products(h: Tensor, order: int) -> list[Tensor]:
    """``g_k = k! * h * phi_{k+1}`` terms of diffusers' recursion for ``k = 1..order``
    (float64; finite for ``h = inf``)."""
    hh = -h
    h_phi = torch.expm1(hh) / hh - 1.0
    out, factorial = [], 1
    for k in range(1, order + 1):
        out.append(h_phi * factorial)
        factorial *= k + 1
        h_phi = h_phi / hh - 1.0 / factorial
    return out


def _b_of_h(h: Tensor, variant: str) -> Tensor:
    return -h if variant == "bh1" else torch.expm1(-h)


def unipc_weights(h: Tensor, rks: list[Tensor], order: int, variant: str, corrector: bool) -> list[float]:
    """The weights ``B(h) rho_k`` multiplying the divided differences.

    Predictor (``corrector=False``): ``order - 1`` history ratios ``rks``; corrector: the
    same plus the new point (ratio 1), ``order`` weights in all."""
    n = len(rks) + (1 if corrector else 0)
    if n == 0:
        return []
    simplified = (not corrector and order == 2) or (corrector and order == 1)
    if simplified and bool(torch.isfinite(h)):
        return [float(0.5 * _b_of_h(h, variant))] * n
    g = _phi_products(h, n)
    ratios = list(rks) + ([torch.ones((), dtype=torch.float64)] if corrector else [])
    R = torch.stack([torch.stack([r ** k for r in ratios]) for k in range(n)])  # [n, n]
    sol = torch.linalg.solve(R, torch.stack(g))
    return [float(v) for v in sol]


class UniPC(Solver):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector, data prediction,
    ``variant='bh1'|'bh2'``, ``order=2|3`` (the predictor's order; the corrector adds one
    on interior steps). Warm-up and ``lower_order_final`` as diffusers (the step ``i`` of
    ``n`` uses order ``min(order, n - i)``); 1 NFE per step.
    """

    stochastic = False

    def __init__(self, order: int = 2, variant: str = "bh2", lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown UniPC variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.order = int(order)
        self.variant = variant
        self.lower_order_final = bool(lower_order_final)
        self.name = "unipc"

    def options(self) -> dict:
        return {"order": self.order, "variant": self.variant, "lower_order_final": self.lower_order_final}

    def init(self, den, x, ts, rng=None) -> State:
        state = super().init(den, x, ts, rng)
        state["history"], state["history_i"] = [], []
        state["last_x"] = None  # [B, ...]: the point the previous prediction started from
        state["last_order"] = 0
        return state

    @staticmethod
    def _differences(state: State, h: Tensor, lam0: Tensor):
        """The newest prediction ``m_0`` and the divided differences ``(m_k - m_0) / r_k``
        with ratios ``r_k = (lambda_k - lambda_0) / h`` of the older usable history
        (newest first; it stops at a point with ``lambda = -inf``)."""
        grid = state["grid"]
        hist, idx = state["history"], state["history_i"]
        m0 = hist[-1]
        rks, diffs = [], []
        finite = grid.finite("lam")
        for m, k in zip(reversed(hist[:-1]), reversed(idx[:-1])):
            if not finite[k]:
                break
            lam = grid[k].lam
            rk = (lam - lam0) / h
            rks.append(rk)
            diffs.append((m - m0) / float(rk))
        return m0, rks, diffs

    @staticmethod
    def _first_order_again(i: int, state: State) -> Tensor:
        """The first-order (DDIM) step from the previous point ``state['last_x']`` at
        ``ts[i - 1]`` to ``ts[i]`` with its prediction ``m_0``: the base both correctors build on."""
        prev, here = points(state, i - 1)
        x_prev, m0 = state["last_x"], state["history"][-1]
        eps_prev = (x_prev - prev.cast("alpha", x_prev) * m0) / prev.cast("sigma", x_prev)
        return ddim_step(x_prev, prev, here, m0, eps_prev)

    def _correct(self, x: Tensor, m_new: Tensor, i: int, state: State) -> Tensor:
        """UniC: correct ``x`` (the prediction at ``ts[i]``) with the model output there."""
        order = state["last_order"]
        prev, here = points(state, i - 1)
        h = here.lam - prev.lam
        m0, rks, diffs = self._differences(state, h, prev.lam)
        rks, diffs = rks[:order - 1], diffs[:order - 1]
        weights = unipc_weights(h, rks, len(rks) + 1, self.variant, corrector=True)
        out = self._first_order_again(i, state)
        a1 = here.cast("alpha", x)
        for w, d in zip(weights, diffs + [m_new - m0]):
            out = out - a1 * w * d
        return out

    def step(self, den, x: Tensor, i: int, state: State):
        """Evaluate at the predicted point, correct it (``i > 0``), predict the next point."""
        here, there = points(state, i)
        x0, eps = den.predict(x, here.t)  # [B, ...]: the model at the (uncorrected) point
        if i > 0 and state["last_x"] is not None:
            x = self._correct(x, x0, i, state)
        push_history(state, x0, i, max(self.order, 2))
        state["last_x"] = x
        if float(there.t) == 0.0:  # the denoised estimate
            state["last_order"] = 1
            return x0, state
        if not bool(here.alpha == 0):  # eps consistent with the corrected x
            eps = (x - here.cast("alpha", x) * x0) / here.cast("sigma", x)
        return self._predict(x, x0, eps, i, state), state

    def _predict(self, x: Tensor, x0: Tensor, eps: Tensor, i: int, state: State) -> Tensor:
        """UniP-p from ``ts[i]`` (corrected ``x``, its prediction ``x0``) to ``ts[i + 1]``."""
        here, there = points(state, i)
        n_steps = state["ts"].numel() - 1
        order = min(self.order, n_steps - i) if self.lower_order_final else self.order
        h = there.lam - here.lam
        _, rks, diffs = self._differences(state, h, here.lam)
        order = max(1, min(order, len(rks) + 1))
        state["last_order"] = order
        x_next = ddim_step(x, here, there, x0, eps)
        weights = unipc_weights(h, rks[:order - 1], order, self.variant, corrector=False)
        a1 = there.cast("alpha", x)
        for w, d in zip(weights, diffs[:order - 1]):
            x_next = x_next - a1 * w * d
        return x_next


__all__ = ["UniPC", "unipc_weights", "VARIANTS"]
