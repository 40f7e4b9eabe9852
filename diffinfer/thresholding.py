"""Data-prediction clipping as ``Denoiser`` wrappers (what diffusers schedulers apply inside
their ``step``, here a model view every solver sees).

- ``ClipSample``: ``x0_hat`` clamped to ``[-r, r]`` (DDPM/DDIM ``clip_sample``).
- ``DynamicThresholding``: Saharia et al., "Photorealistic Text-to-Image Diffusion Models
  with Deep Language Understanding" (Imagen, 2022), sec. 2.3: per sample, ``s`` is the
  ``ratio`` quantile of ``|x0_hat|`` clamped to ``[1, max_value]``, and ``x0_hat`` becomes
  ``clamp(x0_hat, -s, s) / s``.

In both the noise prediction is re-derived from the clipped ``x0_hat`` as
``(x - alpha x0) / sigma`` (as diffusers' DDIM step does), so every view stays consistent.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import DenoiserBase, Prediction
from .grids.grid import GridPoint


class _X0Wrapper(DenoiserBase):
    """A wrapper that maps the wrapped model's ``x0_hat`` and re-derives ``eps``."""

    def __init__(self, den: DenoiserBase):
        self._wrap(den)

    def _map(self, x0: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, x: Tensor, t) -> Prediction:
        x0 = self._map(self.den.predict(x, t).x0)
        if isinstance(t, GridPoint) and t.grid.process is self.process:
            a, s = t.grid.alpha[t.k], t.grid.sigma[t.k]  # host floats, as the Denoiser's grid path
        else:
            c = self.process.at(t).broadcast(x)
            a, s = c.alpha, c.sigma
        return Prediction(x0, derive=(x, a, s))

    # conditioning passes through, so guidance can wrap the clipped model
    @property
    def cond(self) -> dict:
        return self.den.cond

    def bind(self, **cond):
        return self._rewrap(self.den.bind(**cond))

    def select(self, idx: Tensor):
        return self._rewrap(self.den.select(idx))

    def _rewrap(self, den):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.den = den
        return new


class ClipSample(_X0Wrapper):
    """``x0_hat`` clamped to ``[-clip_range, clip_range]`` (diffusers ``clip_sample``)."""

    def __init__(self, den: DenoiserBase, clip_range: float = 1.0):
        super().__init__(den)
        if not clip_range > 0:
            raise ValueError(f"clip_range must be positive, got {clip_range}")
        self.clip_range = float(clip_range)

    def _map(self, x0: Tensor) -> Tensor:
        return x0.clamp(-self.clip_range, self.clip_range)

    def __repr__(self) -> str:
        return f"ClipSample({self.den!r}, clip_range={self.clip_range})"


class DynamicThresholding(_X0Wrapper):
    """Imagen's dynamic thresholding of ``x0_hat`` (module docstring); diffusers'
    ``thresholding=True`` with ``dynamic_thresholding_ratio`` and ``sample_max_value``."""

    def __init__(self, den: DenoiserBase, ratio: float = 0.995, max_value: float = 1.0):
        super().__init__(den)
        if not 0 < ratio <= 1 or not max_value >= 1:
            raise ValueError(f"need 0 < ratio <= 1 and max_value >= 1, got {ratio}, {max_value}")
        self.ratio, self.max_value = float(ratio), float(max_value)

    def _map(self, x0: Tensor) -> Tensor:
        dtype = x0.dtype
        flat = x0.reshape(x0.shape[0], -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # quantile needs float32 / float64
        s = torch.quantile(flat.abs(), self.ratio, dim=1).clamp(1.0, self.max_value)[:, None]  # [B, 1]
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)

    def __repr__(self) -> str:
        return f"DynamicThresholding({self.den!r}, ratio={self.ratio}, max_value={self.max_value})"
