"""Region-modulated training noise and its sampling-time correction.

Wang et al., "SAM-DiffSR: Structure-Modulated Diffusion Model for Image Super-Resolution"
(2024): a segmentation mask (from SAM in the paper) is encoded as one value per region, and
that map ``m`` is added to the training noise, ``eps' = eps + m``, ``eps ~ N(0, I)``. So the
noise has a per-region mean shift and an unchanged (identity) covariance, the forward process
is

    x_t = alpha(t) x0 + sigma(t) (eps + m),   x_t | x0 ~ N(alpha x0 + sigma m, sigma^2 I),

and the network learns the modulated noise (``train.denoising_loss`` with ``eps = eps + m``:
``region_loss``). The paper leaves the reverse process unchanged and starts from ``N(0, I)``.

The sampling correction here: with ``m`` known at sampling time, ``x~_t = x_t - sigma(t) m``
follows the ordinary process ``alpha x0 + sigma eps``, whose model view is
``(x0_hat, eps'_hat - m)`` at ``x~_t + sigma m`` (``RegionShifted``). Any solver of the core
then samples ``x~`` from ``sigma(t_0) z`` and ends at ``x~_0 = x_0``: exactly the law the
modulated model was trained for (given an exact denoiser, to the solver's discretisation).
Equivalently the start is ``x_T = sigma(t_0) (z + m)``, and stochastic steps add fresh noise to
``x~`` rather than to ``x``. (A deterministic DDIM step is the same in both coordinates, so
there only the start differs.)

We have no SAM; ``intensity_regions`` is a cheap stand-in (thresholded intensity bands), and
``region_values`` the encoding (evenly spaced values, one per region).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .denoiser import Denoiser, DenoiserBase, Prediction
from .grids.grid import GridPoint


def intensity_regions(image: Tensor, thresholds: Sequence[float]) -> Tensor:
    """Segment ``image`` ``[B, C, H, W]`` into ``len(thresholds) + 1`` intensity bands of its
    channel mean: labels ``[B, 1, H, W]`` (int64), region ``k`` where
    ``thresholds[k-1] <= value < thresholds[k]``."""
    if image.dim() != 4:
        raise ValueError(f"image must be [B, C, H, W], got shape {tuple(image.shape)}")
    th = torch.as_tensor(list(thresholds), dtype=torch.float64)
    if th.dim() != 1 or th.numel() == 0 or bool((torch.diff(th) <= 0).any()):
        raise ValueError(f"thresholds must be a non-empty increasing sequence, got {list(thresholds)}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image contains NaN or Inf")
    value = image.to(torch.float64).mean(1, keepdim=True)  # [B, 1, H, W]
    return torch.bucketize(value, th.to(value.device), right=True)


def region_values(n_regions: int, scale: float) -> Tensor:
    """One shift per region, evenly spaced in ``[-scale, scale]`` ``[K]`` (float64)."""
    if not (isinstance(n_regions, int) and n_regions >= 1):
        raise ValueError(f"n_regions must be a positive int, got {n_regions!r}")
    if n_regions == 1:
        return torch.zeros(1, dtype=torch.float64)
    return float(scale) * torch.linspace(-1.0, 1.0, n_regions, dtype=torch.float64)


def region_shift(labels: Tensor, values: Tensor, like: Tensor | None = None) -> Tensor:
    """The mean-shift map ``m = values[labels]``: labels ``[B, 1, H, W]`` (or ``[B, H, W]``)
    -> ``[B, 1, H, W]``, broadcast to ``like``'s shape, dtype and device when given."""
    values = torch.as_tensor(values)
    if labels.dtype not in (torch.int32, torch.int64) or bool((labels < 0).any()) or \
            bool((labels >= values.numel()).any()):
        raise ValueError(f"labels must be integers in [0, {values.numel()}) (one value per region)")
    if labels.dim() == 3:
        labels = labels.unsqueeze(1)
    m = values.to(labels.device)[labels]  # [B, 1, H, W]
    if like is not None:
        m = m.to(device=like.device, dtype=like.dtype).expand(like.shape).contiguous()
    return m


def modulated_noise(shift: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``eps + shift`` with ``eps ~ N(0, I)`` of ``shift``'s shape: law ``N(shift, I)``."""
    eps = torch.randn(shift.shape, generator=generator, dtype=shift.dtype)
    return eps.to(shift.device) + shift


def region_loss(den: Denoiser, x0: Tensor, shift: Tensor, t: Tensor | None = None,
                generator: torch.Generator | None = None, **options) -> Tensor:
    """The denoising loss under the modulated forward process: ``train.denoising_loss`` with
    the noise ``eps + shift`` (the target of any prediction type follows from ``(x0, eps +
    shift)``). ``shift`` ``[B, ...]`` like ``x0``."""
    from .process import as_time
    from .train import denoising_loss, sample_times
    if shift.shape != x0.shape:
        raise ValueError(f"shift must have x0's shape {tuple(x0.shape)}, got {tuple(shift.shape)}")
    t = sample_times(den.process, x0.shape[0], generator) if t is None else as_time(t)
    return denoising_loss(den, x0, t=t, eps=modulated_noise(shift, generator), **options)


class RegionShifted(DenoiserBase):
    """The sampling correction: the ordinary-process view ``x~ = x - sigma(t) shift`` of a
    model trained on modulated noise (module docstring). ``predict(x~, t)`` calls the model at
    ``x~ + sigma(t) shift`` and returns ``(x0_hat, eps'_hat - shift)``. Sample ``x~`` with any
    solver; at ``t = 0`` it is the data. ``shift`` ``[B, ...]`` (one map per row, selected with
    the rows)."""

    def __init__(self, den: DenoiserBase, shift: Tensor):
        self._wrap(den)
        if not bool(torch.isfinite(shift).all()):
            raise ValueError("shift contains NaN or Inf")
        self.shift = shift

    def _sigma(self, x: Tensor, t):
        if isinstance(t, GridPoint) and t.grid.process is self.process:
            return t.grid.sigma[t.k]  # host float, as the Denoiser's grid path
        return self.process.at(t).broadcast(x).sigma

    def predict(self, x: Tensor, t) -> Prediction:
        if x.shape != self.shift.shape:
            raise ValueError(f"x has shape {tuple(x.shape)}, the shift {tuple(self.shift.shape)}")
        shift = self.shift.to(x.dtype)
        p = self.den.predict(x + self._sigma(x, t) * shift, t)
        return Prediction(p.x0, p.eps - shift)

    @property
    def cond(self) -> dict:
        return self.den.cond

    def select(self, idx: Tensor) -> "RegionShifted":
        return RegionShifted(self.den.select(idx), self.shift[idx])

    def bind(self, **cond) -> "RegionShifted":
        return RegionShifted(self.den.bind(**cond), self.shift)

    def __repr__(self) -> str:
        return f"RegionShifted({self.den!r}, shift={tuple(self.shift.shape)})"
