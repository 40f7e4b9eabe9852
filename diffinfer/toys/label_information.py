"""Exact information between a Gaussian mixture sample and discrete labels of its components.

A mixture ``p(x) = sum_k w_k N(m_k, C_k)`` whose component ``k`` carries a label ``y_k``
(an integer, or several) defines a joint law ``p(x, y)``; ``p(y | x)`` is the sum of the
responsibilities of the components labelled ``y``. Then ``I(x; y) = H(y) - E_x H(y | x)``
(nats) is a Monte Carlo average over exact samples of ``x`` only: no diffusion involved.
This is the oracle for ``diffinfer.pid`` (mutual information from denoising errors).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .gaussian_mixture import GaussianMixture

_F64 = torch.float64


def _labels(gm: GaussianMixture, component_labels) -> Tensor:
    lab = torch.as_tensor(component_labels, dtype=torch.long)
    if lab.shape != (gm.n_components,):
        raise ValueError(f"component_labels must have one entry per component ({gm.n_components}), got shape {tuple(lab.shape)}")
    if bool((lab < 0).any()):
        raise ValueError("labels must be non-negative integers")
    return lab


def label_conditional(gm: GaussianMixture, component_labels, value: int) -> GaussianMixture:
    """``p(x | y = value)``: the components labelled ``value``, weights renormalised."""
    keep = (_labels(gm, component_labels) == int(value)).nonzero().squeeze(1)
    if keep.numel() == 0 or float(gm.weights[keep].sum()) <= 0:
        raise ValueError(f"no component has label {value}")
    return GaussianMixture(gm.means[keep], gm.covs[keep], gm.weights[keep])


def sample_with_components(gm: GaussianMixture, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` exact samples ``x`` ``[n, D]`` and their component indices ``[n]``."""
    g = torch.Generator().manual_seed(int(seed))
    k = torch.multinomial(gm.weights, n, replacement=True, generator=g)
    z = torch.randn(n, gm.dim, dtype=_F64, generator=g)
    return gm.means[k] + torch.einsum("nde,ne->nd", gm._sqrt_covs[k], z), k


def exact_mutual_information(gm: GaussianMixture, component_labels, n: int = 100_000,
                             seed: int = 0) -> tuple[float, float]:
    """``I(x; y)`` in nats and its Monte Carlo standard error: ``H(y) - mean_i H(y | x_i)``
    over ``n`` exact samples ``x_i ~ p(x)`` (``p(y | x)`` exact from component densities)."""
    lab = _labels(gm, component_labels)
    n_values = int(lab.max()) + 1
    onehot = torch.nn.functional.one_hot(lab, n_values).to(_F64)  # [K, V]
    py = gm.weights @ onehot  # [V]
    h_y = -float((py[py > 0] * py[py > 0].log()).sum())
    x, _ = sample_with_components(gm, n, seed)
    logpdf, _ = gm._component_logpdf(x, gm.means, gm.covs)  # [n, K]
    logjoint = logpdf + gm.weights.log()  # log w_k N(x; m_k, C_k)
    # log p(y | x) = logsumexp over components labelled y, minus log p(x)
    logpy_x = torch.stack([torch.logsumexp(logjoint[:, lab == v], 1) if bool((lab == v).any())
                           else torch.full((n,), -math.inf, dtype=_F64) for v in range(n_values)], 1)
    logpy_x = logpy_x - torch.logsumexp(logjoint, 1, keepdim=True)
    p = logpy_x.exp()
    h_cond = -(torch.where(p > 0, p * logpy_x, torch.zeros_like(p))).sum(1)  # [n]
    return h_y - float(h_cond.mean()), float(h_cond.std()) / math.sqrt(n)


# --- two labels: constructions with known redundancy, uniqueness and synergy ---------------
CONSTRUCTIONS = ("xor", "copy", "unique", "independent")


def two_label_mixture(name: str, a: float = 1.0, std: float = 0.7) -> tuple[GaussianMixture, Tensor, Tensor]:
    """A 2-D mixture with component labels ``(y1_k, y2_k)``, isotropic components of std ``std``:

    - ``xor``: independent fair bits, mean ``(+-a, 0)`` by ``y1 XOR y2``: ``I(x; y1) = I(x; y2) = 0``,
      all information is synergy;
    - ``copy``: ``y2 = y1``, mean ``(+-a, 0)`` by ``y1``: all information is redundant;
    - ``unique``: independent bits, mean ``(+-a, 0)`` by ``y1`` only: all of it unique to ``y1``;
    - ``independent``: independent bits, mean ``(+-a, +-a)`` (``y1`` sets the first coordinate,
      ``y2`` the second): ``I(x; y1, y2) = I(x; y1) + I(x; y2)``.
    """
    f64 = _F64
    if name == "copy":
        y1 = y2 = torch.tensor([0, 1])
    elif name in ("xor", "unique", "independent"):
        y1, y2 = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    else:
        raise ValueError(f"unknown construction {name!r}; valid: {', '.join(CONSTRUCTIONS)}")
    sign = lambda b: (2.0 * b.to(f64) - 1.0) * a  # noqa: E731
    zero = torch.zeros(y1.numel(), dtype=f64)
    if name == "xor":
        means = torch.stack([sign(y1 ^ y2), zero], 1)
    elif name == "independent":
        means = torch.stack([sign(y1), sign(y2)], 1)
    else:
        means = torch.stack([sign(y1), zero], 1)
    covs = (std * std) * torch.eye(2, dtype=f64).expand(y1.numel(), 2, 2)
    return GaussianMixture(means, covs), y1, y2


def exact_decomposition(gm: GaussianMixture, y1, y2, n: int = 200_000, seed: int = 0) -> dict[str, float]:
    """Exact ``I(x; y1)``, ``I(x; y2)``, ``I(x; y1, y2)`` (``exact_mutual_information``, one
    sample set for all three) and their minimum-mutual-information PID terms."""
    y1, y2 = _labels(gm, y1), _labels(gm, y2)
    i1, s1 = exact_mutual_information(gm, y1, n, seed)
    i2, s2 = exact_mutual_information(gm, y2, n, seed)
    i12, s12 = exact_mutual_information(gm, y1 * (int(y2.max()) + 1) + y2, n, seed)
    r = min(i1, i2)
    return {"mi1": i1, "mi2": i2, "mi12": i12, "redundancy": r, "unique1": i1 - r, "unique2": i2 - r,
            "synergy": i12 - i1 - i2 + r, "se_mi1": s1, "se_mi2": s2, "se_mi12": s12}


def label_denoisers(gm: GaussianMixture, y1, y2, process):
    """Exact denoisers ``(p(x), c -> p(x | y1 = c), c -> p(x | y2 = c), (c1, c2) -> p(x | y1, y2))``
    in the form ``diffinfer.pid.information_decomposition`` takes (each built once)."""
    y1, y2 = _labels(gm, y1), _labels(gm, y2)
    n2 = int(y2.max()) + 1
    d1 = {c: label_conditional(gm, y1, c).denoiser(process) for c in torch.unique(y1).tolist()}
    d2 = {c: label_conditional(gm, y2, c).denoiser(process) for c in torch.unique(y2).tolist()}
    joint = y1 * n2 + y2
    d12 = {c: label_conditional(gm, joint, c).denoiser(process) for c in torch.unique(joint).tolist()}
    return gm.denoiser(process), d1.__getitem__, d2.__getitem__, lambda c1, c2: d12[c1 * n2 + c2]
