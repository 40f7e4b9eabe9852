"""Mutual information and its partial information decomposition from denoising errors.

DiffusionPID (Dewan et al. 2024, "DiffusionPID: Interpreting Diffusion via Partial
Information Decomposition") splits what two conditions ``y1, y2`` tell a diffusion model
about a sample ``x`` into redundant, unique and synergistic parts, with every mutual
information read off denoising errors. The information-theoretic relation behind it
(Kong et al. 2023, "Information-Theoretic Diffusion", the I-MMSE relation; Kong et al.
2024, "Interpretable Diffusion via Information Decomposition") is, in log-SNR ``lam``,

    i(x; y) = log p(x | y) / p(x) = 1/2 int E_eps[ |eps - eps_hat(x_t)|^2 - |eps - eps_hat(x_t | y)|^2 ] dlam,

so ``I(x; y) = E_{x, y} i(x; y)`` is estimated by drawing ``lam`` uniformly on a finite range
(weight ``(lam_max - lam_min) / 2``), the *same* ``(t, eps)`` for the conditional and the
unconditional denoiser (the classifier's pairs, ``classify.logsnr_pairs``).

Redundancy here is the minimum mutual information ``R = min(I(x; y1), I(x; y2))``
(Barrett 2015); ``U_i = I(x; y_i) - R`` and ``S = I(x; y1, y2) - I(x; y1) - I(x; y2) + R``.
DiffusionPID uses Williams & Beer's ``I_min`` (an expectation over ``x`` of the smaller
*specific* information); on the XOR, copied-bit and unique-bit constructions of the tests
(one label carries no information about ``x`` or both carry the same) the two coincide.

Standard errors: rows are split into ``n_groups`` groups, each with its own ``(t, eps)``
pairs, so group means are i.i.d.; the SE is their standard deviation over ``sqrt(n_groups)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .classify import logsnr_pairs, logsnr_range, weighted_eps_errors
from .denoiser import DenoiserBase


@dataclass
class Estimate:
    """A Monte Carlo estimate (nats) and its standard error."""

    value: float
    se: float

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.se:.4f}"


@dataclass
class Decomposition:
    """``I(x; y1)``, ``I(x; y2)``, ``I(x; y1, y2)`` and the PID terms (all nats)."""

    mi1: Estimate
    mi2: Estimate
    mi12: Estimate
    redundancy: Estimate
    unique1: Estimate
    unique2: Estimate
    synergy: Estimate


def _getter(dens) -> Callable[[int], DenoiserBase]:
    if callable(dens) and not isinstance(dens, (list, tuple)):
        return dens
    dens = list(dens)
    return lambda c: dens[c]


def _check_labels(labels, B: int, name: str) -> Tensor:
    lab = torch.as_tensor(labels)
    if lab.shape != (B,) or lab.dtype.is_floating_point or lab.dtype == torch.bool:
        raise ValueError(f"{name} must be integer labels of shape [{B}], got {tuple(lab.shape)} {lab.dtype}")
    if bool((lab < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    return lab.long()


def _pointwise(den_uncond: DenoiserBase, conds: Sequence[tuple[Callable[[int], DenoiserBase], Tensor]],
               x: Tensor, n_pairs: int, n_groups: int, t_range, seed: int) -> Tensor:
    """Group means of ``i(x; y)`` for each conditioning: ``[n_groups, len(conds)]``."""
    B = x.shape[0]
    if not 2 <= n_groups <= B:
        raise ValueError(f"n_groups must lie in [2, {B}] (the batch), got {n_groups}")
    lam = logsnr_range(den_uncond.process, t_range)
    out = torch.zeros(n_groups, len(conds), dtype=torch.float64)
    for g, rows in enumerate(torch.arange(B).chunk(n_groups)):
        xg = x[rows]
        t, eps = logsnr_pairs(den_uncond.process, lam, n_pairs, xg, seed * 100_003 + g)  # [n], [n, b, ...]
        du = den_uncond if rows.numel() == B else den_uncond.select(rows)
        err_u = weighted_eps_errors(du, xg, t, eps, lam).mean(1)  # [b]
        for j, (get, lab) in enumerate(conds):
            lg = lab[rows]
            i_pt = torch.empty(rows.numel(), dtype=torch.float64)
            for c in torch.unique(lg).tolist():
                local = (lg == c).nonzero().squeeze(1)
                dc = get(c).select(rows[local])
                i_pt[local] = err_u[local] - weighted_eps_errors(dc, xg[local], t, eps[:, local], lam).mean(1)
            out[g, j] = i_pt.mean()
    return out


def _estimate(per_group: Tensor) -> Estimate:
    return Estimate(float(per_group.mean()), float(per_group.std()) / math.sqrt(per_group.numel()))


def mutual_information(den_uncond: DenoiserBase, den_cond: Sequence[DenoiserBase] | Callable[[int], DenoiserBase],
                       x: Tensor, labels, n_pairs: int = 16, n_groups: int = 20,
                       t_range: tuple[float, float] | None = None, seed: int = 0) -> Estimate:
    """``I(x; y)`` (nats) from samples ``(x, labels)`` of the joint law, ``x`` ``[B, ...]``,
    ``labels`` ``[B]`` integers; ``den_cond(c)`` (or ``den_cond[c]``) is the denoiser of
    ``p(x | y = c)``, bound to the whole batch (it is ``select``-ed to rows)."""
    lab = _check_labels(labels, x.shape[0], "labels")
    return _estimate(_pointwise(den_uncond, [(_getter(den_cond), lab)], x, n_pairs, n_groups, t_range, seed)[:, 0])


def information_decomposition(den_uncond: DenoiserBase, den_y1, den_y2, den_y12: Callable[[int, int], DenoiserBase],
                              x: Tensor, y1, y2, n_pairs: int = 16, n_groups: int = 20,
                              t_range: tuple[float, float] | None = None, seed: int = 0) -> Decomposition:
    """Minimum-mutual-information PID of what ``(y1, y2)`` tell about ``x``.

    ``den_y1(c)`` / ``den_y2(c)``: denoisers of ``p(x | y1 = c)`` / ``p(x | y2 = c)``;
    ``den_y12(c1, c2)`` of ``p(x | y1 = c1, y2 = c2)``. All three informations share the
    ``(t, eps)`` pairs (common random numbers), so the differences have small errors.
    """
    B = x.shape[0]
    l1, l2 = _check_labels(y1, B, "y1"), _check_labels(y2, B, "y2")
    n2 = int(l2.max()) + 1
    get12 = lambda c: den_y12(c // n2, c % n2)  # noqa: E731
    per = _pointwise(den_uncond, [(_getter(den_y1), l1), (_getter(den_y2), l2), (get12, l1 * n2 + l2)],
                     x, n_pairs, n_groups, t_range, seed)  # [G, 3]
    i1, i2, i12 = per[:, 0], per[:, 1], per[:, 2]
    red = i1 if float(i1.mean()) <= float(i2.mean()) else i2  # the argmin is fixed on the totals
    return Decomposition(mi1=_estimate(i1), mi2=_estimate(i2), mi12=_estimate(i12), redundancy=_estimate(red),
                         unique1=_estimate(i1 - red), unique2=_estimate(i2 - red),
                         synergy=_estimate(i12 - i1 - i2 + red))
