"""Classification with a diffusion model, and certified robustness with a diffusion denoiser.

- ``DiffusionClassifier``: Li et al. 2023, "Your Diffusion Model is Secretly a Zero-Shot
  Classifier" (and Clark & Jaini 2023). A class-conditional model scores class ``c`` by its
  denoising error ``E_{t, eps} w(t) |eps - eps_hat(x_t, t, c)|^2``; the *same* ``(t, eps)``
  pairs are used for every class (so their noise cancels in the comparison) and classes are
  pruned adaptively: after each round of pairs only the ``keep`` lowest-error classes go on.
  With ``t`` drawn uniformly in log-SNR and weight ``(logsnr_max - logsnr_min) / 2``, the
  error is the continuous-time variational bound on ``-log p(x | c)`` up to a class-free
  constant (Kingma et al. 2021, "Variational Diffusion Models", eq. 17), so adding
  ``log p(c)`` gives a Monte Carlo Bayes classifier.
- ``certify`` / ``DenoisedSmoothing``: Carlini et al. 2023, "(Certified!!) Adversarial
  Robustness for Free!" (after Salman et al. 2020): the base classifier is
  ``clean_classifier(x0_hat(alpha_t (x + delta), t))`` with ``sigma_t / alpha_t = sigma``,
  one denoising call per noisy copy; randomised smoothing (Cohen et al. 2019, "Certified
  Adversarial Robustness via Randomized Smoothing", CERTIFY) returns the top class and the
  certified L2 radius ``sigma * Phi^{-1}(p_A lower bound)``, or abstains.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import DenoiserBase, summed_counter
from .process import Process, as_time

ABSTAIN = -1


@dataclass
class ClassifierResult:
    """``labels`` ``[B]``; ``scores`` ``[B, C]`` (estimated ``log p(x|c) + log p(c)`` up to a
    constant, ``-inf`` for pruned classes); ``pairs`` ``[B, C]`` evaluated per class; ``nfe``."""

    labels: Tensor
    scores: Tensor
    pairs: Tensor
    nfe: int


class DiffusionClassifier:
    """Zero-shot classifier from class-conditional denoisers.

    Args:
        denoisers: one ``DenoiserBase`` per class, or a callable ``c -> DenoiserBase``
            (e.g. ``lambda c: den.bind(label=torch.full((B,), c))``) with ``n_classes``.
        log_prior: class log-probabilities ``[C]`` (default uniform).
        t_range: the ``t`` interval the pairs are drawn from (default the process bounds).
    """

    def __init__(self, denoisers: Sequence[DenoiserBase] | Callable[[int], DenoiserBase],
                 n_classes: int | None = None, log_prior=None, t_range: tuple[float, float] | None = None):
        if callable(denoisers) and not isinstance(denoisers, (list, tuple)):
            if n_classes is None:
                raise ValueError("give n_classes with a callable c -> denoiser")
            self._get = denoisers
            self.n_classes = int(n_classes)
        else:
            dens = list(denoisers)
            if len(dens) < 2:
                raise ValueError("a classifier needs at least two classes")
            self._get = lambda c: dens[c]
            self.n_classes = len(dens)
        self.process: Process = self._get(0).process
        lp = torch.zeros(self.n_classes, dtype=torch.float64) if log_prior is None else torch.as_tensor(log_prior, dtype=torch.float64)
        if lp.shape != (self.n_classes,):
            raise ValueError(f"log_prior must have {self.n_classes} entries, got shape {tuple(lp.shape)}")
        self.log_prior = lp
        self.lam_max, self.lam_min = logsnr_range(self.process, t_range)

    def pairs(self, n: int, x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """``n`` shared ``(t, eps)`` pairs (see ``logsnr_pairs``)."""
        return logsnr_pairs(self.process, (self.lam_max, self.lam_min), n, x, seed)

    def _errors(self, den: DenoiserBase, x: Tensor, rows: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Weighted squared noise-prediction errors ``[len(rows), n_pairs]`` of one class's
        denoiser ``den``."""
        if rows.numel() != x.shape[0]:
            den = den.select(rows)
        return weighted_eps_errors(den, x[rows], t, eps[:, rows], (self.lam_max, self.lam_min))

    def classify(self, x: Tensor, n_pairs: int = 64, prune: Sequence[tuple[int, int]] | None = None,
                 seed: int = 0) -> ClassifierResult:
        """Labels of ``x`` ``[B, ...]``.

        ``prune``: rounds ``[(pairs, keep), ...]``: evaluate ``pairs`` more pairs for the
        surviving classes, then keep the ``keep`` best (Li et al., section 3.2). Default:
        one round of ``n_pairs`` pairs for all classes.
        """
        rounds = list(prune) if prune is not None else [(int(n_pairs), self.n_classes)]
        total = sum(p for p, _ in rounds)
        t, eps = self.pairs(total, x, seed)
        B, C = x.shape[0], self.n_classes
        sums = torch.zeros(B, C, dtype=torch.float64)
        counts = torch.zeros(B, C, dtype=torch.float64)
        alive = torch.ones(B, C, dtype=torch.bool)
        dens = [self._get(c) for c in range(C)]
        counter = summed_counter(dens)  # the denoisers may or may not share a counter
        nfe0 = counter.n
        start = 0
        for n_round, keep in rounds:
            sl = slice(start, start + n_round)
            for c in range(C):
                rows = alive[:, c].nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                err = self._errors(dens[c], x, rows, t[sl], eps[sl])  # [rows, n_round]
                sums[rows, c] += err.sum(1)
                counts[rows, c] += n_round
            start += n_round
            score = torch.where(alive, -sums / counts.clamp(min=1) + self.log_prior, torch.full_like(sums, -math.inf))
            if keep < C:
                cut = torch.topk(score, min(int(keep), C), dim=1).indices
                alive = torch.zeros_like(alive).scatter_(1, cut, True) & alive
        score = torch.where(alive, -sums / counts.clamp(min=1) + self.log_prior, torch.full_like(sums, -math.inf))
        return ClassifierResult(labels=score.argmax(1), scores=score, pairs=counts.long(), nfe=counter.n - nfe0)


# --- denoising errors uniform in log-SNR (shared with pid.py) ------------------------------
def logsnr_range(process: Process, t_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(lam_max, lam_min)``: the log-SNR at the low and high end of ``t_range`` (default the
    process bounds clipped to ``[1e-4, 1 - 1e-4]``)."""
    lo, hi = t_range if t_range is not None else (max(process.t_min, 1e-4), min(process.t_max, 1.0 - 1e-4))
    lam_max = float(process.logsnr(as_time(lo)))  # high SNR at small t
    lam_min = float(process.logsnr(as_time(hi)))
    if not (math.isfinite(lam_max) and math.isfinite(lam_min)):
        raise ValueError(f"the t range {lo, hi} has an infinite log-SNR; pass t_range inside (0, 1)")
    return lam_max, lam_min


def logsnr_pairs(process: Process, lam: tuple[float, float], n: int, x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` ``(t, eps)`` pairs: ``t`` stratified uniform in log-SNR over ``lam = (lam_max,
    lam_min)`` ``[n]`` and ``eps`` ``[n, B, ...]`` (each row of ``x`` its own noise)."""
    lam_max, lam_min = lam
    g = torch.Generator().manual_seed(int(seed))
    u = (torch.arange(n, dtype=torch.float64) + torch.rand(n, dtype=torch.float64, generator=g)) / n
    u = u[torch.randperm(n, generator=g)]  # so any prefix of the pairs is spread over t
    t = process.t_from_logsnr(lam_max + u * (lam_min - lam_max))
    eps = torch.randn((n,) + tuple(x.shape), generator=g, dtype=torch.float64).to(x.dtype)
    return t, eps


def weighted_eps_errors(den: DenoiserBase, x: Tensor, t: Tensor, eps: Tensor, lam: tuple[float, float]) -> Tensor:
    """``(lam_max - lam_min) / 2 * |eps - eps_hat(x_t, t)|^2`` ``[B, n]`` for ``x`` ``[B, ...]``,
    ``t`` ``[n]``, ``eps`` ``[n, B, ...]``: with ``t`` uniform in log-SNR, its mean over pairs
    estimates ``1/2 int mmse_eps(x, lam) dlam`` (Kingma et al. 2021, eq. 17; Kong et al. 2023)."""
    process = den.process
    out = []
    for j in range(t.numel()):
        xt = process.add_noise(x, eps[j], t[j])
        err = (den.eps(xt, t[j]) - eps[j]).reshape(x.shape[0], -1).double()
        if not bool(torch.isfinite(err).all()):
            raise ValueError(f"the denoiser returned non-finite values at t={float(t[j]):.4g}")
        out.append((err * err).sum(1))
    return 0.5 * (lam[0] - lam[1]) * torch.stack(out, 1)


# --- denoised smoothing ----------------------------------------------------------------
@dataclass
class Certificate:
    """``labels`` ``[B]`` (``ABSTAIN = -1`` where not certified), ``radius`` ``[B]``
    (certified L2 radius; 0 where abstaining), ``p_lower`` ``[B]``."""

    labels: Tensor
    radius: Tensor
    p_lower: Tensor


class DenoisedSmoothing:
    """``f(x0_hat(alpha_t (x + sigma z), t))`` with ``sigma_t / alpha_t = sigma``: a base
    classifier that is robust to Gaussian noise of level ``sigma`` (Carlini et al. 2023).

    ``clean_classifier`` maps clean inputs ``[B, ...]`` to logits ``[B, C]``.
    """

    def __init__(self, den: DenoiserBase, clean_classifier: Callable[[Tensor], Tensor], sigma: float):
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.den, self.clean, self.sigma = den, clean_classifier, float(sigma)
        p = den.process
        self.t = p.t_from_logsnr(torch.tensor(-2.0 * math.log(self.sigma), dtype=torch.float64))
        if not bool(torch.isfinite(self.t)) or not 0.0 < float(self.t) <= 1.0:
            raise ValueError(f"noise level sigma={sigma} lies outside the process's range")
        self.alpha = float(p.alpha(self.t))

    def base_predict(self, x_noisy: Tensor) -> Tensor:
        """Labels ``[B]`` of inputs that already carry ``N(0, sigma^2)`` noise."""
        with torch.no_grad():
            x0 = self.den.x0(self.alpha * x_noisy, self.t)
            return self.clean(x0).argmax(-1)

    def _counts(self, x: Tensor, n: int, n_classes: int, g: torch.Generator, batch: int) -> Tensor:
        counts = torch.zeros(n_classes, dtype=torch.long)
        for start in range(0, n, batch):
            m = min(batch, n - start)
            noisy = x.unsqueeze(0) + self.sigma * torch.randn((m,) + tuple(x.shape), generator=g, dtype=torch.float64).to(x.dtype)
            counts += torch.bincount(self.base_predict(noisy), minlength=n_classes)[:n_classes]
        return counts

    def certify(self, x: Tensor, n0: int = 100, n: int = 1000, alpha: float = 0.001, n_classes: int = 10,
                batch: int = 500, seed: int = 0) -> Certificate:
        """Cohen et al. 2019, CERTIFY, for each row of ``x`` ``[B, ...]``: guess the top class
        from ``n0`` noisy copies, lower-bound its probability from ``n`` fresh copies
        (Clopper-Pearson at level ``1 - alpha``), certify radius ``sigma Phi^{-1}(p_lower)``
        if ``p_lower > 1/2``, else abstain."""
        g = torch.Generator().manual_seed(int(seed))
        labels, radius, p_low = [], [], []
        for row in x:
            guess = int(self._counts(row, n0, n_classes, g, batch).argmax())
            n_a = int(self._counts(row, n, n_classes, g, batch)[guess])
            p = clopper_pearson_lower(n_a, n, alpha)
            p_low.append(p)
            if p > 0.5:
                labels.append(guess)
                radius.append(self.sigma * normal_ppf(p))
            else:
                labels.append(ABSTAIN)
                radius.append(0.0)
        return Certificate(torch.tensor(labels), torch.tensor(radius, dtype=torch.float64),
                           torch.tensor(p_low, dtype=torch.float64))


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound on a binomial proportion ``k / n``."""
    from scipy.stats import beta
    return 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))


def normal_ppf(p: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(p))
