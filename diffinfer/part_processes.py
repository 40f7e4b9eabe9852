"""One noising process per part of a structured state (GDSS's system of SDEs).

GDSS (Jo, Lee & Hwang 2022, "Score-based Generative Modeling of Graphs via the System of
Stochastic Differential Equations") noises node features ``X`` and adjacency ``A`` with
*different* SDEs (e.g. VP nodes, VE adjacency) at one shared time ``t`` and trains one joint
network ``net(X_t, A_t, t)``. Sampling solves the system of probability-flow ODEs.

Here that is reduced to pieces that exist. Pick a solver process ``Q`` (default: the first
part's). A part ``p`` with process ``P_p`` at shared time ``t`` has log-SNR
``lambda_p(t) = P_p.logsnr(t)``, i.e. Q-time ``tau_p(t) = Q.t_from_logsnr(lambda_p(t))``, and
its state in Q's coordinates is ``x_Q = (sigma_Q(tau) / sigma_P(t)) x_P`` (the same change of
path as ``scaling.flows.PathConversion``). So a shared grid ``t_0 > ... > t_N`` is a *time
field* over the packed state (``part_time_field``: part ``p``'s entries follow the column
``tau_p(t_k)``), which ``element_times.sample_field`` solves with the unchanged solvers, each
part's group on its own Q-grid, with one joint model call per step. The network adapter
(``PartProcessNet``, ``takes_time_field``) takes the per-entry Q-times, recovers each
part's own time ``t = P_p.t_from_logsnr(Q.logsnr(tau))`` and own-units state
``x_P = (sigma_P(t) / sigma_Q(tau)) x_Q``, calls ``net(*parts, t, **cond)`` and returns its
prediction as it is: ``x0`` and ``eps`` are the same on every path with the same log-SNR, so
only ``eps`` and ``x0`` networks are accepted.

Why the law is right: the noise is independent per part, so (as for any time field) the
probability-flow ODE of every part in its own log-SNR transports the joint marginals, and
the data law is reached where every part's ``sigma`` is 0 (a part whose process keeps
``sigma(0) > 0``, as VE with ``sigma_min``, ends at that noise level).

    layout = Layout(nodes=Dense(n, f), adj=Symmetric(n))
    den = part_process_denoiser(net, layout, {"nodes": VP(), "adj": VE()}, prediction="eps")
    res = sample_parts(den, ts, batch=16, seed=0)       # ts: the shared training times
    X, A = layout.unpack(res.x)
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from .denoiser import Denoiser, time_dtype
from .element_times import FieldResult, sample_field
from .process import Process, as_time
from .structured_state import JointNet, Layout

#: prediction types that are the same on every path with the same log-SNR
PATH_INVARIANT = ("eps", "x0")

_F64 = torch.float64


def _check_processes(layout: Layout, processes, solver_process) -> tuple[dict[str, Process], Process]:
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a Layout, got {type(layout).__name__}")
    if not isinstance(processes, Mapping):
        raise TypeError(f"processes must map part names to Processes, got {type(processes).__name__}")
    unknown = [k for k in processes if k not in layout.parts]
    missing = [k for k in layout.names if k not in processes]
    if unknown or missing:
        raise ValueError(f"parts {unknown or missing} {'unknown' if unknown else 'have no process'}; "
                         f"give one process per part of the layout: {', '.join(layout.names)}")
    for name, p in processes.items():
        if not isinstance(p, Process):
            raise TypeError(f"the process of part {name!r} must be a diffinfer Process, got {type(p).__name__}")
    Q = processes[layout.names[0]] if solver_process is None else solver_process
    if not isinstance(Q, Process):
        raise TypeError(f"solver_process must be a diffinfer Process, got {type(Q).__name__}")
    return {n: processes[n] for n in layout.names}, Q


def _to_solver_time(P: Process, Q: Process, t: Tensor) -> Tensor:
    """``tau = Q.t_from_logsnr(P.logsnr(t))`` (``t`` itself where ``P`` is ``Q``)."""
    return t if P is Q else Q.t_from_logsnr(P.logsnr(t))


def _to_own_time(P: Process, Q: Process, tau: Tensor) -> Tensor:
    """``t = P.t_from_logsnr(Q.logsnr(tau))`` (``tau`` itself where ``P`` is ``Q``)."""
    return tau if P is Q else P.t_from_logsnr(Q.logsnr(tau)).clamp(0.0, 1.0)


def part_time_field(layout: Layout, processes: Mapping[str, Process], solver_process: Process | None,
                    ts) -> Tensor:
    """The time field ``[N + 1, D]`` (float64) over the packed state of ``layout`` for the
    shared grid ``ts`` ``[N + 1]`` (strictly descending, in ``[0, 1]``): part ``p``'s entries
    at row ``k`` hold ``tau_p(t_k) = Q.t_from_logsnr(P_p.logsnr(t_k))``. Raises if a part's
    log-SNR leaves the range ``Q`` covers on ``[0, 1]`` (choose a wider solver process, e.g.
    ``RectifiedFlow()``, which covers every log-SNR)."""
    procs, Q = _check_processes(layout, processes, solver_process)
    ts = torch.as_tensor(ts, dtype=_F64).detach().cpu().reshape(-1)
    if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()) or not bool(((ts >= 0) & (ts <= 1)).all()):
        raise ValueError("ts must be a strictly descending grid of at least 2 times in [0, 1]")
    cols = []
    for name, a, b in zip(layout.names, layout.offsets, layout.offsets[1:]):
        tau = _to_solver_time(procs[name], Q, ts)  # [N + 1]
        bad = ~((tau >= -1e-9) & (tau <= 1 + 1e-9))  # also NaN
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            raise ValueError(f"part {name!r} ({procs[name]!r}) at t={float(ts[k]):.6g} has a log-SNR the solver "
                             f"process {Q!r} does not reach on [0, 1] (Q-time {float(tau[k]):.6g}); start the grid "
                             f"later or use a solver process that covers it, e.g. RectifiedFlow()")
        cols.append(tau.clamp(0.0, 1.0)[:, None].expand(-1, b - a))
    return torch.cat(cols, dim=1)  # [N + 1, D]


class PartProcessNet(nn.Module):
    """A joint network trained with each part noised by its own process at a shared time,
    presented as a network on the packed state in the solver process's coordinates with a
    time per entry (``takes_time_field``). ``forward(x [B, D], t, **cond)``: ``t`` is ``[B]``
    (every part at one Q-time) or per entry ``[B, D]``; returns the packed prediction."""

    takes_time_field = True

    def __init__(self, net: Callable, layout: Layout, processes: Mapping[str, Process],
                 solver_process: Process | None = None, time_input: Callable[[Tensor], Tensor] | None = None,
                 time_tol: float = 1e-6):
        super().__init__()
        self.processes, self.solver_process = _check_processes(layout, processes, solver_process)
        self.layout, self.joint = layout, JointNet(net, layout)
        self.time_input, self.time_tol = time_input, float(time_tol)

    def own_times(self, t: Tensor, batch: int) -> dict[str, Tensor]:
        """Each part's Q-time ``[B]`` (float64) from ``t`` (``[B]`` or per entry ``[B, D]``)."""
        t = t.to(_F64)
        if t.dim() == 1:
            return {n: t for n in self.layout.names}
        out = {}
        for name, a, b in zip(self.layout.names, self.layout.offsets, self.layout.offsets[1:]):
            tau = t[:, a:b]  # [B, size]
            if not bool((tau == tau[:, :1]).all()):
                raise ValueError(f"the entries of part {name!r} are at different times; a part-process time "
                                 f"field (part_time_field) gives every entry of a part one time")
            out[name] = tau[:, 0]
        return out

    def forward(self, x: Tensor, t, **cond) -> Tensor:
        t = as_time(t)
        if t.dim() not in (1, 2) or t.shape[0] != x.shape[0] or (t.dim() == 2 and t.shape != x.shape):
            raise ValueError(f"t must be [B] or [B, D] = {tuple(x.shape)}, got {tuple(t.shape)}")
        Q = self.solver_process
        taus = self.own_times(t, x.shape[0])
        parts, times = [], []
        for name, a, b in zip(self.layout.names, self.layout.offsets, self.layout.offsets[1:]):
            P, tau = self.processes[name], taus[name]  # tau [B]
            xp = x[:, a:b]  # [B, size]
            if P is not Q:
                tp = _to_own_time(P, Q, tau)
                sq = Q.sigma(tau)
                # same log-SNR: sigma_P / sigma_Q = alpha_P / alpha_Q (the latter where sigma_Q = 0)
                ratio = torch.where(sq > 0, P.sigma(tp) / sq, P.alpha(tp) / Q.alpha(tau))  # [B]
                xp = xp * ratio.to(device=x.device, dtype=x.dtype)[:, None]
                tau = tp
            parts.append(xp)
            times.append(tau)
        shared = times[0]
        for name, tp in zip(self.layout.names[1:], times[1:]):
            gap = float((tp - shared).abs().max())
            if gap > self.time_tol:
                raise ValueError(f"part {name!r} is at own time {float(tp.reshape(-1)[0]):.6g} but part "
                                 f"{self.layout.names[0]!r} at {float(shared.reshape(-1)[0]):.6g}: the time field "
                                 f"is not a part_time_field of these processes (gap {gap:.3g})")
        t_in = self.time_input(shared) if self.time_input is not None else shared
        if isinstance(t_in, Tensor):
            t_in = t_in.to(device=x.device, dtype=time_dtype(x))
        return self.joint(torch.cat(parts, dim=1), t_in, **cond)  # [B, D]


def part_process_denoiser(net: Callable, layout: Layout, processes: Mapping[str, Process],
                          solver_process: Process | None = None, prediction: str = "eps",
                          time_input: Callable[[Tensor], Tensor] | None = None, **options) -> Denoiser:
    """A ``Denoiser`` on the packed state of ``layout``, in the coordinates of
    ``solver_process`` (default: the first part's process), from a joint network
    ``net(*parts, t, **cond)`` trained with part ``name`` noised by ``processes[name]`` at a
    shared time ``t`` (``time_input`` maps that ``t`` to the network's input). ``prediction``:
    ``eps`` or ``x0`` (path-invariant). ``options`` go to ``Denoiser`` (``cond``, ``check``).
    Sample with ``sample_parts``."""
    if prediction not in PATH_INVARIANT:
        raise ValueError(f"prediction {prediction!r} depends on the process; with one process per part the "
                         f"network must predict one of: {', '.join(PATH_INVARIANT)}")
    adapter = PartProcessNet(net, layout, processes, solver_process, time_input)
    return Denoiser(adapter, adapter.solver_process, prediction, **options)


def sample_parts(den: Denoiser, ts, batch: int | None = None, x_T: Tensor | None = None,
                 solver="dpmpp-2m", seed=None, dtype=torch.float32, device="cpu", **options) -> FieldResult:
    """Sample a ``part_process_denoiser`` over the shared grid ``ts`` (``part_time_field``
    and ``element_times.sample_field``): from ``x_T`` ``[B, D]`` (in the solver process's
    coordinates at ``ts[0]``) or from ``sigma_Q(tau_p(ts[0])) * z`` for ``batch`` rows.
    ``result.x`` is the packed state (``layout.unpack`` it)."""
    adapter = getattr(den, "net", None)
    if not isinstance(adapter, PartProcessNet):
        raise TypeError("den must come from part_process_denoiser")
    field = part_time_field(adapter.layout, adapter.processes, adapter.solver_process, ts)
    shape = None if x_T is not None else (int(batch), adapter.layout.size) if batch is not None else None
    return sample_field(den, field, x_T=x_T, shape=shape, solver=solver, seed=seed, dtype=dtype, device=device,
                        **options)


__all__ = ["PATH_INVARIANT", "part_time_field", "PartProcessNet", "part_process_denoiser", "sample_parts"]
