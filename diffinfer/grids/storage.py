"""Fitted grids on disk: the ``OptimizedGrid`` record and its JSON file.

``save`` / ``load`` keep the records of one model in one JSON file (``zoo.grids_path`` puts it
beside a bundled checkpoint), keyed by solver, options and steps (``grid_key``).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..denoiser import DenoiserBase
from .builders import validate
from .model_times import ModelTimes

_F64 = torch.float64
FORMAT = "diffinfer-grids-1"


@dataclass
class OptimizedGrid:
    """An optimised grid and how it was found.

    ``ts``: the grid (descending, ``steps + 1`` points, last ``0``); ``solver`` and
    ``solver_options``: what it was fitted for; ``model_ts``: the decoupled model times
    (``steps`` points, ``ModelTimes``) or ``None`` (the model at the grid's times);
    ``loss`` / ``initial_loss``: the training objective (mean squared error per entry)
    after / before; ``holdout_loss`` / ``initial_holdout_loss``: the same on held-out
    noise when the fit had some (``optimize``'s ``holdout``); ``evals``: solves used;
    ``parameterization`` / ``knots`` / ``spline_variable`` (the spline's variable, resolved:
    ``"logsnr"`` or ``"noise-fraction"``; ``None`` for free points) / ``robust``: how the fit
    was set up; ``train_mse`` /
    ``holdout_mse``: the plain mean squared error per entry of the result on the training
    and held-out noise (comparable whatever the objective), ``n_holdout`` held-out rows."""

    ts: list[float]
    solver: str
    steps: int
    solver_options: dict = field(default_factory=dict)
    loss: float = float("nan")
    initial_loss: float = float("nan")
    evals: int = 0
    seconds: float = 0.0
    n_train: int = 0
    model_ts: list[float] | None = None
    holdout_loss: float = float("nan")
    initial_holdout_loss: float = float("nan")
    parameterization: str = "points"
    knots: int = 0
    spline_variable: str | None = None
    robust: str | None = None
    train_mse: float = float("nan")
    holdout_mse: float = float("nan")
    n_holdout: int = 0

    @property
    def grid(self) -> Tensor:
        """The grid as a float64 tensor (``[steps + 1]``)."""
        return validate(torch.tensor(self.ts, dtype=_F64))

    @property
    def key(self) -> str:
        return grid_key(self.solver, self.steps, self.solver_options, self.model_ts is not None)

    def denoiser(self, den: DenoiserBase) -> DenoiserBase:
        """The model to solve with on ``grid``: ``den`` itself, or ``ModelTimes`` when the
        record has decoupled model times."""
        return den if self.model_ts is None else ModelTimes(den, self.grid, self.model_ts)


def grid_key(solver: str, steps: int, solver_options: dict | None = None, model_times: bool = False) -> str:
    """``"unipc/6"``, ``"unipc[order=3]/6"`` or ``"unipc+model-times/6"`` (decoupled model
    times): the record's name in a grids file."""
    opts = ",".join(f"{k}={solver_options[k]}" for k in sorted(solver_options or {}))
    name = f"{solver}[{opts}]" if opts else str(solver)
    return f"{name}{'+model-times' if model_times else ''}/{int(steps)}"


def save(path, grids, meta: dict | None = None) -> pathlib.Path:
    """Add ``grids`` (``OptimizedGrid`` or a list) to the JSON file ``path`` (created if
    absent; records with the same solver, options and steps are replaced)."""
    path = pathlib.Path(path)
    grids = [grids] if isinstance(grids, OptimizedGrid) else list(grids)
    data = json.loads(path.read_text()) if path.exists() else {"format": FORMAT, "grids": {}}
    if meta:
        data.setdefault("meta", {}).update(meta)
    for g in grids:
        data["grids"][g.key] = asdict(g)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..atomic import write_text
    write_text(path, json.dumps(data, indent=1, sort_keys=True))  # temp file + fsync + rename
    return path


def _read(path) -> dict:
    """The parsed grids file ``path`` (``FileNotFoundError`` / ``ValueError`` if it is not one)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no grids file at {path}")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffinfer grids file")
    return data


def load_meta(path) -> dict:
    """The ``meta`` dict a grids file holds (``save(..., meta=...)``; empty if none)."""
    return _read(path).get("meta", {})


def load(path, solver: str | None = None, steps: int | None = None, model_times: bool = False, **solver_options):
    """All records of a grids file (``{key: OptimizedGrid}``), or, with ``solver`` and
    ``steps``, that one record (``KeyError`` naming the stored keys if absent)."""
    path = pathlib.Path(path)
    data = _read(path)
    records = {k: OptimizedGrid(**v) for k, v in data["grids"].items()}
    if solver is None:
        return records
    key = grid_key(solver, steps, solver_options, model_times)
    if key not in records:
        raise KeyError(f"no grid {key!r} in {path}; stored: {', '.join(sorted(records)) or 'none'}")
    return records[key]


__all__ = ["OptimizedGrid", "grid_key", "save", "load", "load_meta"]
