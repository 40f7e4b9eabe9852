"""k-diffusion models and samplers, both ways.

k-diffusion (Crowson; Karras et al. 2022) writes every model in the variance-exploding
variables ``x_ve = x / alpha`` and ``sigma_ve = sigma / alpha`` and calls a denoiser
``model(x_ve, sigma_ve, **extra) -> x0_hat``.

- ``from_k_diffusion(model, sigma_min, sigma_max)``: such a denoiser (e.g. a
  ``k_diffusion.external.CompVisDenoiser`` or a ``KarrasDenoiser``) as a diffinfer
  ``Denoiser`` on ``EDM(sigma_min, sigma_max)`` (``alpha = 1``, ``sigma = sigma_max t``),
  predicting ``x0`` with the time input ``sigma``.
- ``as_k_diffusion(den, ts=None)``: any diffinfer model as a k-diffusion denoiser, for
  ``k_diffusion.sampling.sample_*`` with ``sigmas = k_sigmas(den.process, ts)``: the
  sampler's ``sigma`` maps to ``t`` by the process's inverse log-SNR (or, given ``ts``, to
  the nearest grid point, so the model is evaluated exactly at the grid's times).
- ``load_k_diffusion()``: its ``sampling`` module, or why not. k-diffusion is optional
  (``pip install --no-deps k-diffusion``); its package ``__init__`` imports heavy
  dependencies (torchvision, scikit-image, ...), so when those are missing its
  ``sampling.py`` is loaded on its own with the two modules it names at import time and
  the samplers here never use (``torchdiffeq``, ``torchsde``) stubbed and its one helper
  ``utils.append_dims`` provided.

Nothing here imports k-diffusion at ``import diffinfer``.
"""
from __future__ import annotations

import importlib
import importlib.util
import pathlib
import sys
import types

import torch
from torch import Tensor

from ..denoiser import Denoiser, DenoiserBase
from ..process import EDM, as_time


def k_sigmas(process, ts) -> Tensor:
    """``sigma(t) / alpha(t)`` on the grid ``ts`` (float64; ``0`` at ``t = 0``, ``inf`` where
    ``alpha = 0``): k-diffusion's ``sigmas``."""
    ts = as_time(ts)
    return process.sigma(ts) / process.alpha(ts)


def from_k_diffusion(model, sigma_min: float, sigma_max: float, sigma_data: float = 0.5, cond: dict | None = None,
                     check: bool = True) -> Denoiser:
    """A k-diffusion denoiser ``model(x, sigma, **cond) -> x0_hat`` as a ``Denoiser`` on
    ``EDM(sigma_min, sigma_max)`` (``t = sigma / sigma_max``)."""
    process = EDM(sigma_min, sigma_max, sigma_data)
    return Denoiser(model, process, "x0", time_input=_SigmaInput(float(sigma_max)), cond=cond, check=check)


class _SigmaInput:
    """``t -> sigma = sigma_max t`` (EDM's noise level, k-diffusion's model input)."""

    def __init__(self, sigma_max: float):
        self.sigma_max = sigma_max

    def __call__(self, t: Tensor) -> Tensor:
        return as_time(t) * self.sigma_max


class KDiffusionModel(torch.nn.Module):
    """A diffinfer model as a k-diffusion denoiser (``as_k_diffusion``)."""

    def __init__(self, den: DenoiserBase, ts=None):
        super().__init__()
        if not isinstance(den, DenoiserBase):
            raise TypeError(f"den must be a Denoiser (or wrapper), got {type(den).__name__}")
        self.den = den
        self.ts = None if ts is None else as_time(ts)
        self._sigmas = None if ts is None else k_sigmas(den.process, self.ts)

    def t_of(self, sigma: Tensor) -> Tensor:
        """Our time of k-diffusion noise levels ``sigma`` ``[B]`` (float64)."""
        sigma = as_time(sigma).cpu()
        if self._sigmas is not None:  # the nearest grid point: evaluate exactly at the grid's times
            k = torch.argmin((self._sigmas[None, :] - sigma.reshape(-1, 1)).abs(), dim=1)
            return self.ts[k].reshape(sigma.shape)
        return self.den.process.t_from_logsnr(-2.0 * torch.log(sigma))

    def forward(self, x: Tensor, sigma: Tensor, **extra) -> Tensor:
        if extra:
            raise TypeError(f"extra arguments {sorted(extra)}: bind conditioning on the Denoiser instead")
        sigma = torch.as_tensor(sigma).reshape(-1)
        t = self.t_of(sigma)  # [B] or [1]
        if self.ts is not None and bool((t == t[0]).all()):
            t = self.ts[int(torch.argmin((self.ts - t[0]).abs()))]  # one grid time: the host path
            a = float(self.den.process.alpha(t))
            return self.den.x0(x * a, t)
        tb = t.expand(x.shape[0]) if t.numel() == 1 else t
        a = self.den.process.alpha(tb).to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
        return self.den.x0(x * a, tb)


def as_k_diffusion(den: DenoiserBase, ts=None) -> KDiffusionModel:
    """``den`` as a k-diffusion denoiser ``model(x_ve, sigma_ve) -> x0_hat`` (module doc). Run a
    sampler as ``sample_dpmpp_2m(model, x_T / alpha(t_0), k_sigmas(den.process, ts))`` and
    multiply its result by ``alpha`` at the grid's end."""
    return KDiffusionModel(den, ts)


# --- loading k-diffusion's samplers ----------------------------------------------------------
_KDIFF: dict = {}


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """``x`` with trailing singleton dimensions up to ``target_dims`` (k-diffusion's helper)."""
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def load_k_diffusion():
    """``(sampling_module, None)`` or ``(None, reason)``; cached (module docstring)."""
    if "module" in _KDIFF:
        return _KDIFF["module"], _KDIFF["reason"]
    module, reason = None, None
    try:
        module = importlib.import_module("k_diffusion.sampling")
    except ImportError as first:
        try:
            spec = importlib.util.find_spec("k_diffusion")
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            reason = "k-diffusion is not installed (pip install --no-deps k-diffusion)"
        else:
            module, reason = _load_sampling_alone(spec.submodule_search_locations[0], first)
            if module is not None:
                _KDIFF["how"] = f"sampling.py loaded alone (its package import failed: {first})"
    _KDIFF["module"], _KDIFF["reason"] = module, reason
    _KDIFF.setdefault("how", "imported" if module is not None else "absent")
    return module, reason


def k_diffusion_status() -> str:
    """How k-diffusion was found: 'imported', 'sampling.py loaded alone (...)', or why absent."""
    module, reason = load_k_diffusion()
    return _KDIFF["how"] if module is not None else f"absent ({reason})"


def _load_sampling_alone(directory: str, first_error: Exception):
    source = pathlib.Path(directory) / "sampling.py"
    if not source.exists():
        return None, f"k-diffusion has no sampling.py ({first_error})"
    pkg_name = "_diffinfer_kdiffusion"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = []
    utils = types.ModuleType(pkg_name + ".utils")
    utils.append_dims = _append_dims
    pkg.utils = utils
    stubs = {}
    for name in ("torchdiffeq", "torchsde"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.odeint = None
            stubs[name] = stub
    added = {pkg_name: pkg, pkg_name + ".utils": utils, **stubs}
    saved = {k: sys.modules.get(k) for k in added}
    sys.modules.update(added)
    try:
        mod = types.ModuleType(pkg_name + ".sampling")
        mod.__package__ = pkg_name
        mod.__file__ = str(source)
        exec(compile(source.read_text(), str(source), "exec"), mod.__dict__)
    except Exception as e:  # noqa: BLE001 - any failure means: not available
        return None, f"k-diffusion sampling.py did not load: {type(e).__name__}: {e}"
    finally:
        for k, v in saved.items():
            if k in stubs or k.startswith(pkg_name):
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
    return mod, None


__all__ = ["from_k_diffusion", "as_k_diffusion", "KDiffusionModel", "k_sigmas", "load_k_diffusion",
           "k_diffusion_status"]
