"""An independent reference for the probability-flow ODE endpoint.

``pf_ode_solution`` integrates ``dx/dt = den.velocity(x, t)`` (Song et al. 2021, "Score-Based
Generative Modeling through SDEs", eq. 13, written as ``a' x0_hat + s' eps_hat``) with
SciPy's ``solve_ivp`` and the 8th-order Dormand-Prince method DOP853 (Hairer, Norsett &
Wanner, "Solving Ordinary Differential Equations I", section II.10) in float64. It shares
no code with ``diffinfer.solvers``, so tests and benchmarks can measure their error against it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..process import as_time


def pf_ode_solution(den, x: Tensor, t_from, t_to, rtol: float = 1e-10, atol: float = 1e-10) -> Tensor:
    """``x`` ``[B, ...]`` at ``t_from`` carried along the probability-flow ODE to ``t_to``.

    The whole batch is one system (the reference error norm is joint); the result has
    ``x``'s shape and dtype. ``t_to`` must be where the velocity is finite (``t > 0`` for
    VP processes, whose ``sigma'`` is infinite at ``t = 0``).
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError("x must be a tensor shaped [B, ...]")
    t0, t1 = float(as_time(t_from)), float(as_time(t_to))
    if not (0.0 <= t0 <= 1.0 and 0.0 <= t1 <= 1.0):
        raise ValueError(f"times must lie in [0, 1], got t_from={t0}, t_to={t1}")
    if t0 == t1:
        return x.clone()
    from scipy.integrate import solve_ivp

    shape, dtype, device = x.shape, x.dtype, x.device

    def velocity(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=torch.float64)
        v = den.velocity(xt, torch.tensor(t, dtype=torch.float64))  # [B, ...]
        return v.detach().to(torch.float64).cpu().numpy().reshape(-1)

    y0 = x.detach().to(torch.float64).cpu().numpy().reshape(-1)
    sol = solve_ivp(velocity, (t0, t1), y0, method="DOP853", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"reference integration failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(shape).to(device=device, dtype=dtype)


__all__ = ["pf_ode_solution"]
