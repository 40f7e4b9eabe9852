"""Time grids: the ``Grid`` coefficient record, builders by name, and grids fitted per
model, solver and NFE.

- ``grid``: ``Grid`` (a schedule's host float64 coefficients, one cast per device) and
  ``GridPoint`` (what a solver passes to ``Denoiser.predict``).
- ``builders``: the grid families (``uniform``, ``logsnr``, ``karras``, ``quadratic``,
  ``flow_shift``, ``custom``/``validate``), their lookup by name (``get``, ``names``)
  and the grid ``sample`` runs on (``default_builder``, ``default``, ``resolve``).
- fitting (Align Your Steps / LD3): ``fit`` (``optimize``, ``fit_candidates``) composed of
  ``fit_params`` (the parameterisation), ``fit_objective`` (training set, teacher, loss)
  and ``fit_search`` (Nelder-Mead, ``best``); ``fit_strata`` (a training set stratified by a
  cheap probe's error, ``stratified_training_set``); ``model_times`` (``ModelTimes``, decoupled
  model times); ``storage`` (``OptimizedGrid``, ``save``, ``load``, ``load_meta``).

``grid`` and ``builders`` import nothing from the solvers, the denoiser or the sampling
loop, so the denoiser and the solvers can use them; the fitting names load on first use.
"""
from __future__ import annotations

import importlib

from .builders import (REGISTRY, custom, default, default_builder, flow_shift, get, karras, logsnr, names,
                       quadratic, resolve, uniform, validate)
from .grid import DeviceGrid, Grid, GridPoint

#: fitting names -> the module that defines them (loaded on first use: they build on the
#: denoiser and the sampling loop, which themselves use ``grid`` and ``builders``)
_FITTING = {
    "optimize": "fit", "fit_candidates": "fit",
    "Objective": "fit_objective", "solve": "fit_objective", "teacher_endpoint": "fit_objective", "geometric_tail": "fit_objective",
    "training_set": "fit_objective", "start_noise": "fit_objective", "stratified_training_set": "fit_strata", "stratified_rows": "fit_strata", "boundary_score": "fit_strata", "PROBE_STEPS": "fit_strata",
    "GridParams": "fit_params", "SplineParams": "fit_params", "spline_positions": "fit_params",
    "SPLINE_VARIABLES": "fit_params", "noise_fraction": "fit_params", "logsnr_of_noise_fraction": "fit_params",
    "robust_loss": "fit_objective", "default_t_lo": "fit_params", "grid_from_params": "fit_params", "grow": "fit_params", "shrink": "fit_params", "insertions": "fit_params",
    "initial_grids": "fit_params", "initial_simplex": "fit_params", "model_times_from_params": "fit_params",
    "params_from_grid": "fit_params",
    "best": "fit_search",
    "ModelTimes": "model_times",
    "OptimizedGrid": "storage", "grid_key": "storage", "load": "storage", "load_meta": "storage", "save": "storage",
}


def __getattr__(name: str):
    module = _FITTING.get(name)
    if module is None:
        raise AttributeError(f"module 'diffinfer.grids' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FITTING))


__all__ = [
    "Grid", "GridPoint", "DeviceGrid",
    # builders
    "uniform", "logsnr", "karras", "quadratic", "flow_shift", "custom", "validate", "get", "names", "REGISTRY",
    "default_builder", "default", "resolve",
    # fitting
    "optimize", "fit_candidates", "best", "training_set", "start_noise", "stratified_training_set", "stratified_rows", "boundary_score", "PROBE_STEPS", "teacher_endpoint", "geometric_tail", "solve", "Objective",
    "GridParams", "SplineParams", "SPLINE_VARIABLES", "spline_positions", "noise_fraction", "logsnr_of_noise_fraction", "robust_loss", "grid_from_params", "params_from_grid", "model_times_from_params", "initial_grids",
    "initial_simplex", "grow", "shrink", "insertions", "default_t_lo", "ModelTimes",
    # storage
    "OptimizedGrid", "grid_key", "save", "load", "load_meta",
]
