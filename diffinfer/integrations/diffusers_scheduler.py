"""``DiffinferScheduler``: a diffinfer solver on a diffinfer grid as a diffusers scheduler.

A pipeline calls ``set_timesteps``, then per step the network at ``timesteps[i]`` and
``step(model_output, timestep, sample)``. Here ``step`` hands the network's output to the
solver through a ``Denoiser`` whose network replays that output: the conversion to
``(x0, eps)`` is the Denoiser's own (``diffinfer.denoiser.to_prediction`` at the grid point's
host coefficients), and the solver's step and its explicit, frozen state record are the
ones ``diffinfer.sample`` runs. A pipeline run with this scheduler is therefore ``sample``
on the same noise, grid and solver (bitwise where the pipeline's arithmetic around the
network is the same).

Only solvers with one model call per step fit the one-call-per-step scheduler protocol
(every fixed-grid solver but ``heun``; not ``adaptive``).

This module imports diffusers (its base classes); import it only when diffusers is installed.
"""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from .. import grids as grid_builders
from .. import solvers as solver_registry
from ..denoiser import Denoiser
from ..grids.builders import validate
from ..grids.grid import Grid
from ..rng import make_rng
from ..solvers.adaptive import AdaptiveRK
from .diffusers import (_scheduler, config_of, is_flow, prediction_of, process_of, scheduler_grid, time_input_of,
                        wrap_thresholding)

_F64 = torch.float64


class _Replay:
    """The network of the scheduler's ``Denoiser``: returns the output the pipeline's network
    gave for this step (once)."""

    def __init__(self):
        self.output: Tensor | None = None

    def __call__(self, x: Tensor, t_in, **cond) -> Tensor:
        if self.output is None:
            raise RuntimeError("the solver asked for a second model evaluation in one step; DiffinferScheduler "
                               "runs only one-call-per-step solvers")
        out, self.output = self.output, None
        return out


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") or k == "_class_name"}


class DiffinferScheduler(SchedulerMixin, ConfigMixin):
    """A diffinfer solver as a diffusers scheduler (module docstring).

    Args (the config; ``from_scheduler`` fills them from a pipeline's scheduler):
        base_config: the config of the scheduler the model was trained with (its
            ``_class_name`` included): the process, prediction type and time input are read
            from it, and its own schedule is the ``grid="scheduler"`` default.
        solver, solver_options: a name from ``diffinfer.solvers.names()`` and its options.
        grid: ``None`` / ``"scheduler"`` (the base scheduler's own timesteps), a grid
            builder's name (``"logsnr"``, ``"karras"``, ...), or a fixed grid (a list of
            times, e.g. a fitted ``OptimizedGrid.ts``; ``set_timesteps`` then takes its step count).
        grid_options: options for the grid builder.
        seed: the per-row noise streams of stochastic solvers (row ``i``: stream
            ``(seed, i)``, as ``diffinfer.sample``); ``None`` draws the seed from the
            ``generator`` the pipeline passes to ``step`` (or torch's global one).
        thresholding: apply the base config's ``clip_sample`` / dynamic thresholding.
        num_train_timesteps: kept for pipelines that read it.
    """

    config_name = "scheduler_config.json"
    order = 1
    _compatibles: list = []

    @register_to_config
    def __init__(self, base_config: dict | None = None, solver: str = "dpmpp-2m", solver_options: dict | None = None,
                 grid=None, grid_options: dict | None = None, seed: int | None = None, thresholding: bool = True,
                 num_train_timesteps: int | None = None):
        base = _scheduler(base_config if base_config is not None else {"_class_name": "DDPMScheduler"})
        self.base_scheduler = base
        cfg = config_of(base)
        self.process = process_of(cfg)
        self.prediction = prediction_of(cfg)
        self.time_input = time_input_of(cfg)
        self.solver = solver_registry.get(solver, **(solver_options or {}))
        if self.solver.evals_per_step != 1 or isinstance(self.solver, AdaptiveRK):
            one_call = [n for n in solver_registry.names()
                        if solver_registry.get(n).evals_per_step == 1 and n != "adaptive"]
            raise ValueError(f"solver {solver!r} takes {self.solver.evals_per_step} model calls per step; a "
                             f"diffusers scheduler gets one: use one of {', '.join(one_call)}")
        if grid is not None and not isinstance(grid, str):
            grid = validate(getattr(grid, "grid", grid))  # a tensor, a list, an OptimizedGrid
            self.register_to_config(grid=[float(v) for v in grid.tolist()])  # JSON-serialisable
        self._fixed = grid if isinstance(grid, Tensor) else None
        self._grid_name = grid if isinstance(grid, str) else None
        self._replay = _Replay()
        den = Denoiser(self._replay, self.process, self.prediction, check=False)
        self._den = wrap_thresholding(den, cfg) if thresholding else den
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self.grid: Grid | None = None
        self._begin_index: int | None = None
        self._reset()

    @classmethod
    def from_scheduler(cls, scheduler, solver="dpmpp-2m", grid=None, seed: int | None = None,
                       grid_options: dict | None = None, thresholding: bool = True, **solver_options):
        """Replace ``scheduler`` (a pipeline's) by a diffinfer ``solver`` on ``grid``
        (``None``: the scheduler's own; a builder name; a fixed grid: a tensor, list or an
        ``OptimizedGrid``). ``solver`` may be a ``Solver`` instance of a registered kind."""
        if isinstance(solver, solver_registry.Solver):
            solver_options = {**solver.options(), **solver_options}
            solver = solver.name
        if grid is not None and not isinstance(grid, str):
            grid = getattr(grid, "grid", grid)  # an OptimizedGrid
            grid = [float(v) for v in validate(grid).tolist()]
        base = getattr(scheduler, "base_scheduler", scheduler)
        cfg = _clean(config_of(base))
        return cls(base_config=cfg, solver=solver, solver_options=dict(solver_options), grid=grid,
                   grid_options=grid_options, seed=seed, thresholding=thresholding,
                   num_train_timesteps=cfg.get("num_train_timesteps"))

    # --- the schedule --------------------------------------------------------------------
    def _reset(self) -> None:
        self._state = None
        self._offset = 0
        self._step_index: int | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None, sigmas=None,
                      mu: float | None = None, **kwargs) -> None:
        """Build the grid: the fixed grid, a named builder's or the base scheduler's own
        (``mu``: a dynamic-shifting flow scheduler's resolution shift). ``timesteps`` (the
        network's time labels) or, for flows, ``sigmas`` give a custom grid."""
        if timesteps is not None:
            ts = self.time_input.inverse(torch.as_tensor(timesteps, dtype=_F64))
            ts = torch.cat([ts, torch.zeros(1, dtype=_F64)])
        elif sigmas is not None:
            if not is_flow(self.base_scheduler):
                raise ValueError("sigmas= is taken for flow schedulers only; pass timesteps= (the network's labels)")
            ts = torch.as_tensor(sigmas, dtype=_F64)
            ts = ts if float(ts[-1]) == 0.0 else torch.cat([ts, torch.zeros(1, dtype=_F64)])
        elif self._fixed is not None:
            ts = self._fixed
            if num_inference_steps is not None and int(num_inference_steps) != len(ts) - 1:
                raise ValueError(f"this scheduler runs a fixed {len(ts) - 1}-step grid; pass "
                                 f"num_inference_steps={len(ts) - 1}")
        else:
            if num_inference_steps is None:
                raise ValueError("give num_inference_steps")
            if self._grid_name in (None, "scheduler"):
                ts = scheduler_grid(self.base_scheduler, int(num_inference_steps), mu=mu, process=self.process)
            else:
                ts = grid_builders.get(self._grid_name, self.process, int(num_inference_steps),
                                       **(self.config.grid_options or {}))
        ts = validate(ts.clamp(0.0, 1.0))
        self.grid = Grid.of(self.process, ts)
        self.num_inference_steps = len(ts) - 1
        self.timesteps = self.time_input(ts[:-1]).to(device=device, dtype=torch.float32)
        self._reset()

    @property
    def ts(self) -> Tensor:
        """The grid's times (float64, ``steps + 1`` points)."""
        if self.grid is None:
            raise RuntimeError("call set_timesteps first")
        return self.grid.ts

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the starting noise: ``sigma`` at the grid's first time."""
        t0 = self.grid.ts[0] if self.grid is not None else torch.tensor(self.process.t_max, dtype=_F64)
        return float(self.process.sigma(t0))

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at grid index ``begin_index`` (img2img pipelines)."""
        self._begin_index = int(begin_index)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps or 1000)

    def index_for_timestep(self, timestep) -> int:
        t = torch.as_tensor(timestep, dtype=torch.float32).to(self.timesteps.device).reshape(-1)[0]
        hits = (self.timesteps == t).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(t)} is not on this scheduler's grid")
        return int(hits[0, 0])

    def scale_model_input(self, sample: Tensor, timestep=None, *args, **kwargs) -> Tensor:
        """The network takes ``x_t`` of the process as it is."""
        return sample

    # --- one step ------------------------------------------------------------------------
    def _rng(self, batch: int, device, generator):
        if not self.solver.stochastic:
            return None
        seed = self.config.seed
        if seed is None:
            gen = generator[0] if isinstance(generator, list) else generator
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen).item())
        return make_rng(seed, batch, device)

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True,
             **kwargs):
        """Move ``sample`` from this step's time to the next with the solver, given the
        network's output at ``(sample, timestep)``. Returns ``SchedulerOutput(prev_sample)``
        or ``(prev_sample,)``. Other keywords pipelines pass (``eta``, ...) are ignored: the
        solver's options decide."""
        if self.grid is None:
            raise RuntimeError("call set_timesteps before step")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise IndexError(f"step {i} is past the grid's {self.num_inference_steps} steps")
        if self._state is None:
            self._offset = i
            self._state = self.solver.init(self._den, sample, self.grid.ts[i:],
                                           self._rng(sample.shape[0], sample.device, generator))
        self._replay.output = model_output
        try:
            x, self._state = self.solver.step(self._den, sample, i - self._offset, self._state)
        finally:
            self._replay.output = None
        self._step_index = i + 1
        if not return_dict:
            return (x,)
        return SchedulerOutput(prev_sample=x)

    @property
    def state(self):
        """The solver's explicit state record after the last step (``None`` before the first)."""
        return self._state

    # --- training-style helpers ----------------------------------------------------------
    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) eps`` at the network's time labels ``timesteps``
        (a scalar or one per row)."""
        t = self.time_input.inverse(torch.as_tensor(timesteps, dtype=_F64).cpu()).clamp(0.0, 1.0)
        return self.process.add_noise(original_samples, noise, t)
