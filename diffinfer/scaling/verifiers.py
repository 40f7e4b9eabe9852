"""Verifiers: callables ``reward(x0) -> [B]`` that score clean samples (higher is better).

Every search, SMC and tree method takes a verifier; wrapping it in ``Verifier`` counts
the samples it scores (``calls``), reported next to NFE. Built-ins:

- ``LogDensity``: exact ``log p(x)`` of a toy with ``log_prob`` (e.g. a ``GaussianMixture``).
- ``RegionIndicator``: 1 inside a ball, 0 outside (a sparse, non-differentiable reward).
- ``LinearGaussian``: the Gaussian log-likelihood of a linear measurement
  (``diffinfer.toys.tilted.LinearGaussianReward``), whose tilted target is exact.
- ``ClassLogProb``: a classifier's log-probability of a class (``class:7`` on the CLI).
- ``Normalized``: ``(r - shift) / scale``; ``Ensemble``: a weighted sum of verifiers.
- Text: ``RegexScore``, ``KeywordScore``, ``ARLogLikelihood`` (in ``text``).

``get_verifier(spec, ...)`` parses the CLI forms ``class:7``, ``density``, ``region:R``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


class Verifier:
    """Wrap ``fn(x0 [B, ...]) -> [B]`` and count the samples it scores.

    ``calls`` is the number of samples scored (a batch of ``B`` counts ``B``), the unit in
    which Ma et al. 2025 count verifier cost. Outputs are checked: shape ``[B]``, finite
    (``-inf`` is allowed for impossible samples; NaN raises).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str | None = None):
        if isinstance(fn, Verifier):
            fn = fn.fn
        if not callable(fn):
            raise TypeError(f"a verifier must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "name", None) or type(fn).__name__
        self.calls = 0

    def __call__(self, x0: Tensor) -> Tensor:
        r = self.fn(x0)
        r = torch.as_tensor(r)
        if r.shape != (x0.shape[0],):
            raise ValueError(f"verifier {self.name!r} returned shape {tuple(r.shape)}, expected [{x0.shape[0]}]")
        if bool(torch.isnan(r).any()):
            raise ValueError(f"verifier {self.name!r} returned NaN")
        self.calls += x0.shape[0]
        return r

    def __repr__(self) -> str:
        return f"Verifier({self.name}, calls={self.calls})"


def as_verifier(reward) -> Verifier:
    """A ``Verifier`` (counting) for any callable; verifiers pass through."""
    return reward if isinstance(reward, Verifier) else Verifier(reward)


class LogDensity:
    """``log p(x)`` ``[B]`` under a toy with an exact ``log_prob`` (cast to ``x``'s dtype)."""

    name = "density"

    def __init__(self, toy):
        if not hasattr(toy, "log_prob"):
            raise TypeError("LogDensity needs an object with log_prob(x)")
        self.toy = toy

    def __call__(self, x: Tensor) -> Tensor:
        return self.toy.log_prob(x).to(x.dtype)


class RegionIndicator:
    """1 where ``|x - center| <= radius`` (flattened), else 0 ``[B]``."""

    name = "region"

    def __init__(self, center, radius: float):
        self.center = torch.as_tensor(center, dtype=torch.float64).flatten()
        if not radius > 0:
            raise ValueError(f"radius must be positive, got {radius}")
        self.radius = float(radius)

    def __call__(self, x: Tensor) -> Tensor:
        d = (x.reshape(x.shape[0], -1).double() - self.center.to(x.device)).norm(dim=1)
        return (d <= self.radius).to(x.dtype)


def LinearGaussian(A, y, noise_std: float = 1.0):
    """The Gaussian log-likelihood reward of ``y = A x + noise`` (see ``toys.tilted``)."""
    from ..toys.tilted import LinearGaussianReward
    return LinearGaussianReward(A, y, noise_std)


class ClassLogProb:
    """``log softmax(classifier(x))[:, label]`` ``[B]``: a classifier's log-probability of
    a class (``classifier`` maps ``[B, ...]`` to logits ``[B, C]``).

    Differentiable in ``x`` exactly when ``x`` requires grad and grad mode is on (gradient
    guidance, noise optimisation); otherwise no graph is built, even for a classifier whose
    parameters require grad, so plain scoring stays cheap."""

    def __init__(self, classifier: Callable[[Tensor], Tensor], label: int):
        self.classifier, self.label = classifier, int(label)
        self.name = f"class:{self.label}"

    def __call__(self, x: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
            logits = self.classifier(x)
        if logits.dim() != 2 or not 0 <= self.label < logits.shape[1]:
            raise ValueError(f"class {self.label} out of range for logits of shape {tuple(logits.shape)}")
        return torch.log_softmax(logits.double(), dim=1)[:, self.label].to(x.dtype)


class Normalized:
    """``(reward(x) - shift) / scale``: put verifiers on a common scale before an ensemble.
    ``Normalized.fit(reward, x_ref)`` takes ``shift``/``scale`` from reference samples."""

    def __init__(self, reward: Callable, shift: float = 0.0, scale: float = 1.0):
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.reward, self.shift, self.scale = reward, float(shift), float(scale)
        self.name = f"normalized({getattr(reward, 'name', type(reward).__name__)})"

    @classmethod
    def fit(cls, reward: Callable, x_ref: Tensor) -> "Normalized":
        r = torch.as_tensor(reward(x_ref)).double()
        r = r[torch.isfinite(r)]
        if r.numel() < 2:
            raise ValueError("need at least 2 finite reference rewards to normalise")
        return cls(reward, float(r.mean()), max(float(r.std()), 1e-12))

    def __call__(self, x: Tensor) -> Tensor:
        return (self.reward(x) - self.shift) / self.scale


class Ensemble:
    """``sum_j weights_j * reward_j(x)`` ``[B]`` (equal weights unless given)."""

    name = "ensemble"

    def __init__(self, rewards: Sequence[Callable], weights: Sequence[float] | None = None):
        if len(rewards) == 0:
            raise ValueError("an ensemble needs at least one verifier")
        weights = [1.0 / len(rewards)] * len(rewards) if weights is None else list(weights)
        if len(weights) != len(rewards):
            raise ValueError(f"{len(weights)} weights for {len(rewards)} verifiers")
        self.rewards, self.weights = list(rewards), [float(w) for w in weights]

    def __call__(self, x: Tensor) -> Tensor:
        return sum(w * torch.as_tensor(r(x)) for w, r in zip(self.weights, self.rewards))


SPECS = ("class:K", "density", "region:RADIUS")


def get_verifier(spec: str, classifier: Callable | None = None, toy=None, center=None) -> Callable:
    """A verifier from a CLI spec: ``class:K`` (needs ``classifier``), ``density`` (needs
    ``toy``), ``region:R`` (a ball of radius ``R`` around ``center``, default the origin)."""
    name, _, arg = spec.partition(":")
    if name == "class":
        if classifier is None:
            raise ValueError("reward 'class:K' needs a classifier")
        try:
            return ClassLogProb(classifier, int(arg))
        except ValueError:
            raise ValueError(f"bad class in reward {spec!r}; expected class:K with an integer K") from None
    if name == "density":
        if toy is None:
            raise ValueError("reward 'density' needs a model with an exact log-density (a toy)")
        return LogDensity(toy)
    if name == "region":
        if toy is None and center is None:
            raise ValueError("reward 'region:R' needs a center")
        return RegionIndicator(center if center is not None else torch.zeros(toy.dim), float(arg or 1.0))
    raise ValueError(f"unknown reward {spec!r}; valid: {', '.join(SPECS)}")


class GradientCounter:
    """A reward evaluated with its gradient (``reward(x0) -> [B]``), counting the rows.

    Honest cost of one row: the reward's forward and backward pass are 3 verifier calls, and
    the backward pass through the model that produced ``x0`` is 2 NFE (its forward pass is
    counted where it runs). Raises if the reward does not depend differentiably on an
    ``x0`` that requires grad (a reward computed under ``no_grad`` would silently give a
    zero gradient)."""

    VERIFIER_CALLS_PER_ROW = 3
    NFE_PER_ROW = 2

    def __init__(self, reward):
        self.verifier = Verifier(reward)  # a counter of its own, apart from the plain scoring
        self.name = self.verifier.name

    @property
    def rows(self) -> int:
        return self.verifier.calls

    def __call__(self, x0: Tensor) -> Tensor:
        r = self.verifier(x0)  # [B]
        if x0.requires_grad and not r.requires_grad:
            raise ValueError(f"reward {self.name!r} is not differentiable in x0 (computed under no_grad, or "
                             f"not a torch function of x0); gradient-guided search needs a differentiable reward")
        return r
