"""Time grids: descending 1-D float64 tensors of ``t`` (docs/architecture.md).

Every builder takes ``(process, steps)`` and returns ``steps + 1`` points from
``t_max`` down. If the process stops short of ``t = 0`` (``process.t_min > 0``) the
grid reaches ``t_min`` in ``steps - 1`` intervals and its last point is ``t = 0``: that
last step returns the denoised estimate (``final_zero=False`` keeps all ``steps``
intervals above ``t_min`` instead).

- ``uniform``: uniform in ``t``.
- ``logsnr``: uniform in log-SNR (DPM-Solver, Lu et al. 2022).
- ``karras``: uniform in ``(sigma/alpha) ** (1/rho)`` (EDM, Karras et al. 2022, eq. 5).
- ``quadratic``: quadratic in ``t`` (DDIM, Song et al. 2021, appendix D.2).
- ``flow_shift``: uniform ``t`` pushed toward noise by ``shift * t / (1 + (shift-1) t)``
  (Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3).
- ``custom``: a user tensor, checked.

Names resolve through one ``Registry("time grid")`` (``get``, ``names``). This module
imports nothing from the solvers or the sampling loop: ``sample`` calls ``resolve``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..process import EDM, VE, Interpolant, Process, RectifiedFlow
from ..registry import Registry

_F64 = torch.float64


def validate(ts) -> Tensor:
    """Check a user grid: 1-D, at least two points, finite, strictly descending, in ``[0, 1]``."""
    ts = torch.as_tensor(ts, dtype=_F64).detach().cpu()
    if ts.dim() != 1 or ts.numel() < 2:
        raise ValueError(f"a time grid must be 1-D with at least 2 points, got shape {tuple(ts.shape)}")
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("a time grid must be finite")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"a time grid must strictly descend (t = 1 is noise, t = 0 is data); got {ts.tolist()}")
    if float(ts[0]) > 1.0 or float(ts[-1]) < 0.0:
        raise ValueError(f"a time grid must lie in [0, 1]; got [{float(ts[-1])}, {float(ts[0])}]")
    return ts


custom = validate


def _bounds(process: Process, steps: int, t_max, t_min, final_zero: bool) -> tuple[float, float, int, bool]:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    t_max = float(process.t_max if t_max is None else t_max)
    t_min = float(process.t_min if t_min is None else t_min)
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    append_zero = final_zero and t_min > 0.0
    n_points = steps if append_zero else steps + 1
    if n_points < 2:  # a single step straight to t = 0
        return t_max, 0.0, 2, False
    return t_max, t_min, n_points, append_zero


def _finish(ts: Tensor, append_zero: bool) -> Tensor:
    if append_zero:
        ts = torch.cat([ts, torch.zeros(1, dtype=_F64)])
    return validate(ts)


def _in_variable(process, steps, t_max, t_min, final_zero, forward, inverse, snr_spaced=False):
    """Uniform in ``u = forward(t)`` between the bounds, mapped back by ``inverse``."""
    hi, lo, n, append_zero = _bounds(process, steps, t_max, t_min, final_zero)
    if n == 2:
        return _finish(torch.tensor([hi, lo], dtype=_F64), append_zero)
    if snr_spaced:
        for end in (hi, lo):
            if not bool(torch.isfinite(process.logsnr(torch.tensor(end, dtype=_F64)))):
                raise ValueError(f"this grid is spaced in log-SNR, which is infinite at t={end} for {process!r}; "
                                 f"pass t_max < 1 and t_min > 0, or use 'uniform' or 'flow-shift'")
    u = torch.linspace(0.0, 1.0, n, dtype=_F64)
    f_hi, f_lo = forward(torch.tensor(hi, dtype=_F64)), forward(torch.tensor(lo, dtype=_F64))
    ts = inverse(f_hi * (1 - u) + f_lo * u)
    ts[0], ts[-1] = hi, lo
    return _finish(ts, append_zero)


def uniform(process: Process, steps: int, t_max=None, t_min=None, final_zero: bool = True) -> Tensor:
    ident = lambda t: t  # noqa: E731
    return _in_variable(process, steps, t_max, t_min, final_zero, ident, ident)


def logsnr(process: Process, steps: int, t_max=None, t_min=None, final_zero: bool = True) -> Tensor:
    return _in_variable(process, steps, t_max, t_min, final_zero, process.logsnr, process.t_from_logsnr,
                        snr_spaced=True)


def karras(process: Process, steps: int, rho: float = 7.0, t_max=None, t_min=None,
           final_zero: bool = True) -> Tensor:
    fwd = lambda t: torch.exp(-0.5 * process.logsnr(t) / rho)  # noqa: E731  (sigma/alpha)^(1/rho)
    inv = lambda u: process.t_from_logsnr(-2.0 * rho * torch.log(u))  # noqa: E731
    return _in_variable(process, steps, t_max, t_min, final_zero, fwd, inv, snr_spaced=True)


def quadratic(process: Process, steps: int, t_max=None, t_min=None, final_zero: bool = True) -> Tensor:
    return _in_variable(process, steps, t_max, t_min, final_zero, torch.sqrt, torch.square)


def flow_shift(process: Process, steps: int, shift: float = 3.0, t_max=None, t_min=None,
               final_zero: bool = True) -> Tensor:
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    base = uniform(process, steps, t_max, t_min, final_zero)
    return validate(shift * base / (1.0 + (shift - 1.0) * base))


#: The named grid families; ``get`` / ``names`` read it.
REGISTRY = Registry("time grid", {"uniform": uniform, "logsnr": logsnr, "karras": karras, "quadratic": quadratic,
                                  "flow-shift": flow_shift})


def names() -> list[str]:
    return REGISTRY.names()


def get(name: str, process: Process, steps: int, **options) -> Tensor:
    """A grid by name (``uniform``, ``logsnr``, ``karras``, ``quadratic``, ``flow-shift``);
    unknown names raise ``ValueError`` naming the valid ones."""
    return REGISTRY.factory(name)(process, steps, **options)


def default_builder(process: Process):
    """The grid family that suits a process: uniform for flows, general interpolants and
    zero-terminal-SNR tables (whose log-SNR is infinite at ``t = 1``, as a flow's), Karras for
    VE/EDM (as k-diffusion), log-SNR uniform otherwise (as DPM-Solver)."""
    if isinstance(process, (RectifiedFlow, Interpolant)) or getattr(process, "zero_terminal", False):
        return uniform
    if isinstance(process, (VE, EDM)):
        return karras
    return logsnr


def default(process: Process, steps: int) -> Tensor:
    """The grid ``sample`` uses when none is given (``default_builder(process)``)."""
    return default_builder(process)(process, steps)


def resolve(process: Process, steps: int, ts=None) -> Tensor:
    """The grid a sampler runs on: ``ts`` checked (``validate``) if given, else ``default``."""
    return validate(ts) if ts is not None else default(process, steps)

