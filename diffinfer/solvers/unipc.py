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

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import MultistepState, Solver, combine
from .ddim import ddim_at

VARIANTS = ("bh1", "bh2")


def _phi_products(h: float, order: int) -> list[float]:
    """``g_k = k! * h * phi_{k+1}`` terms of diffusers' recursion for ``k = 1..order``
    (Python floats; finite for ``h = inf``)."""
    hh = -h
    h_phi = math.expm1(hh) / hh - 1.0
    out, factorial = [], 1
    for k in range(1, order + 1):
        out.append(h_phi * factorial)
        factorial *= k + 1
        h_phi = h_phi / hh - 1.0 / factorial
    return out


def _b_of_h(h: float, variant: str) -> float:
    return -h if variant == "bh1" else math.expm1(-h)


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """``a^{-1} b`` for a small dense system (Gaussian elimination with partial pivoting)."""
    n = len(b)
    rows = [list(r) + [v] for r, v in zip(a, b)]  # [n, n + 1] augmented
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        if rows[pivot][col] == 0.0:
            raise ValueError("UniPC: singular ratio matrix (repeated log-SNR values on the grid)")
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            f = rows[r][col] / rows[col][col]
            rows[r] = [u - f * v for u, v in zip(rows[r], rows[col])]
    out = [0.0] * n
    for r in reversed(range(n)):
        out[r] = (rows[r][n] - sum(rows[r][c] * out[c] for c in range(r + 1, n))) / rows[r][r]
    return out


def unipc_weights(h: float, rks: list[float], order: int, variant: str, corrector: bool) -> list[float]:
    """The weights ``B(h) rho_k`` multiplying the divided differences (Python floats).

    Predictor (``corrector=False``): ``order - 1`` history ratios ``rks``; corrector: the
    same plus the new point (ratio 1), ``order`` weights in all. ``B(h) rho`` solves the
    Vandermonde system ``R (B(h) rho) = g`` (``R[k][j] = r_j^k``)."""
    n = len(rks) + (1 if corrector else 0)
    if n == 0:
        return []
    simplified = (not corrector and order == 2) or (corrector and order == 1)
    if simplified and math.isfinite(h):
        return [0.5 * _b_of_h(h, variant)] * n
    ratios = list(rks) + ([1.0] if corrector else [])
    return _solve([[r ** k for r in ratios] for k in range(n)], _phi_products(h, n))


def difference_weights(w_m0: float, a1: float, ws: list[float], ratios: list[float]) -> list[float]:
    """Weights over ``[m_0, p_1, ..., p_n]`` of ``w_m0 m_0 - a1 sum_j ws[j] (p_j - m_0) / ratios[j]``:
    a first-order step's prediction term minus the UniPC divided-difference terms."""
    out = [w_m0]
    for w, r in zip(ws, ratios):
        c = a1 * w / r
        out[0] += c
        out.append(-c)
    return out


@dataclass(frozen=True)
class UniPCState(MultistepState):
    """UniPC's state: the multistep ``history``, the point ``last_x`` ``[B, ...]`` the previous
    prediction started from, and that prediction's order ``last_order``."""

    last_x: Tensor | None = None
    last_order: int = 0

    batch_fields: ClassVar[tuple[str, ...]] = ("history", "last_x")


class UniPC(Solver):
    """UniPC (Zhao et al. 2023): UniP-p predictor + UniC corrector, data prediction,
    ``variant='bh1'|'bh2'``, ``order=2|3`` (the predictor's order; the corrector adds one
    on interior steps). Warm-up and ``lower_order_final`` as diffusers (the step ``i`` of
    ``n`` uses order ``min(order, n - i)``); 1 NFE per step. Corrector and predictor are each
    one ``combine`` of a sample and the data predictions (weights: Python floats).
    """

    stochastic = False
    State = UniPCState

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

    @staticmethod
    def _older(state: UniPCState, k0: int, h: float) -> tuple[Tensor, list[Tensor], list[float]]:
        """The newest prediction ``m_0`` (at grid point ``k0``), the older usable predictions
        (newest first; they stop at a point with ``lambda = -inf``) and their ratios
        ``r_k = (lambda_k - lambda_{k0}) / h``."""
        lam = state.grid.lam
        older, rks = [], []
        for k, m in reversed(state.history[:-1]):
            if not math.isfinite(lam[k]):
                break
            older.append(m)
            rks.append((lam[k] - lam[k0]) / h)
        return state.history[-1][1], older, rks

    def _correct(self, x: Tensor, m_new: Tensor, i: int, state: UniPCState) -> Tensor:
        """UniC: correct ``x`` (the prediction at ``ts[i]``) with the model output there."""
        grid = state.grid
        order = state.last_order
        h = grid.lam[i] - grid.lam[i - 1]
        m0, older, rks = self._older(state, i - 1, h)
        older, rks = older[:order - 1], rks[:order - 1]
        ws = unipc_weights(h, rks, len(rks) + 1, self.variant, corrector=True)
        weights = difference_weights(ddim_at(grid, i - 1).w_x0, grid.alpha[i], ws, rks + [1.0])
        return combine(state.last_x, grid.on(x).sigma_ratio[i - 1], [m0] + older + [m_new], weights)

    def step(self, den, x: Tensor, i: int, state: UniPCState):
        """Evaluate at the predicted point, correct it (``i > 0``), predict the next point."""
        grid = state.grid
        x0 = den.predict(x, grid.point(i)).x0  # [B, ...]: the model at the (uncorrected) point
        if i > 0 and state.last_x is not None:
            x = self._correct(x, x0, i, state)
        state = state.replace(history=state.push(i, x0, max(self.order, 2)), last_x=x)
        if grid.t[i + 1] == 0.0:  # the denoised estimate
            return x0, state.replace(last_order=1)
        x_next, order = self._predict(x, x0, i, state)
        return x_next, state.replace(last_order=order)

    def _predict(self, x: Tensor, x0: Tensor, i: int, state: UniPCState) -> tuple[Tensor, int]:
        """UniP-p from ``ts[i]`` (corrected ``x``, its prediction ``x0``) to ``ts[i + 1]``;
        returns the next point and the order used."""
        grid = state.grid
        order = min(self.order, grid.steps - i) if self.lower_order_final else self.order
        h = grid.lam[i + 1] - grid.lam[i]
        _, older, rks = self._older(state, i, h)
        order = max(1, min(order, len(rks) + 1))
        older, rks = older[:order - 1], rks[:order - 1]
        ws = unipc_weights(h, rks, order, self.variant, corrector=False)
        weights = difference_weights(ddim_at(grid, i).w_x0, grid.alpha[i + 1], ws, rks)
        return combine(x, grid.on(x).sigma_ratio[i], [x0] + older, weights), order


__all__ = ["UniPC", "UniPCState", "unipc_weights", "difference_weights", "VARIANTS"]
