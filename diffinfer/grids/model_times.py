"""Decoupled model times: the model evaluated at a fitted time near each grid time.

LD3's decoupled variant (Tong et al., "Learning to Discretize Denoising Diffusion ODEs",
ICLR 2025) and time-shifted sampling (Li et al., "Alleviating Exposure Bias in Diffusion
Models through Sampling with Shifted Time Steps", ICLR 2024): at grid point ``k`` the model
is evaluated at ``s_k`` instead of ``t_k``, as though the sample were at noise level
``s_k``, while the solver's coefficients stay those of ``t_k``. A few-step solver's sample
drifts off the noise level its grid time names; a shifted evaluation absorbs part of that
drift. ``diffinfer.grids.optimize(..., model_times=True)`` fits the ``s_k``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..denoiser import DenoiserBase, Prediction
from ..process import as_time
from .grid import Grid, GridPoint
from .builders import validate

_F64 = torch.float64


class ModelTimes(DenoiserBase):
    """The model evaluated at decoupled times (see the module doc): at the point ``k`` of
    the grid ``ts`` (``[n + 1]``, last ``0``) the data prediction is ``den``'s at
    ``model_ts[k]`` (``[n]``), i.e. the sample read as one at noise level ``model_ts[k]``;
    the solver's step coefficients stay those of ``ts``. At any other time ``t`` the
    log-offset ``log(s / t)`` is interpolated linearly in ``log t`` between the grid's
    positive points (held constant beyond them), and ``t = 0`` stays ``0``.

    On a grid equal to ``ts`` a solver step reaches ``den``'s grid-point path on
    the grid of model times, so with ``model_ts == ts[:-1]`` the solve is bitwise the
    plain one. Shares ``den``'s NFE counter."""

    def __init__(self, den: DenoiserBase, ts, model_ts):
        if not isinstance(den, DenoiserBase):
            raise TypeError(f"expected a Denoiser (or wrapper), got {type(den).__name__}")
        ts = validate(ts)
        model_ts = torch.as_tensor(model_ts, dtype=_F64).detach().cpu().reshape(-1)  # [n]
        if float(ts[-1]) != 0.0 or model_ts.numel() != ts.numel() - 1:
            raise ValueError(f"model_ts needs one time per positive grid point ({ts.numel() - 1}) of a grid "
                             f"ending at 0; got {model_ts.numel()} for {ts.numel()} grid points")
        if not bool(torch.isfinite(model_ts).all()) or not bool((model_ts > 0).all()) \
                or float(model_ts.max()) > float(den.process.t_max):
            raise ValueError(f"model times must lie in (0, t_max={den.process.t_max}]; got {model_ts.tolist()}")
        self._wrap(den)
        self.ts, self.model_ts = ts, model_ts
        self._ts_host = tuple(ts.tolist())  # compared with a solver grid's ``t`` (no tensor read per step)
        self._model_grid = Grid.of(den.process, torch.cat([model_ts, ts[-1:]]))  # [n + 1], aligned with ts
        knots = torch.log(ts[:-1]).flip(0)  # [n] ascending log t
        self._knots = knots.tolist()
        self._offsets = (torch.log(model_ts) - torch.log(ts[:-1])).flip(0).tolist()  # [n] log(s / t)

    def model_time(self, t) -> Tensor:
        """The model time of ``t`` (float64, ``t``'s shape)."""
        t = as_time(t)
        flat = t.detach().cpu().reshape(-1).numpy()
        with np.errstate(divide="ignore"):
            delta = np.interp(np.log(flat), self._knots, self._offsets)
        s = torch.from_numpy(flat * np.exp(delta)).reshape(t.shape)
        return torch.where(t.cpu() > 0, s, torch.zeros_like(s)).to(t.device)

    def predict(self, x: Tensor, t) -> Prediction:
        if isinstance(t, GridPoint) and t.k < len(self.model_ts) and t.grid.t == self._ts_host:
            return self.den.predict(x, self._model_grid.point(t.k))
        return self.den.predict(x, self.model_time(t))

    def select(self, idx: Tensor) -> "ModelTimes":
        return ModelTimes(self.den.select(idx), self.ts, self.model_ts)


__all__ = ["ModelTimes"]
