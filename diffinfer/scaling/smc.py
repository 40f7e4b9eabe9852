"""Sequential Monte Carlo steering (Feynman-Kac steering) on the solver protocol.

Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of
Diffusion Models" (FK steering), after Wu et al. 2023 (TDS) and Del Moral 2004: run
``N`` particles through a *stochastic* solver; after each step multiply each particle's
weight by a potential ``G_i`` built from intermediate rewards ``r_i = r(x0_hat(x_i))``;
resample when the effective sample size falls below ``ess_threshold * N`` and otherwise
carry the weights to the next step. Potentials (``lam`` the tilt strength):

==============  =====================================================
``difference``  ``log G_i = lam (r_i - r_{i-1})`` (telescopes)
``max``         ``log G_i = lam max_{j<=i} r_j``
``sum``         ``log G_i = lam sum_{j<=i} r_j``
``immediate``   ``log G_i = lam r_i``
==============  =====================================================

At the end each lineage gets ``lam r(x_0) - sum_i log G_i``, so the product of all
potentials is exactly ``exp(lam r(x_0))`` and the weighted particles target
``p(x_0) exp(lam r(x_0))`` for any potential as ``N`` grows (FK steering, section 3).
The intermediate reward uses the solver's own prediction at the start of each step
(``Tap``), so steering costs no extra network evaluations.

Deterministic solvers: resampled copies of a particle would stay identical forever, so
``smc`` refuses them with an error naming the stochastic solvers, unless
``allow_deterministic=True`` (a warning is issued; diversity then comes only from the
initial noise).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .. import solvers as solver_registry
from ..denoiser import DenoiserBase
from ..rng import SampleRNG
from ..loop import initial_noise, iterate
from .common import ScalingResult, Tap, grid, sample_shape, stochastic_solver_names
from .hilbert import hilbert_order, principal_order
from .verifiers import as_verifier

POTENTIALS = ("difference", "max", "sum", "immediate")
#: resampler names (``RESAMPLE``); ``ORDERED`` ones sort the particles by their state ``x``
#: first (``hilbert``: along a Hilbert curve; ``sorted``: along the first principal axis)
RESAMPLERS = ("multinomial", "systematic", "hilbert", "sorted")
ORDERED = ("hilbert", "sorted")


def effective_sample_size(log_w: Tensor) -> float:
    """``(sum w)^2 / sum w^2`` for log-weights ``[N]``."""
    w = torch.softmax(log_w.double(), 0)
    return float(1.0 / (w * w).sum())


def _check_state(x: Tensor | None, log_w: Tensor, name: str, needed: bool) -> None:
    if x is None:
        if needed:
            raise ValueError(f"the {name!r} resampler orders the particles by their state: pass x [N, ...]")
        return
    if x.dim() < 1 or x.shape[0] != log_w.numel():
        raise ValueError(f"x must have one row per weight ({log_w.numel()}), got shape {tuple(x.shape)}")


def multinomial_resample(log_w: Tensor, n: int, generator: torch.Generator, x: Tensor | None = None) -> Tensor:
    """``n`` indices drawn i.i.d. with probabilities ``softmax(log_w)`` (``[n]``, long);
    ``x`` (the particles) is only checked."""
    _check_state(x, log_w, "multinomial", False)
    w = torch.softmax(log_w.double(), 0)
    return torch.multinomial(w, n, replacement=True, generator=generator)


def systematic_resample(log_w: Tensor, n: int, generator: torch.Generator, x: Tensor | None = None) -> Tensor:
    """Systematic resampling (Kitagawa 1996; Douc & Cappe 2005): one uniform ``u``, points
    ``(u + j)/n``, inverted through the weights' CDF. Lower variance than multinomial.
    ``x`` (the particles) is only checked."""
    _check_state(x, log_w, "systematic", False)
    u = (torch.rand((), dtype=torch.float64, generator=generator) + torch.arange(n, dtype=torch.float64)) / n
    return _invert_cdf(log_w, u)


def _invert_cdf(log_w: Tensor, u: Tensor) -> Tensor:
    """Indices ``[n]`` of the weights ``softmax(log_w)`` whose CDF first reaches each ``u`` ``[n]``."""
    cdf = torch.cumsum(torch.softmax(log_w.double(), 0), 0)
    cdf[-1] = 1.0
    return torch.searchsorted(cdf, u.to(cdf.device, torch.float64)).clamp(max=log_w.numel() - 1)


def _ordered_systematic(log_w: Tensor, n: int, generator: torch.Generator, order: Tensor,
                        u: Tensor | None = None) -> Tensor:
    """Systematic resampling of the particles taken in the order ``order`` ``[N]`` (a
    permutation): indices ``[n]`` into the original rows (nondecreasing along ``order``).
    ``u``: ascending uniforms ``[n]`` to invert the ordered CDF at instead of the
    systematic points (SQMC's first coordinates, ``sqmc.sqmc_points``)."""
    order = order.to(log_w.device)
    if u is None:
        return order[systematic_resample(log_w[order], n, generator)]
    if u.shape != (n,):
        raise ValueError(f"u must hold one uniform per draw ({n}), got shape {tuple(u.shape)}")
    return order[_invert_cdf(log_w[order], u)]


def hilbert_resample(log_w: Tensor, n: int, generator: torch.Generator, x: Tensor | None = None,
                     u: Tensor | None = None) -> Tensor:
    """Hilbert-sorted systematic resampling (Gerber & Chopin 2015, SQMC; ``hilbert.py``):
    the particles ``x`` ``[N, ...]`` ordered along a Hilbert curve of their weighted
    principal coordinates, then systematic resampling in that order. Each particle still
    gets ``floor`` or ``ceil`` of ``n w_i`` copies; each region the curve covers in one run
    gets ``n`` times its weight to within one copy. ``u``: see ``_ordered_systematic``."""
    _check_state(x, log_w, "hilbert", True)
    return _ordered_systematic(log_w, n, generator, hilbert_order(x, torch.softmax(log_w.double(), 0)), u)


def sorted_resample(log_w: Tensor, n: int, generator: torch.Generator, x: Tensor | None = None,
                    u: Tensor | None = None) -> Tensor:
    """Systematic resampling with the particles ``x`` ``[N, ...]`` sorted along the weighted
    particles' first principal axis (``hilbert.principal_order``); ``u`` as ``hilbert_resample``."""
    _check_state(x, log_w, "sorted", True)
    return _ordered_systematic(log_w, n, generator, principal_order(x, torch.softmax(log_w.double(), 0)), u)


RESAMPLE = {"multinomial": multinomial_resample, "systematic": systematic_resample,
            "hilbert": hilbert_resample, "sorted": sorted_resample}


def get_resampler(name: str):
    """The resampler ``(log_w [N], n, generator, x=None) -> idx [n]`` called ``name``."""
    if name not in RESAMPLE:
        raise ValueError(f"unknown resampler {name!r}; valid: {', '.join(RESAMPLERS)}")
    return RESAMPLE[name]


def reselect(step, idx: Tensor, den: DenoiserBase, x: Tensor | None = None) -> DenoiserBase:
    """Resample a running loop: make the next step of ``iterate`` start from rows ``idx``
    of ``step.x`` (or from ``x``, those rows already taken), of ``step.state`` (streams
    forked, so copies of one particle part ways) and from the model ``den`` (already
    selected by the caller). Returns ``den``."""
    state = step.state.select(idx)
    if state.rng is not None:
        state = state.replace(rng=state.rng.fork(step.i + 1))
    step.x = step.x[idx] if x is None else x
    step.state, step.den = state, den
    return den


def _log_potential(kind: str, lam: float, r: Tensor, memo: dict) -> Tensor:
    """``log G_i`` ``[N]`` for the current rewards ``r`` and the lineage memory ``memo``
    (updated in place: previous reward, running max, running sum)."""
    if kind == "difference":
        out = lam * (r - memo["prev"])
        memo["prev"] = r
    elif kind == "max":
        memo["max"] = torch.maximum(memo["max"], r)
        out = lam * memo["max"]
    elif kind == "sum":
        memo["sum"] = memo["sum"] + r
        out = lam * memo["sum"]
    else:
        out = lam * r
    return out


class FeynmanKacWeights:
    """The weight bookkeeping of FK-steering SMC over ``n`` particles, shared by ``smc`` and
    ``text.text_smc``: potentials from intermediate rewards, weights carried across steps,
    resampling when the ESS falls below ``ess_threshold * n``, and the final correction
    ``lam r(x_0) - sum_i log G_i`` per lineage (see the module docstring)."""

    def __init__(self, n: int, potential: str, lam: float, resample: str, ess_threshold: float,
                 generator: torch.Generator):
        if potential not in POTENTIALS:
            raise ValueError(f"unknown potential {potential!r}; valid: {', '.join(POTENTIALS)}")
        resampler = get_resampler(resample)
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
        self.n, self.potential, self.lam = int(n), potential, float(lam)
        self.resampler, self.ess_threshold, self.gen = resampler, float(ess_threshold), generator
        zeros = torch.zeros(self.n, dtype=torch.float64)
        self.memo = {"prev": zeros, "max": torch.full((self.n,), -float("inf"), dtype=torch.float64), "sum": zeros}
        self.applied = zeros.clone()  # [N] sum of log potentials along each lineage
        self.log_w = zeros.clone()  # [N] carried since the last resampling
        self.ess: list[float] = []

    def update(self, r: Tensor, x: Tensor | None = None) -> Tensor | None:
        """Apply the potential of the intermediate rewards ``r`` ``[N]``; returns the
        resampled lineage indices ``[N]`` when the ESS fell below the threshold (the
        weights are then reset and the lineage memory re-indexed), else ``None``. ``x``:
        the particles ``[N, ...]``, for the resamplers that order by state (``ORDERED``)."""
        log_g = _log_potential(self.potential, self.lam, r.double(), self.memo)
        self.applied = self.applied + log_g
        self.log_w = self.log_w + log_g
        ess = effective_sample_size(self.log_w)
        self.ess.append(ess)
        if ess >= self.ess_threshold * self.n:
            return None
        idx = self.resampler(self.log_w, self.n, self.gen, x=x)
        self.memo = {k: v[idx] for k, v in self.memo.items()}
        self.applied = self.applied[idx]
        self.log_w = torch.zeros(self.n, dtype=torch.float64)
        return idx

    def final(self, r: Tensor) -> Tensor:
        """The final log-weights ``[N]`` given the clean rewards ``r`` ``[N]``: each lineage's
        potentials replaced by ``exp(lam r)``."""
        return self.log_w + self.lam * r.double() - self.applied

    def draw(self, log_w: Tensor, x: Tensor | None = None) -> Tensor:
        """``N`` indices resampled by ``log_w`` (the final equal-weight sample of ``x``)."""
        return self.resampler(log_w, self.n, self.gen, x=x)


def smc(den: DenoiserBase, reward, n_particles: int, shape, lam: float = 1.0, solver="ddpm",
        steps: int = 50, ts=None, potential: str = "difference", resample: str = "systematic",
        ess_threshold: float = 0.5, every: int = 1, seed: int = 0, allow_deterministic: bool = False,
        return_weighted: bool = False, dtype=torch.float32, device="cpu", **solver_options) -> ScalingResult:
    """FK-steering SMC targeting ``p(x) exp(lam reward(x))``.

    Args:
        den: the model; ``reward``: a verifier ``x0 [B, ...] -> [B]``.
        n_particles: ``N``; ``shape``: one sample's shape (e.g. ``(2,)`` or ``(1, 8, 8)``).
        solver: a *stochastic* solver name or instance (``ddpm``, ``dpmpp-2m-sde``, ...).
        potential: one of ``difference``, ``max``, ``sum``, ``immediate``.
        resample: a name in ``RESAMPLERS``: ``systematic``, ``multinomial``, or the state-ordered
            ``hilbert`` / ``sorted`` (SQMC-style, ``hilbert.py``).
        ess_threshold: resample when ``ESS < ess_threshold * N`` (1: every step, 0: only at the end).
        every: apply potentials (and consider resampling) every ``every`` steps only, as
            FK steering's resampling interval; fewer verifier calls, same exact target.
        return_weighted: return the final particles with their weights (``info['log_weights']``)
            instead of resampling them to equal weight.
    Returns:
        ``ScalingResult`` with ``N`` samples; ``info`` holds ``ess`` per step,
        ``resampled`` (step indices), ``log_weights`` (final, before the last resampling).
    """
    if int(every) < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    if int(n_particles) < 1:
        raise ValueError(f"n_particles must be >= 1, got {n_particles}")
    weights = FeynmanKacWeights(n_particles, potential, lam, resample, ess_threshold,
                                torch.Generator().manual_seed(int(seed) ^ 0x5EED))
    solver = solver_registry.get(solver, **solver_options)
    if not solver.stochastic:
        msg = (f"SMC needs a stochastic solver, but {solver.name!r} is deterministic: resampled copies "
               f"of a particle would never part. Use one of: {', '.join(stochastic_solver_names())} "
               f"(or pass allow_deterministic=True)")
        if not allow_deterministic:
            raise ValueError(msg)
        warnings.warn(msg.replace(" (or pass allow_deterministic=True)", "; going on as asked"), stacklevel=2)
    verifier = as_verifier(reward)
    calls0 = verifier.calls
    tap = Tap(den)
    ts = grid(den.process, steps, ts)
    n = int(n_particles)
    rng = SampleRNG.from_seed(seed, batch=n, device=device)
    x = initial_noise(den, (n,) + sample_shape(shape), ts, rng, dtype=dtype, device=device)
    resampled = []
    n_steps = ts.numel() - 1
    x_prev = x
    for step in iterate(tap, solver, x, ts, rng):
        i, x = step.i, step.x
        if i == n_steps - 1:
            break
        if (i + 1) % int(every) == 0:
            # potential from the solver's prediction at the start of this step (x_prev at ts[i])
            idx = weights.update(verifier(tap.x0_at(x_prev, ts[i])), x=x)
            if idx is not None:
                tap = reselect(step, idx, tap.select(idx))
                x = step.x
                resampled.append(i)
        tap.clear()
        x_prev = x
    r_final = verifier(x).double()
    log_w = weights.final(r_final)
    info = {"ess": weights.ess, "resampled": resampled, "log_weights": log_w.clone(),
            "final_ess": effective_sample_size(log_w), "potential": potential, "solver": solver.name}
    if not return_weighted:
        idx = weights.draw(log_w, x=x)
        x, r_final = x[idx], r_final[idx]
    return ScalingResult(x=x, reward=r_final.to(x.dtype), nfe=tap.rows, verifier_calls=verifier.calls - calls0,
                         method="smc", info=info)
