"""Time grids: builders by name, and grids fitted per model, solver and NFE.

- ``builders``: the grid families (``uniform``, ``logsnr``, ``karras``, ``quadratic``,
  ``flow_shift``, ``custom``/``validate``), their lookup by name (``get``, ``names``)
  and the grid ``sample`` runs on (``default_builder``, ``default``, ``resolve``).
- fitting (Align Your Steps / LD3): ``fit`` (``optimize``, ``fit_candidates``) composed of
  ``fit_params`` (the parameterisation), ``fit_objective`` (training set, teacher, loss)
  and ``fit_search`` (Nelder-Mead, ``best``); ``model_times`` (``ModelTimes``, decoupled
  model times); ``storage`` (``OptimizedGrid``, ``save``, ``load``, ``grids_path``).

``builders`` imports nothing from the solvers or the sampling loop; the fitting modules
load the sampling loop only when they solve.
"""
from .builders import (REGISTRY, custom, default, default_builder, flow_shift, get, karras, logsnr, names,
                       quadratic, resolve, uniform, validate)
from .fit import fit_candidates, optimize
from .fit_objective import Objective, solve, teacher_endpoint, training_set
from .fit_params import (GridParams, default_t_lo, grid_from_params, grow, initial_grids, initial_simplex,
                         model_times_from_params, params_from_grid)
from .fit_search import best
from .model_times import ModelTimes
from .storage import OptimizedGrid, grid_key, grids_path, load, save

__all__ = [
    # builders
    "uniform", "logsnr", "karras", "quadratic", "flow_shift", "custom", "validate", "get", "names", "REGISTRY",
    "default_builder", "default", "resolve",
    # fitting
    "optimize", "fit_candidates", "best", "training_set", "teacher_endpoint", "solve", "Objective",
    "GridParams", "grid_from_params", "params_from_grid", "model_times_from_params", "initial_grids",
    "initial_simplex", "grow", "default_t_lo", "ModelTimes",
    # storage
    "OptimizedGrid", "grid_key", "grids_path", "save", "load",
]
