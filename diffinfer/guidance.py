"""Guidance wrappers: ``Denoiser -> Denoiser`` (docs/architecture.md, wrappers compose).

- ``ClassifierFreeGuidance``: Ho & Salimans, "Classifier-Free Diffusion Guidance" (2022),
  ``eps = eps_u + w (eps_c - eps_u)`` (``w = 1`` conditional, ``w = 0`` unconditional),
  optionally only inside a guidance interval of ``t`` (Kynkaanniemi et al. 2024,
  "Applying Guidance in a Limited Interval Improves Sample and Distribution Quality").
- ``GradientGuidance``: the one plumbing for every likelihood-gradient method: the score
  becomes ``grad log p_t(x) + scale * grad_x log L(x, t)``, i.e. ``eps' = eps - s g`` and
  ``x0' = x0 + (s^2 / a) g`` with ``g = scale * grad_x log L``. ``log L`` may look at the
  prediction (``x0_hat``), and its gradient then flows through the denoiser.
- ``ClassifierGuidance``: Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
  Synthesis" (2021): ``log L = log p_phi(c | x_t, t)`` from a noise-conditional classifier.
- ``RewardGuidance``: universal guidance, Bansal et al., "Universal Guidance for Diffusion
  Models" (2023): forward (``log L = reward(x0_hat(x_t))``, gradient through the denoiser)
  and backward guidance (gradient ascent on ``x0_hat`` itself).
- ``SteeredGuidance``: Nair et al., "Steered Diffusion: A Generalized Framework for
  Plug-and-Play Conditional Image Synthesis" (ICCV 2023): ``log L = -loss(F(x0_hat), target)``
  with ``F`` a pretrained inverse model (a classifier, an encoder, a degradation).
- ``NoiseRangeExperts``: Go et al., "Towards Practical Plug-and-Play Diffusion Models"
  (PPAP, CVPR 2023): several guidance models, each owning a range of noise levels; the
  log-likelihood at ``t`` is the one of the expert whose range holds ``t``.

Divergence check: every ``GradientGuidance`` (DPS, universal guidance, the two-prior
posterior, guided search) checks the sample it is evaluated at and the guided ``x0`` it
returns. A non-finite value, or a row with ``|x_t| > K (alpha(t) d + sigma(t)) sqrt(D)``
(``K = DIVERGENCE_K = 10``; ``d`` the data scale: the model's ``data_scale``, the per-entry
RMS of the data, 1 for data normalised to ``[-1, 1]`` or unit variance, exact for the toy
mixtures; ``D`` the entries per row) raises ``GuidanceDivergenceError`` naming the method,
the time (and, through ``loop.iterate``, the step) and the scale to lower. A process sample
``a x0 + s eps`` has norm at most about ``(a d + s) sqrt(D)``, so ``K = 10`` leaves a wide
margin for posteriors in the prior's tails while catching a guided run that has left the
data's scale (an unstable step size grows geometrically, so it crosses any such bound
within a few steps).

Log-likelihoods are callables ``f(x_t [B, ...], t, pred) -> [B]`` (``pred`` the wrapped
model's ``Prediction`` at ``x_t``, with its graph when ``through_denoiser``); if they hold
per-sample tensors they implement ``select(idx)`` so wrappers can be re-batched.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import DenoiserBase, GuidanceDivergenceError, Prediction
from .process import as_time


#: how many times the process's own scale a guided sample may reach before the run is
#: declared divergent (module docstring)
DIVERGENCE_K = 10.0


def _rows_t(t: Tensor, batch: int) -> Tensor:
    """``t`` as a float64 ``[B]`` tensor."""
    return t.expand(batch) if t.dim() == 0 else t.reshape(-1)


def _check_interval(interval) -> tuple[float, float] | None:
    if interval is None:
        return None
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"a guidance interval must satisfy 0 <= t_lo <= t_hi <= 1, got {interval}")
    return lo, hi


def in_interval(t, interval, batch: int) -> Tensor:
    """Rows ``[B]`` (bool) whose ``t`` lies in ``interval = (t_lo, t_hi)`` (all if ``None``)."""
    tb = _rows_t(as_time(t), batch)
    if interval is None:
        return torch.ones(batch, dtype=torch.bool)
    return (tb >= interval[0]) & (tb <= interval[1])


class ClassifierFreeGuidance(DenoiserBase):
    """Classifier-free guidance around a conditional ``Denoiser``.

    ``den`` carries the condition (e.g. ``den.bind(label=y)``); the unconditional branch
    replaces ``den.cond[cond_key]`` by ``null_label``. Both branches run as one batched
    network call of ``2B`` rows (one NFE), and are combined as
    ``x0 = x0_u + w (x0_c - x0_u)``, ``eps = eps_u + w (eps_c - eps_u)``: the same affine
    combination in every view, since ``x0`` is affine in ``eps`` at fixed ``(x, t)``.

    ``interval=(t_lo, t_hi)`` applies the scale only there (Kynkaanniemi et al. 2024);
    elsewhere the conditional model is used alone (``w = 1``, one ``B``-row call).
    """

    def __init__(self, den, scale: float, null_label, cond_key: str = "label", interval=None):
        if not hasattr(den, "bind") or not hasattr(den, "cond"):
            raise TypeError("ClassifierFreeGuidance needs a conditional Denoiser (with bind/cond)")
        if cond_key not in den.cond:
            raise ValueError(f"the denoiser has no {cond_key!r} condition to guide; bind it first, "
                             f"e.g. den.bind({cond_key}=labels)")
        scale = float(scale)
        if scale != scale:
            raise ValueError("guidance scale is NaN")
        self._wrap(den)
        self.scale, self.null_label, self.cond_key = scale, null_label, cond_key
        self.interval = _check_interval(interval)

    def _null_like(self, cond: Tensor, batch: int) -> Tensor:
        """The condition and the null condition, both ``[B, ...]``: a scalar or ``[1, ...]``
        condition (e.g. one text embedding for the batch) is broadcast to the batch."""
        cond = torch.as_tensor(cond)
        if cond.dim() == 0:
            cond = cond.expand(batch)
        elif cond.shape[0] == 1 and batch != 1:
            cond = cond.expand((batch,) + tuple(cond.shape[1:]))
        null = torch.as_tensor(self.null_label, dtype=cond.dtype, device=cond.device)
        if null.dim() == 0:
            return cond, null.expand_as(cond)
        if null.shape[0] == 1 and cond.shape[0] != 1:
            null = null.expand((cond.shape[0],) + tuple(null.shape[1:]))
        return cond, null

    def predict(self, x: Tensor, t) -> Prediction:
        """``(x0, eps)`` of the guided model at ``x`` ``[B, ...]``."""
        B = x.shape[0]
        t_value = as_time(t)
        active = in_interval(t_value, self.interval, B)  # [B]
        if self.scale == 1.0 or not bool(active.any()):
            return self.den.predict(x, t)
        cond, null = self._null_like(self.den.cond[self.cond_key], B)
        if cond.shape[0] != B:
            raise ValueError(f"condition {self.cond_key!r} has {cond.shape[0]} rows for a batch of {B}")
        # one time for all rows (a grid point stays one, for the model's host-coefficient path)
        t2 = t if t_value.dim() == 0 else torch.cat([t_value, t_value])  # [2B]
        both = self.den.bind(**{self.cond_key: torch.cat([cond, null])})
        x0, eps = both.predict(torch.cat([x, x]), t2)  # [2B, ...] each
        w = torch.where(active, torch.tensor(self.scale), torch.tensor(1.0)).to(device=x.device, dtype=x.dtype)
        w = w.reshape((B,) + (1,) * (x.dim() - 1))  # [B, 1, ...]
        return Prediction(x0[B:] + w * (x0[:B] - x0[B:]), eps[B:] + w * (eps[:B] - eps[B:]))

    def select(self, idx: Tensor) -> "ClassifierFreeGuidance":
        return ClassifierFreeGuidance(self.den.select(idx), self.scale, self.null_label, self.cond_key,
                                      self.interval)

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance({self.den!r}, scale={self.scale}, null_label={self.null_label!r})"


class GradientGuidance(DenoiserBase):
    """Add ``scale * grad_x log L(x_t, t)`` to the wrapped model's score.

    With ``x_t = a x0 + s eps`` the score is ``-eps / s``, so a score term ``g`` gives
    ``eps' = eps - s g`` and ``x0' = (x - s eps') / a = x0 + (s^2 / a) g`` (Tweedie's formula
    for the guided density). Rows where ``a = 0`` (pure noise) are left unguided.

    Args:
        den: the model (any ``DenoiserBase``).
        log_likelihood: ``f(x_t, t, pred) -> [B]``; its gradient in ``x_t`` is the guidance.
        scale: a float, or ``scale(t) -> float | [B]`` (e.g. a DPS step-size rule).
        interval: ``(t_lo, t_hi)``: guide only there.
        through_denoiser: build the prediction with autograd so ``log L`` may use
            ``pred.x0`` (DPS, universal guidance); ``False`` for ``log L`` of ``x_t`` alone
            (classifier guidance), which saves the backward pass through the network.
    One network call per evaluation (NFE as the wrapped model). ``needs_grad`` is true:
    ``sample`` keeps autograd on for it.
    """

    _needs_grad = True

    def __init__(self, den: DenoiserBase, log_likelihood: Callable, scale=1.0, interval=None,
                 through_denoiser: bool = True, method: str | None = None, data_scale: float | None = None,
                 divergence_k: float = DIVERGENCE_K):
        self._wrap(den)
        if not callable(scale):
            scale = float(scale)
            if scale != scale:
                raise ValueError("guidance scale is NaN")
        self.log_likelihood, self.scale = log_likelihood, scale
        self.interval = _check_interval(interval)
        self.through_denoiser = bool(through_denoiser)
        self.method = method or type(self).__name__
        self._data_scale = None if data_scale is None else float(data_scale)
        if not self.data_scale > 0 or not divergence_k > 0:
            raise ValueError(f"need data_scale > 0 and divergence_k > 0, got {self.data_scale}, {divergence_k}")
        self.divergence_k = float(divergence_k)

    def _scale_text(self) -> str:
        return "a smaller scale function" if callable(self.scale) else f"a scale below {self.scale:.4g}"

    def check_divergence(self, x: Tensor, t, what: str = "x_t") -> None:
        """Raise ``GuidanceDivergenceError`` if a row of the sample ``x`` at ``t`` is
        non-finite or beyond ``K (alpha d + sigma) sqrt(D)`` (module docstring). Run on every
        input of ``predict`` and, by ``loop.iterate``, on every step's result."""
        t = as_time(t)
        B = x.shape[0]
        norms = x.detach().reshape(B, -1).double().norm(dim=1)  # [B]
        tb = _rows_t(t, B).to(norms.device)
        a, s = self.process.alpha(tb).to(norms), self.process.sigma(tb).to(norms)
        bound = self.divergence_k * (a * self.data_scale + s) * (x[0].numel() ** 0.5)
        bad = ~torch.isfinite(norms) | (norms > bound)
        if bool(bad.any()):
            r = int(bad.nonzero()[0])
            value = f"{what} is NaN/Inf" if not bool(torch.isfinite(norms[r])) else \
                f"|{what}| = {float(norms[r]):.3g} is beyond K (alpha d + sigma) sqrt(D) = {float(bound[r]):.3g}"
            raise GuidanceDivergenceError(
                f"{self.method} diverged at t={float(tb[r]):.4g} (row {r}): {value} "
                f"(K={self.divergence_k:g}, data scale d={self.data_scale:.3g}); the guidance step is too "
                f"large for this grid: use {self._scale_text()} (or more steps)")

    def _weights(self, t: Tensor, x: Tensor) -> Tensor:
        """Per-row guidance weight ``[B, 1, ...]``: ``scale(t)`` inside the interval, else 0."""
        B = x.shape[0]
        w = self.scale(t) if callable(self.scale) else self.scale
        w = torch.as_tensor(w, dtype=torch.float64).expand(B) if torch.as_tensor(w).dim() == 0 \
            else torch.as_tensor(w, dtype=torch.float64).reshape(B)
        w = w * in_interval(t, self.interval, B).to(torch.float64)
        return w.to(device=x.device, dtype=x.dtype).reshape((B,) + (1,) * (x.dim() - 1))

    def guidance_gradient(self, x: Tensor, t) -> tuple[Tensor, Prediction]:
        """``grad_x log L(x, t)`` ``[B, ...]`` and the (detached) wrapped prediction; ``t`` is
        passed on to the wrapped model as given (a grid point stays one)."""
        t_value = as_time(t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            if self.through_denoiser:
                pred = self.den.predict(xg, t)
            else:
                with torch.no_grad():
                    pred = self.den.predict(x, t)
            ll = self.log_likelihood(xg, t_value, pred)  # [B]
            if ll.shape != (x.shape[0],):
                raise ValueError(f"a log-likelihood must return [B]={x.shape[0]} values, got {tuple(ll.shape)}")
            if not bool(torch.isfinite(ll).all()):
                raise GuidanceDivergenceError(
                    f"{self.method}: the guidance log-likelihood is NaN or Inf at t={float(t_value.max()):.4g}; "
                    f"use {self._scale_text()} (or more steps)")
            (grad,) = torch.autograd.grad(ll.sum(), xg, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(x)
        return grad.detach(), Prediction(pred.x0.detach(), pred.eps.detach())

    def predict(self, x: Tensor, t) -> Prediction:
        """The guided ``(x0, eps)`` at ``x`` ``[B, ...]``."""
        t_value = as_time(t)
        self.check_divergence(x, t_value)
        w = self._weights(t_value, x)  # [B, 1, ...]
        if not bool((w != 0).any()):
            return self.den.predict(x, t)
        grad, (x0, eps) = self.guidance_gradient(x, t)
        c = self.process.at(t_value).broadcast(x)
        a, s = c.alpha, c.sigma
        a_safe = torch.where(a == 0, torch.ones_like(a), a)
        g = torch.where(a == 0, torch.zeros_like(grad), w * self.step_factor(grad, x, t_value) * grad)  # score correction
        x0g = x0 + (s * s / a_safe) * g
        if not bool(torch.isfinite(g).all()):
            raise GuidanceDivergenceError(
                f"{self.method} diverged at t={float(t_value.max()):.4g}: the guidance gradient is NaN/Inf; "
                f"use {self._scale_text()} (or more steps)")
        return Prediction(x0g, eps - s * g)

    def step_factor(self, grad: Tensor, x: Tensor, t) -> Tensor | float:
        """A per-row step normalisation of the gradient (``[B, 1, ...]`` or 1): none here;
        ``RewardGuidance(normalized=True)`` scales it to unit RMS per entry."""
        return 1.0

    def select(self, idx: Tensor) -> "GradientGuidance":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.den = self.den.select(idx)
        if hasattr(self.log_likelihood, "select"):
            new.log_likelihood = self.log_likelihood.select(idx)
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.den!r}, scale={self.scale})"


class ClassifierLogProb:
    """``log p_phi(labels | x_t, t)`` ``[B]`` from ``classifier(x_t, t_in) -> logits [B, C]``.

    ``time_input`` maps our float64 ``t`` ``[B]`` to what the classifier takes (default ``t``
    in ``x``'s dtype)."""

    def __init__(self, classifier: Callable, labels, time_input: Callable | None = None):
        self.classifier, self.labels, self.time_input = classifier, torch.as_tensor(labels).long(), time_input

    def __call__(self, x: Tensor, t, pred=None) -> Tensor:
        B = x.shape[0]
        tb = _rows_t(as_time(t), B)
        t_in = self.time_input(tb) if self.time_input is not None else tb.to(device=x.device, dtype=x.dtype)
        logits = self.classifier(x, t_in)  # [B, C]
        if logits.dim() != 2 or logits.shape[0] != B:
            raise ValueError(f"a classifier must return logits [B={B}, C], got {tuple(logits.shape)}")
        labels = self.labels.expand(B) if self.labels.dim() == 0 else self.labels
        if labels.shape != (B,):
            raise ValueError(f"labels must be a scalar or [B]={B}, got {tuple(labels.shape)}")
        if bool((labels < 0).any()) or bool((labels >= logits.shape[1]).any()):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got {labels.tolist()}")
        return torch.log_softmax(logits, dim=-1).gather(1, labels.to(logits.device)[:, None]).squeeze(1)

    def select(self, idx: Tensor) -> "ClassifierLogProb":
        labels = self.labels[idx] if self.labels.dim() > 0 else self.labels
        return ClassifierLogProb(self.classifier, labels, self.time_input)


class ClassifierGuidance(GradientGuidance):
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 1 in score form):
    ``grad log p_t(x) + scale * grad_x log p_phi(c | x_t, t)``.

    ``classifier(x_t, t_in) -> logits [B, C]`` is noise-conditional (trained on ``x_t``);
    ``scale = 1`` samples the exact class-conditional if the classifier is exact."""

    def __init__(self, den: DenoiserBase, classifier: Callable, labels, scale=1.0, interval=None,
                 time_input: Callable | None = None):
        super().__init__(den, ClassifierLogProb(classifier, labels, time_input), scale, interval,
                         through_denoiser=False)


class RewardOnPrediction:
    """``reward(x0_hat) -> [B]`` read on the wrapped model's prediction (universal guidance)."""

    def __init__(self, reward: Callable[[Tensor], Tensor]):
        self.reward = reward

    def __call__(self, x: Tensor, t, pred: Prediction) -> Tensor:
        return self.reward(pred.x0)

    def select(self, idx: Tensor) -> "RewardOnPrediction":
        return RewardOnPrediction(self.reward.select(idx)) if hasattr(self.reward, "select") else self


class RewardGuidance(GradientGuidance):
    """Universal guidance (Bansal et al., "Universal Guidance for Diffusion Models", 2023).

    Forward guidance (eq. 6): the score gains ``scale * grad_{x_t} reward(x0_hat(x_t))``;
    the gradient runs through the denoiser, so any differentiable ``reward`` on clean data
    steers any model. Backward guidance (eqs. 7-9, ``backward_steps > 0``): ``Delta`` is
    found by ``backward_steps`` gradient-ascent steps of size ``backward_lr`` on
    ``reward(x0_hat + Delta)``, then ``x0 <- x0 + Delta`` and ``eps <- eps - (a/s) Delta``
    (the same ``x_t``). Self-recurrence (Algorithm 1's ``k``) is a driver:
    ``inverse.sample_with_resampling(guided, ..., resample=k, jump=1)``.

    ``normalized=True`` (default) takes the step in the reward gradient's direction with a size fixed
    by the process: each row's gradient is rescaled so that the guided ``x0_hat`` moves by
    ``scale * data_scale`` RMS per entry (norm ``scale * data_scale * sqrt(D)``; the score
    correction has norm ``scale * data_scale * sqrt(D) * alpha / sigma^2``). ``scale`` is
    then a fraction of the data's scale whatever the reward's units, and a reward with
    large gradients cannot blow the sample up (the paper's constant ``s(t)`` is picked per
    reward); the default ``scale = 1`` is stable on every oracle-suite seed (seeds 0-19,
    reward ``-|y - A x|^2 / (2 noise_std^2)``) with DPM-Solver++(2M) at 10 steps, where the
    raw gradient (``normalized=False``, eq. 6 as written) diverges on most of them.
    Divergence is checked as for every ``GradientGuidance``.
    """

    def __init__(self, den: DenoiserBase, reward: Callable[[Tensor], Tensor], scale=1.0, interval=None,
                 backward_steps: int = 0, backward_lr: float = 0.1, normalized: bool = True, **check_options):
        super().__init__(den, RewardOnPrediction(reward), scale, interval, through_denoiser=True, **check_options)
        if backward_steps < 0:
            raise ValueError(f"backward_steps must be >= 0, got {backward_steps}")
        self.backward_steps, self.backward_lr = int(backward_steps), float(backward_lr)
        self.normalized = bool(normalized)

    def step_factor(self, grad: Tensor, x: Tensor, t) -> Tensor | float:
        """With ``normalized``: ``data_scale sqrt(D) (alpha / sigma^2) / |grad|`` per row
        ``[B, 1, ...]`` (0 where ``sigma = 0`` or the gradient vanishes)."""
        if not self.normalized:
            return 1.0
        B = x.shape[0]
        norm = grad.detach().reshape(B, -1).double().norm(dim=1)  # [B]
        tb = _rows_t(as_time(t), B).to(norm.device)
        a, s = self.process.alpha(tb).to(norm), self.process.sigma(tb).to(norm)
        target = self.data_scale * math.sqrt(grad[0].numel()) * a / (s * s).clamp_min(1e-300)
        f = torch.where((norm > 0) & (s > 0), target / norm.clamp_min(1e-300), torch.zeros_like(norm))
        f = f.to(device=x.device, dtype=x.dtype)
        return f.reshape((B,) + (1,) * (x.dim() - 1))

    def backward_delta(self, x0: Tensor) -> Tensor:
        """``Delta`` ``[B, ...]`` after ``backward_steps`` ascent steps on ``reward(x0 + Delta)``."""
        delta = torch.zeros_like(x0)
        for _ in range(self.backward_steps):
            with torch.enable_grad():
                d = delta.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.log_likelihood.reward(x0 + d).sum(), d)
            delta = delta + self.backward_lr * g
        return delta.detach()

    def predict(self, x: Tensor, t) -> Prediction:
        pred = super().predict(x, t)
        if self.backward_steps == 0:
            return pred
        t = as_time(t)
        inside = in_interval(t, self.interval, x.shape[0])  # [B]: the interval applies too
        if not bool(inside.any()):
            return pred
        active = inside.to(x.dtype).reshape((x.shape[0],) + (1,) * (x.dim() - 1))
        c = self.process.at(t).broadcast(x)
        a, s = c.alpha, c.sigma
        delta = self.backward_delta(pred.x0) * active
        s_safe = torch.where(s == 0, torch.ones_like(s), s)
        return Prediction(pred.x0 + delta, pred.eps - torch.where(s == 0, torch.zeros_like(s), a / s_safe) * delta)


LOSSES = ("mse", "l1", "cross-entropy")


class InverseModelLoss:
    """``-loss(model(x0), target)`` ``[B]``: ``mse`` / ``l1`` summed over features, or
    ``cross-entropy`` of logits against integer targets (Steered Diffusion's losses)."""

    def __init__(self, model: Callable[[Tensor], Tensor], target: Tensor, loss: str = "mse"):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
        self.model, self.target, self.loss = model, torch.as_tensor(target), loss

    def __call__(self, x0: Tensor) -> Tensor:
        out = self.model(x0)  # [B, ...]
        if self.loss == "cross-entropy":
            return -torch.nn.functional.cross_entropy(out, self.target.long().to(out.device), reduction="none")
        diff = (out - self.target.to(out)).reshape(out.shape[0], -1)
        return -(diff * diff).sum(1) if self.loss == "mse" else -diff.abs().sum(1)

    def select(self, idx: Tensor) -> "InverseModelLoss":
        target = self.target[idx] if self.target.dim() > 0 and self.target.shape[0] > 1 else self.target
        return InverseModelLoss(self.model, target, self.loss)


class SteeredGuidance(RewardGuidance):
    """Steered Diffusion (Nair et al. 2023): guide by the loss of a pretrained inverse model
    ``F`` on the clean estimate, ``scale * grad_{x_t} [-loss(F(x0_hat), target)]``."""

    def __init__(self, den: DenoiserBase, inverse_model: Callable[[Tensor], Tensor], target, scale=1.0,
                 loss: str = "mse", interval=None):
        super().__init__(den, InverseModelLoss(inverse_model, target, loss), scale, interval, normalized=False)


class NoiseRangeExperts:
    """PPAP (Go et al. 2023): experts ``[(t_lo, t_hi, log_likelihood), ...]`` that each own
    a range ``[t_lo, t_hi)`` of ``t`` (the last range also holds its upper end); at ``t``
    the log-likelihood is the owning expert's. Ranges must not overlap; a ``t`` owned by
    no expert raises. Use inside ``GradientGuidance`` (or wrap classifiers with
    ``ClassifierLogProb`` first)."""

    def __init__(self, experts: Sequence[tuple[float, float, Callable]]):
        experts = sorted(((float(lo), float(hi), f) for lo, hi, f in experts), key=lambda e: e[0])
        if not experts:
            raise ValueError("give at least one expert (t_lo, t_hi, log_likelihood)")
        for (lo, hi, _), nxt in zip(experts, experts[1:] + [None]):
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(f"an expert's range must satisfy 0 <= t_lo < t_hi <= 1, got ({lo}, {hi})")
            if nxt is not None and nxt[0] < hi:
                raise ValueError(f"expert ranges overlap: [{lo}, {hi}) and [{nxt[0]}, {nxt[1]})")
        self.experts = experts

    def owner(self, t: Tensor) -> Tensor:
        """Index of the owning expert for each entry of ``t`` (float64, any shape)."""
        idx = torch.full(t.shape, -1, dtype=torch.long)
        last = len(self.experts) - 1
        for k, (lo, hi, _) in enumerate(self.experts):
            inside = (t >= lo) & ((t < hi) | ((t == hi) & (k == last)))
            idx = torch.where(inside, torch.full_like(idx, k), idx)
        if bool((idx < 0).any()):
            bad = float(t.reshape(-1)[(idx.reshape(-1) < 0).nonzero()[0]])
            ranges = ", ".join(f"[{lo}, {hi})" for lo, hi, _ in self.experts)
            raise ValueError(f"no expert owns t={bad:.4g}; ranges: {ranges}")
        return idx

    def __call__(self, x: Tensor, t, pred: Prediction | None = None) -> Tensor:
        B = x.shape[0]
        tb = _rows_t(as_time(t), B).cpu()
        owner = self.owner(tb)  # [B]
        out = torch.zeros(B, dtype=x.dtype, device=x.device)
        for k in torch.unique(owner).tolist():
            rows = (owner == k).nonzero().squeeze(1)
            sub_pred = None if pred is None else Prediction(pred.x0[rows], pred.eps[rows])
            vals = self.experts[k][2](x[rows], tb[rows], sub_pred)
            out = out.index_put((rows.to(x.device),), vals.to(out.dtype))
        return out

    def select(self, idx: Tensor) -> "NoiseRangeExperts":
        return NoiseRangeExperts([(lo, hi, f.select(idx) if hasattr(f, "select") else f)
                                  for lo, hi, f in self.experts])
