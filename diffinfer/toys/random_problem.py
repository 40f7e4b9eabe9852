"""Random oracle problems: mixture priors, measurements and tilts drawn from a seed.

Methods are tested on problems nobody tuned them to: ``random_problem(seed)`` draws a
Gaussian-mixture prior (2-8 dimensions, 2-6 components with anisotropic covariances,
weights from 0.02 to 0.9, components that overlap or stand apart), then either a linear
measurement ``y = A x0 + noise_std n`` (``A`` with at most half as many rows as the
dimension, ``noise_std`` in ``[0.05, 1]``) or a linear-Gaussian reward tilt ``p(x) exp(lam r(x))``, and the exact target
(posterior / tilted mixture) in closed form (``toys.posterior``, ``toys.tilted``).

Distances to the target are judged against the **floor**: the same distance between two
independent exact sample sets of the same size (``floors``), so a tolerance says "within k
times what sampling noise alone gives", not a number picked to pass. ``score`` measures a
sample set: sliced Wasserstein to exact samples, the component masses (mean clean-data
responsibilities, which exact samples match in expectation even where components overlap),
mean and covariance errors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..metrics import sliced_wasserstein
from .gaussian_mixture import GaussianMixture
from .posterior import linear_gaussian_posterior
from .tilted import LinearGaussianReward, tilt

_F64 = torch.float64
KINDS = ("measurement", "tilt")
#: a drawn target keeps at least two components of this mass (a measurement that pins one
#: component tests little of a sampler); the measurement is redrawn, up to MAX_DRAWS times
MIN_MASS = 0.05
MAX_DRAWS = 50


@dataclass(frozen=True)
class RandomProblem:
    """One drawn problem. ``target`` is the exact law to sample: the posterior
    ``p(x0 | y)`` (``kind='measurement'``, ``lam = 1``) or the tilt
    ``p(x0) exp(lam r(x0)) / Z`` (``kind='tilt'``), with ``r = reward`` =
    ``-|y - A x|^2 / (2 noise_std^2)`` either way."""

    seed: int
    kind: str
    prior: GaussianMixture
    A: Tensor          # [M, D]
    y: Tensor          # [M]
    noise_std: float
    lam: float
    x_true: Tensor     # [D] the prior draw y was measured from
    target: GaussianMixture

    @property
    def reward(self) -> LinearGaussianReward:
        return LinearGaussianReward(self.A, self.y, self.noise_std)

    @property
    def dim(self) -> int:
        return self.prior.dim


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), dtype=_F64, generator=g))


def _integer(g: torch.Generator, lo: int, hi: int) -> int:
    """Uniform on ``lo..hi`` inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def _weights(g: torch.Generator, k: int, low: float = 0.02, high: float = 0.9) -> Tensor:
    """Mixture weights in ``[low, high]`` summing to 1: uneven random weights, clipped into
    the box and renormalised until they stay there."""
    gam = -torch.log(torch.rand(k, dtype=_F64, generator=g))  # Exp(1): Dirichlet(1) after normalising
    w = gam ** 1.5  # more uneven than Dirichlet(1)
    w = w / w.sum()
    for _ in range(50):
        w = w.clamp(low, high)
        w = w / w.sum()
        if float(w.min()) >= low - 1e-12 and float(w.max()) <= high + 1e-12:
            break
    return w


def _covariance(g: torch.Generator, dim: int, scale: float) -> Tensor:
    """A random anisotropic covariance ``Q diag(e) Q^T`` with eigenvalues log-uniform over
    ``[0.05, 1] * scale^2``."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, dtype=_F64, generator=g))
    e = torch.exp(torch.empty(dim, dtype=_F64).uniform_(math.log(0.05), 0.0, generator=g)) * scale ** 2
    c = (q * e) @ q.T
    return 0.5 * (c + c.T)


def random_problem(seed: int, kind: str = "measurement", dim: int | None = None,
                   n_components: int | None = None) -> RandomProblem:
    """A problem drawn from ``seed`` (module docstring); ``dim`` / ``n_components`` fix those
    draws. Every draw is a function of the seed alone."""
    if kind not in KINDS:
        raise ValueError(f"unknown problem kind {kind!r}; valid: {', '.join(KINDS)}")
    g = torch.Generator().manual_seed(int(seed))
    D = _integer(g, 2, 8) if dim is None else int(dim)
    K = _integer(g, 2, 6) if n_components is None else int(n_components)
    if D < 2 or K < 1:
        raise ValueError(f"need dim >= 2 and n_components >= 1, got {D}, {K}")
    spread = _uniform(g, 0.5, 3.0)  # mean spread: below ~1 the components overlap, above they stand apart
    means = spread * torch.randn(K, D, dtype=_F64, generator=g)
    covs = torch.stack([_covariance(g, D, _uniform(g, 0.3, 1.0)) for _ in range(K)])
    prior = GaussianMixture(means, covs, _weights(g, K))
    for _ in range(MAX_DRAWS):  # measurements until the target keeps two components (see below)
        M = _integer(g, 1, max(1, D // 2))
        A = torch.randn(M, D, dtype=_F64, generator=g) / math.sqrt(D)
        noise_std = math.exp(_uniform(g, math.log(0.05), 0.0))
        x_true = prior.sample(1, seed=int(torch.randint(0, 2**31, (), generator=g)))[0]
        y = A @ x_true + noise_std * torch.randn(M, dtype=_F64, generator=g)
        lam = 1.0 if kind == "measurement" else _uniform(g, 0.25, 1.0)
        if kind == "measurement":
            target = linear_gaussian_posterior(prior, A, y, noise_std)
        else:
            target = tilt(prior, LinearGaussianReward(A, y, noise_std), lam)
        if int((target.weights >= MIN_MASS).sum()) >= min(2, K):
            break
    return RandomProblem(int(seed), kind, prior, A, y, noise_std, lam, x_true, target)


def component_masses(target: GaussianMixture, x: Tensor) -> Tensor:
    """The mean clean-data responsibility of each component of ``target`` over ``x`` ``[N, D]``
    (``[K]``): equals ``target.weights`` in expectation for exact samples, also where
    components overlap (unlike a hard nearest-component count)."""
    logpdf, _ = target._component_logpdf(target._flat(x), target.means, target.covs)  # [N, K]
    return torch.softmax(logpdf + torch.log(target.weights), dim=1).mean(0)


def score(samples: Tensor, target: GaussianMixture, reference: Tensor | None = None, seed: int = 0) -> dict:
    """Distances of ``samples`` ``[N, D]`` to ``target``: ``sw`` (sliced Wasserstein to
    ``reference``, default ``N`` exact samples drawn with ``seed``), ``mass`` (largest
    component-mass error), ``mean`` (norm of the mean error), ``cov`` (largest covariance
    entry error)."""
    x = samples.reshape(samples.shape[0], -1).to(_F64)
    if not bool(torch.isfinite(x).all()):
        return {"sw": math.inf, "mass": math.inf, "mean": math.inf, "cov": math.inf}
    ref = target.sample(x.shape[0], seed=seed) if reference is None else reference
    return {"sw": sliced_wasserstein(x, ref, seed=seed),
            "mass": float((component_masses(target, x) - target.weights).abs().max()),
            "mean": float((x.mean(0) - target.mean()).norm()),
            "cov": float((torch.cov(x.T).reshape(target.dim, target.dim) - target.covariance()).abs().max())}


def floors(target: GaussianMixture, n: int, repeats: int = 8, seed: int = 10_000) -> dict:
    """The floor of each ``score`` metric at sample size ``n``: the largest value over
    ``repeats`` pairs of independent exact sample sets (so a method within ``k`` floors is
    within ``k`` times what exact sampling alone can show at this size)."""
    out: dict[str, float] = {}
    for r in range(repeats):
        a = target.sample(n, seed=seed + 2 * r)
        b = target.sample(n, seed=seed + 2 * r + 1)
        for name, value in score(a, target, reference=b, seed=r).items():
            out[name] = max(out.get(name, 0.0), value)
    return out
