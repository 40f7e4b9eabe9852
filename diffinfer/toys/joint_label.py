"""The exact joint denoiser of (data, one-hot label) for a Gaussian mixture whose components
carry class labels, with one noise level per block.

Component ``k`` of ``p(x) = sum_k w_k N(m_k, C_k)`` carries the class ``c_k``; the joint law of
``z = (x, l)`` with ``l = onehot(c_k) + label_std * n`` is again a Gaussian mixture, with a
degenerate (``label_std = 0``) or tiny label part, independent of ``x`` within a component.
Noising the two blocks at their own times, ``x_t = a_x x + s_x e``, ``l_t = a_l l + s_l e'``
(UniDiffuser's per-modality times, Bao et al. 2023), the posterior over components is

    r_k  propto  w_k N(x_t; a_x m_k, a_x^2 C_k + s_x^2 I) N(l_t; a_l e_{c_k}, (a_l^2 tau^2 + s_l^2) I)

and ``E[x | x_t, l_t] = sum_k r_k (m_k + a_x C_k S_k^{-1} (x_t - a_x m_k))``,
``E[l | x_t, l_t] = sum_k r_k (e_{c_k} + a_l tau^2 / (a_l^2 tau^2 + s_l^2) (l_t - a_l e_{c_k}))``.
A clean block (``t = 0``) conditions exactly: with ``x`` clean, ``r_k`` is the Bayes posterior
over components given ``x``; with a clean exact one-hot label (``tau = 0``), the components of
other classes get probability 0. The Bayes classifier ``p(y | x)`` and the class-conditional
laws ``p(x | y)`` are the oracles of ``diffinfer.jointlabel``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..process import Process, as_time
from .gaussian_mixture import GaussianMixture
from .label_information import _labels, label_conditional, sample_with_components

_F64 = torch.float64


def _per_row(t, batch: int) -> Tensor:
    t = as_time(t).to(_F64).reshape(-1).cpu()
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"times have {t.numel()} entries for a batch of {batch}")
    return t


class JointLabelMixture:
    """A labelled Gaussian mixture as a law of ``(x [D], one-hot label [C])``.

    Args:
        gm: the data mixture; component_labels: the class of each component ``[K]``
            (default: component ``k`` is class ``k``); num_classes: ``C`` (default
            ``max label + 1``); label_std: the label block's per-entry std within a
            component (0: an exact one-hot).
    """

    def __init__(self, gm: GaussianMixture, component_labels=None, num_classes: int | None = None,
                 label_std: float = 0.0):
        labels = _labels(gm, torch.arange(gm.n_components) if component_labels is None else component_labels)
        C = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if C <= int(labels.max()):
            raise ValueError(f"num_classes={C} but a component has label {int(labels.max())}")
        if not (math.isfinite(label_std) and label_std >= 0):
            raise ValueError(f"label_std must be finite and >= 0, got {label_std}")
        self.gm, self.labels, self.num_classes, self.label_std = gm, labels, C, float(label_std)
        self.onehots = torch.nn.functional.one_hot(labels, C).to(_F64)  # [K, C]

    @property
    def dim(self) -> int:
        return self.gm.dim

    # --- oracles ---------------------------------------------------------------------
    def bayes_posterior(self, x: Tensor) -> Tensor:
        """The Bayes classifier ``p(y | x)`` ``[B, C]`` (sum of the responsibilities of the
        components of each class)."""
        xf = self.gm._flat(x)
        logpdf, _ = self.gm._component_logpdf(xf, self.gm.means, self.gm.covs)  # [B, K]
        r = torch.softmax(logpdf + torch.log(self.gm.weights), dim=1)
        return r @ self.onehots  # [B, C]

    def class_conditional(self, y: int) -> GaussianMixture:
        """``p(x | y)``: the components of class ``y``, weights renormalised."""
        return label_conditional(self.gm, self.labels, y)

    def class_weights(self) -> Tensor:
        """``p(y)`` ``[C]``."""
        return self.gm.weights @ self.onehots

    def sample(self, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """``n`` exact pairs: data ``[n, D]`` and class indices ``[n]``."""
        x, k = sample_with_components(self.gm, n, seed)
        return x, self.labels[k]

    # --- the exact joint denoiser ----------------------------------------------------
    def posterior_mean(self, x_t: Tensor, l_t: Tensor, t_x, t_l, process: Process) -> tuple[Tensor, Tensor]:
        """``(E[x | x_t, l_t], E[l | x_t, l_t])`` (``[B, D]``, ``[B, C]``, float64) with each row
        noised at its own ``t_x[b]``, ``t_l[b]`` (scalars or ``[B]``)."""
        xf = self.gm._flat(x_t)  # [B, D]
        lf = torch.as_tensor(l_t).reshape(xf.shape[0], -1).to(_F64)  # [B, C]
        if lf.shape[1] != self.num_classes:
            raise ValueError(f"labels have {lf.shape[1]} entries, the model has {self.num_classes} classes")
        B, D = xf.shape
        tx, tl = _per_row(t_x, B), _per_row(t_l, B)
        ax, sx = process.alpha(tx).to(_F64), process.sigma(tx).to(_F64)  # [B]
        al, sl = process.alpha(tl).to(_F64), process.sigma(tl).to(_F64)  # [B]
        m, C, w = self.gm.means, self.gm.covs, self.gm.weights
        eye = torch.eye(D, dtype=_F64)
        # data block: S_bk = a_b^2 C_k + s_b^2 I  [B, K, D, D]
        S = ax[:, None, None, None] ** 2 * C.unsqueeze(0) + sx[:, None, None, None] ** 2 * eye
        try:
            chol = torch.linalg.cholesky(S)
        except RuntimeError:
            raise ValueError("a clean data block needs positive-definite component covariances") from None
        diff = (xf.unsqueeze(1) - ax[:, None, None] * m.unsqueeze(0)).unsqueeze(-1)  # [B, K, D, 1]
        z = torch.linalg.solve_triangular(chol, diff, upper=False).squeeze(-1)  # [B, K, D]
        logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # [B, K]
        log_x = -0.5 * (z * z).sum(-1) - 0.5 * logdet  # [B, K] (the 2 pi constant cancels)
        prec_diff = torch.cholesky_solve(diff, chol).squeeze(-1)  # [B, K, D]
        x0_k = m.unsqueeze(0) + ax[:, None, None] * torch.einsum("kde,bke->bkd", C, prec_diff)
        # label block: N(l_t; a_l e_k, v_b I), v_b = a_l^2 tau^2 + s_l^2
        v = al ** 2 * self.label_std ** 2 + sl ** 2  # [B]
        dl = lf.unsqueeze(1) - al[:, None, None] * self.onehots.unsqueeze(0)  # [B, K, C]
        sq = (dl * dl).sum(-1)  # [B, K]
        exact = v == 0  # a clean one-hot label: a point mass, matched or not
        vv = torch.where(exact, torch.ones_like(v), v)
        log_l = -0.5 * sq / vv[:, None] - 0.5 * self.num_classes * torch.log(vv)[:, None]
        log_l = torch.where(exact[:, None], torch.where(sq < 1e-12, 0.0, -math.inf), log_l)
        logit = log_x + log_l + torch.log(w)
        if bool(torch.isinf(logit).all(1).any()):
            raise ValueError("a clean label matches no component's one-hot label")
        r = torch.softmax(logit, dim=1)  # [B, K]
        gain = torch.where(exact, torch.zeros_like(v), al * self.label_std ** 2 / vv)  # [B]
        l0_k = self.onehots.unsqueeze(0) + gain[:, None, None] * dl  # [B, K, C]
        x0 = (r.unsqueeze(-1) * x0_k).sum(1)
        l0 = (r.unsqueeze(-1) * l0_k).sum(1)
        return x0, l0

    def joint_net(self, process: Process):
        """The exact joint model as a network ``net(x_t, l_t, t_x, t_l) -> (x0, l0)`` (an
        ``x0`` prediction of both blocks; cast to ``x_t``'s dtype), for ``jointlabel.JointDenoiser``."""
        def net(x_t: Tensor, l_t: Tensor, t_x: Tensor, t_l: Tensor) -> tuple[Tensor, Tensor]:
            x0, l0 = self.posterior_mean(x_t, l_t, t_x, t_l, process)
            return x0.reshape(x_t.shape).to(x_t.dtype), l0.to(l_t.dtype)
        return net

    def __repr__(self) -> str:
        return f"JointLabelMixture(K={self.gm.n_components}, D={self.dim}, classes={self.num_classes})"


def random_labelled_mixture(seed: int, dim: int = 3, n_components: int = 5, n_classes: int = 3) -> JointLabelMixture:
    """A seeded random labelled mixture: overlapping full-covariance components, every class
    present and some classes holding several components."""
    g = torch.Generator().manual_seed(seed)
    means = 1.2 * torch.randn(n_components, dim, dtype=_F64, generator=g)
    f = 0.5 * torch.randn(n_components, dim, dim, dtype=_F64, generator=g)
    covs = f @ f.transpose(-1, -2) + 0.2 * torch.eye(dim, dtype=_F64)
    weights = 0.2 + torch.rand(n_components, dtype=_F64, generator=g)
    labels = torch.cat([torch.arange(n_classes), torch.randint(0, n_classes, (n_components - n_classes,), generator=g)])
    return JointLabelMixture(GaussianMixture(means, covs, weights), labels)
