"""Inverse problems with a pretrained diffusion prior: measurement operators and methods.

Operators (``y = A x + noise_std * n``, each with an exact adjoint):
``Inpaint`` (mask), ``Downsample`` (average pooling, super-resolution), ``GaussianBlur``,
``SubsampledFourier`` (MRI: a k-space mask on the orthonormal 2-D FFT), ``Linear`` (any
matrix, or a function with its adjoint), ``SumOfSources`` (``y = x + h`` on a stacked pair).

Methods, all on the ``Denoiser`` view and the solver protocol (no solver knows them):

- ``DPS``: Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems"
  (ICLR 2023), a ``GradientGuidance``: by default the paper's normalised step
  ``zeta / |y - A x0_hat|`` (Algorithm 1; ``likelihood="norm"``); ``likelihood="gaussian"``
  is ``log p(y | x_t) ~ log N(y; A x0_hat(x_t), noise_std^2 I)``. Guided runs that leave the
  data's scale raise ``guidance.GuidanceDivergenceError``.
- ``red_diff``: Mardani et al., "A Variational Perspective on Solving Inverse Problems with
  Diffusion Models" (RED-Diff, ICLR 2024): Adam on the mean ``mu`` of ``q = N(mu, 0)`` for
  ``|y - A mu|^2 / (2 noise_std^2) + lam * (s/a) * sg[eps_hat(x_t) - eps]^T mu``, ``t`` descending.
- ``projection_sample``: replacement / projection (Song et al. 2021, "Score-Based Generative
  Modeling through SDEs", appendix on imputation): after each solver step the measured part
  is replaced by a noised measurement, ``x <- x + A^+ (a y + s A z - A x)``; with
  ``resample > 1`` the RePaint schedule (Lugmayr et al., CVPR 2022) jumps back ``jump``
  steps by forward noising and redoes them.
- ``StackedPriors`` + ``two_prior_posterior``: joint posterior sampling with two diffusion
  priors for ``y = x + h`` (Stevens et al., "Removing Structured Noise with Diffusion Models"
  2023 / "Dehazing Ultrasound using Diffusion Models", TMI 2024): both sources are denoised
  jointly, guided by ``log p(y | x_t, h_t)``.
- ``ObservationGuidance`` / ``tsdiff_forecast`` / ``tsdiff_refine``: TSDiff, Kollovieh et al.,
  "Predict, Refine, Synthesize: Self-Guiding Diffusion Models for Probabilistic Time Series
  Forecasting" (NeurIPS 2023): an unconditional model guided by an MSE (Gaussian) or
  quantile (asymmetric Laplace) loss of ``x0_hat`` on the observed steps; and the
  refinement of a base forecast by descending (or Langevin-sampling) the energy
  ``diffusion loss(x) + lam * R(x_obs, y)``.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import solvers as solver_registry
from . import grids
from .denoiser import DenoiserBase, Prediction, summed_counter
from .guidance import GradientGuidance
from .rng import SampleRNG
from .loop import SampleResult, initial_noise, iterate, sample
from .rng import make_rng


# --- measurement operators -----------------------------------------------------------
class LinearOperator:
    """``A``: ``x [B, *x_shape] -> y [B, *y_shape]`` with its adjoint and a noise level.

    Subclasses implement ``forward`` and ``adjoint``; ``pinv`` defaults to the minimum-norm
    solution by conjugate gradients on ``A A^T z = y``, ``x = A^T z``."""

    noise_std: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def pinv(self, y: Tensor, damping: float = 0.0, iters: int = 50, tol: float = 1e-10) -> Tensor:
        """``A^T (A A^T + damping I)^{-1} y`` by conjugate gradients: the minimum-norm least
        squares ``A^+ y`` at ``damping = 0``, its Tikhonov-regularised form otherwise."""
        z = torch.zeros_like(y)
        r = y.clone()
        p = r.clone()
        dims = tuple(range(1, y.dim()))
        rr = (r * r).sum(dims, keepdim=True)
        for _ in range(iters):
            Ap = self.forward(self.adjoint(p)) + damping * p
            alpha = rr / (p * Ap).sum(dims, keepdim=True).clamp_min(1e-300)
            z = z + alpha * p
            r = r - alpha * Ap
            rr_new = (r * r).sum(dims, keepdim=True)
            if float(rr_new.max()) < tol * tol:
                break
            p = r + (rr_new / rr.clamp_min(1e-300)) * p
            rr = rr_new
        return self.adjoint(z)

    def measure(self, x: Tensor, seed: int | SampleRNG | None = 0) -> Tensor:
        """``A x + noise_std * n`` with per-sample noise streams."""
        y = self.forward(x)
        if self.noise_std == 0:
            return y
        rng = make_rng(seed, y.shape[0], y.device)
        return y + self.noise_std * rng.randn_like(y)

    def residual_norm2(self, x0: Tensor, y: Tensor) -> Tensor:
        """``|y - A x0|^2`` per row ``[B]``."""
        r = y - self.forward(x0)
        return (r * r).reshape(r.shape[0], -1).sum(1)

    def matrix(self, x_shape: Sequence[int], dtype=torch.float64) -> Tensor:
        """The dense matrix ``[M, D]`` on flattened vectors (small problems, tests, oracles)."""
        D = math.prod(x_shape)
        basis = torch.eye(D, dtype=dtype).reshape((D,) + tuple(x_shape))
        return self.forward(basis).reshape(D, -1).T.contiguous()

    def select(self, idx: Tensor) -> "LinearOperator":
        return self


def _check_image(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name} acts on images [B, C, H, W], got shape {tuple(x.shape)}")


class Inpaint(LinearOperator):
    """Keep the pixels where ``mask`` is 1: ``y = mask * x`` (same shape as ``x``; zeros
    elsewhere). ``mask`` is ``[*x_shape]`` or per sample ``[B, *x_shape]``. ``A = A^T = A^+``."""

    def __init__(self, mask: Tensor, noise_std: float = 0.0, per_sample: bool = False):
        mask = torch.as_tensor(mask)
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("an inpainting mask must hold only 0 and 1")
        self.mask, self.noise_std, self.per_sample = mask, float(noise_std), bool(per_sample)

    def _m(self, x: Tensor) -> Tensor:
        if self.mask.shape != x.shape and self.mask.shape != x.shape[1:]:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} fits neither x {tuple(x.shape)} "
                             f"nor one sample {tuple(x.shape[1:])}")
        return self.mask.to(device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self._m(x) * x

    adjoint = forward

    def pinv(self, y: Tensor, damping: float = 0.0, **_) -> Tensor:
        return self._m(y) * y / (1.0 + damping)

    def measure(self, x: Tensor, seed=0) -> Tensor:
        return self._m(x) * super().measure(x, seed)

    def select(self, idx: Tensor) -> "Inpaint":
        """Rows ``idx`` of a per-sample mask (``per_sample=True``, ``[B, *x_shape]``)."""
        return Inpaint(self.mask[idx], self.noise_std, True) if self.per_sample else self

    @classmethod
    def box(cls, shape: Sequence[int], top: int, left: int, height: int, width: int,
            noise_std: float = 0.0) -> "Inpaint":
        """Observe everything but a ``height x width`` box (a hole to fill) of ``[C, H, W]``."""
        mask = torch.ones(tuple(shape))
        mask[..., top:top + height, left:left + width] = 0
        return cls(mask, noise_std)


class Downsample(LinearOperator):
    """Average pooling by ``factor`` (super-resolution): ``[B, C, H, W] -> [B, C, H/f, W/f]``.
    ``A A^T = I / f^2``, so ``A^+ = f^2 A^T`` (nearest-neighbour upsampling)."""

    def __init__(self, factor: int = 2, noise_std: float = 0.0):
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor, self.noise_std = int(factor), float(noise_std)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "Downsample")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by factor {self.factor}")
        return torch.nn.functional.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / (f * f)

    def pinv(self, y: Tensor, damping: float = 0.0, **_) -> Tensor:
        f2 = self.factor ** 2
        return self.adjoint(y) * (f2 / (1.0 + damping * f2))


class GaussianBlur(LinearOperator):
    """Convolution with a normalised Gaussian kernel (std ``sigma`` pixels, odd ``size``),
    zero padding 'same': a symmetric matrix, so ``A^T = A``."""

    def __init__(self, sigma: float = 1.0, size: int | None = None, noise_std: float = 0.0):
        if not sigma > 0:
            raise ValueError(f"blur sigma must be positive, got {sigma}")
        size = int(size) if size is not None else 2 * math.ceil(2 * sigma) + 1
        if size % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {size}")
        r = torch.arange(size, dtype=torch.float64) - size // 2
        k1 = torch.exp(-0.5 * (r / sigma) ** 2)
        k1 = k1 / k1.sum()
        self.kernel = torch.outer(k1, k1)  # [size, size]
        self.sigma, self.size, self.noise_std = float(sigma), size, float(noise_std)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "GaussianBlur")
        C = x.shape[1]
        w = self.kernel.to(device=x.device, dtype=x.dtype).expand(C, 1, self.size, self.size)
        return torch.nn.functional.conv2d(x, w, padding=self.size // 2, groups=C)

    adjoint = forward


class SubsampledFourier(LinearOperator):
    """MRI-style measurement: the orthonormal 2-D FFT of each channel, kept where the
    k-space ``mask`` ``[H, W]`` is 1; ``y`` is real ``[B, C, H, W, 2]`` (real, imaginary).
    The adjoint (real inner product) is ``Re(F^H (mask * y))``."""

    def __init__(self, mask: Tensor, noise_std: float = 0.0):
        mask = torch.as_tensor(mask)
        if mask.dim() != 2:
            raise ValueError(f"a k-space mask must be [H, W], got shape {tuple(mask.shape)}")
        self.mask, self.noise_std = mask, float(noise_std)

    def forward(self, x: Tensor) -> Tensor:
        _check_image(x, "SubsampledFourier")
        if tuple(x.shape[-2:]) != tuple(self.mask.shape):
            raise ValueError(f"image size {tuple(x.shape[-2:])} != mask size {tuple(self.mask.shape)}")
        k = torch.fft.fft2(x, norm="ortho") * self.mask.to(x.device)
        return torch.view_as_real(k)

    def adjoint(self, y: Tensor) -> Tensor:
        k = torch.view_as_complex(y.contiguous()) * self.mask.to(y.device)
        return torch.fft.ifft2(k, norm="ortho").real

    @classmethod
    def lines(cls, size: int, keep: int, center: int = 2, seed: int = 0, noise_std: float = 0.0):
        """A Cartesian mask of ``keep`` random phase-encoding rows, always holding the
        ``center`` lowest frequencies (both signs)."""
        g = torch.Generator().manual_seed(seed)
        mask = torch.zeros(size, size)
        low = [i % size for i in range(-center, center + 1)]
        rest = [i for i in torch.randperm(size, generator=g).tolist() if i not in low]
        rows = (low + rest)[:max(keep, len(low))]
        mask[rows] = 1
        return cls(mask, noise_std)


class Linear(LinearOperator):
    """Any linear map: a ``matrix`` ``[M, D]`` on flattened samples, or ``forward`` with its
    ``adjoint`` (functions of batched tensors)."""

    def __init__(self, matrix: Tensor | None = None, forward: Callable | None = None,
                 adjoint: Callable | None = None, noise_std: float = 0.0):
        if (matrix is None) == (forward is None):
            raise ValueError("give either matrix or forward (with adjoint)")
        if forward is not None and adjoint is None:
            raise ValueError("a function operator needs its adjoint")
        self.A = None if matrix is None else torch.as_tensor(matrix)
        if self.A is not None and self.A.dim() != 2:
            raise ValueError(f"matrix must be [M, D], got shape {tuple(self.A.shape)}")
        self._forward, self._adjoint, self.noise_std = forward, adjoint, float(noise_std)
        self._x_shape = None

    def forward(self, x: Tensor) -> Tensor:
        if self.A is None:
            return self._forward(x)
        xf = x.reshape(x.shape[0], -1)  # [B, D]
        if xf.shape[1] != self.A.shape[1]:
            raise ValueError(f"samples have {xf.shape[1]} features, the matrix has {self.A.shape[1]} columns")
        self._x_shape = x.shape[1:]
        return xf @ self.A.to(x).T  # [B, M]

    def adjoint(self, y: Tensor) -> Tensor:
        if self.A is None:
            return self._adjoint(y)
        x = y @ self.A.to(y)  # [B, D]
        return x.reshape((y.shape[0],) + tuple(self._x_shape)) if self._x_shape is not None else x


class SumOfSources(LinearOperator):
    """``y = x + h`` on a stacked pair ``z = [B, 2, *shape]`` (``z[:, 0] = x``, ``z[:, 1] = h``)."""

    def __init__(self, noise_std: float = 0.0):
        self.noise_std = float(noise_std)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() < 2 or z.shape[1] != 2:
            raise ValueError(f"SumOfSources acts on stacked pairs [B, 2, ...], got {tuple(z.shape)}")
        return z[:, 0] + z[:, 1]

    def adjoint(self, y: Tensor) -> Tensor:
        return torch.stack([y, y], dim=1)

    def pinv(self, y: Tensor, damping: float = 0.0, **_) -> Tensor:
        return self.adjoint(y) / (2.0 + damping)


TASKS = ("inpaint", "superres", "deblur", "mri")


def task_operator(task: str, shape: Sequence[int], noise_std: float = 0.05) -> LinearOperator:
    """The standard operator for a named task on samples of ``shape`` ``[C, H, W]``:
    inpaint (a centred box of half the side), superres (2x), deblur (sigma 1), mri
    (half of the k-space rows)."""
    C, H, W = shape
    if task == "inpaint":
        return Inpaint.box(shape, H // 4, W // 4, H // 2, W // 2, noise_std)
    if task == "superres":
        return Downsample(2, noise_std)
    if task == "deblur":
        return GaussianBlur(1.0, noise_std=noise_std)
    if task == "mri":
        return SubsampledFourier.lines(H, H // 2, noise_std=noise_std)
    raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")


# --- DPS ----------------------------------------------------------------------------
class MeasurementLogLikelihood:
    """DPS's ``log p(y | x_t)`` read on ``x0_hat`` ``[B]``, with ``r = y - A x0_hat``:

    - ``form="norm"``: ``-|r|``, whose gradient is DPS's normalised step
      ``grad |r|^2 / (2 |r|)`` (Chung et al. 2023, Algorithm 1 with ``zeta_i = zeta / |r|``);
    - ``form="gaussian"``: ``-|r|^2 / (2 noise_std^2)`` (the Bayes rule under DPS's
      approximation);
    - ``form="gaussian-capped"``: the Gaussian form with its step capped at the normalised
      one, ``-|r|^2 / (2 noise_std^2) * sg[min(1, noise_std^2 / |r|)]``: the Gaussian
      gradient where the residual is within ``noise_std^2``, the norm form's beyond.

    ``clip = (lo, hi)`` reads the residual on ``x0_hat`` clamped to the data range (as
    DDPM's ``clip_denoised``): a trained eps-network's ``x0_hat = (x - s eps) / a`` amplifies
    its errors by ``1 / a`` at high noise, and clamped entries pass no gradient."""

    FORMS = ("norm", "gaussian", "gaussian-capped")

    def __init__(self, op: LinearOperator, y: Tensor, normalized: bool = False, clip=None, form: str | None = None):
        form = form or ("norm" if normalized else "gaussian")
        if form not in self.FORMS:
            raise ValueError(f"unknown DPS likelihood form {form!r}; valid: {', '.join(self.FORMS)}")
        if form != "norm" and not op.noise_std > 0:
            raise ValueError("Gaussian DPS needs op.noise_std > 0; use likelihood='norm' for noiseless measurements")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("the measurement y contains NaN or Inf")
        self.op, self.y, self.form, self.clip = op, y, form, clip
        self.normalized = form == "norm"

    def __call__(self, x: Tensor, t, pred: Prediction) -> Tensor:
        x0 = pred.x0 if self.clip is None else pred.x0.clamp(*self.clip)
        r2 = self.op.residual_norm2(x0, self.y.to(x0))  # [B]
        if self.form == "norm":
            return -torch.sqrt(r2 + 1e-30)
        v2 = self.op.noise_std ** 2
        ll = -0.5 * r2 / v2
        if self.form == "gaussian-capped":
            ll = ll * (v2 / torch.sqrt(r2.detach() + 1e-30)).clamp(max=1.0)
        return ll

    def select(self, idx: Tensor) -> "MeasurementLogLikelihood":
        return MeasurementLogLikelihood(self.op.select(idx), self.y[idx], clip=self.clip, form=self.form)


DPS_LIKELIHOODS = ("norm", "gaussian")


class DPS(GradientGuidance):
    """Diffusion posterior sampling (Chung et al. 2023) as a ``Denoiser`` wrapper: sample it
    with any solver. Two likelihood forms, each with the paper's step normalisation by
    default (``normalized=True``):

    - ``likelihood="norm"`` (default): Algorithm 1's normalised step, ``zeta_i = zeta / |r|``
      (``r = y - A x0_hat``): the score gains ``scale * grad_{x_t} (-|r|)``
      (``= -scale grad |r|^2 / (2 |r|)``), whose size does not grow as the measurement noise
      shrinks; ``scale`` is ``zeta``. Works for noiseless measurements.
    - ``likelihood="gaussian"``: ``log N(y; A x0_hat, noise_std^2 I)`` (``scale = 1`` is the
      Bayes rule under DPS's ``p(y|x_t) ~ p(y|x0_hat)``), its step capped at the normalised
      one (``MeasurementLogLikelihood``, ``gaussian-capped``); ``normalized=False`` takes
      the raw Gaussian gradient, which grows as ``1 / noise_std^2``: it diverges on coarse
      grids at small ``noise_std`` (and on some suite seeds even at 100 DDPM steps), which
      the divergence check (``guidance`` module docstring) reports instead of returning
      huge samples.

    Both defaults (``scale = 1``) stay finite and within the prior's scale on every
    oracle-suite seed (``toys.random_problem``, seeds 0-19) with DDPM (100 steps) and
    DPM-Solver++(2M) (10 steps) (``tests/test_guided_divergence.py``).
    """

    def __init__(self, den: DenoiserBase, op: LinearOperator, y: Tensor, scale=1.0,
                 normalized: bool | None = None, interval=None, clip=None, likelihood: str | None = None,
                 **check_options):
        if likelihood is None:  # normalized=False alone keeps its old meaning: the raw Gaussian form
            likelihood = "gaussian" if normalized is False else "norm"
        if likelihood not in DPS_LIKELIHOODS:
            raise ValueError(f"unknown DPS likelihood {likelihood!r}; valid: {', '.join(DPS_LIKELIHOODS)}")
        if likelihood == "norm" and normalized is False:
            raise ValueError("the norm likelihood is the normalised step; normalized=False needs likelihood='gaussian'")
        normalized = True if normalized is None else bool(normalized)
        form = "norm" if likelihood == "norm" else ("gaussian-capped" if normalized else "gaussian")
        self.likelihood, self.normalized = likelihood, normalized
        check_options.setdefault("method", f"DPS ({likelihood} likelihood{'' if normalized else ', unnormalised'})")
        super().__init__(den, MeasurementLogLikelihood(op, y, clip=clip, form=form), scale, interval,
                         through_denoiser=True, **check_options)


# --- RED-Diff -------------------------------------------------------------------------
def red_diff(den: DenoiserBase, op: LinearOperator, y: Tensor, steps: int = 500, lr: float = 0.1,
             lam: float = 0.25, seed=0, init: Tensor | None = None, ts: Tensor | None = None,
             x_shape: Sequence[int] | None = None) -> Tensor:
    """RED-Diff (Mardani et al. 2024, Algorithm 1): the variational mean ``mu`` ``[B, ...]``.

    Each iteration takes the next ``t`` of a descending grid (uniform on
    ``[t_max, t_min]`` by default), draws ``eps`` from each row's stream, forms
    ``x_t = a mu + s eps`` and takes one Adam step on
    ``|y - A mu|^2 / (2 noise_std^2) + lam * (s/a) * sg[eps_hat(x_t, t) - eps]^T mu``
    (the SNR weight ``s/a = SNR^{-1/2}`` of the paper). One NFE per iteration.
    ``init`` defaults to ``A^+ y``.
    """
    if not op.noise_std > 0:
        raise ValueError("RED-Diff's fidelity term needs op.noise_std > 0")
    p = den.process
    mu0 = op.pinv(y) if init is None else init
    if x_shape is not None:
        mu0 = mu0.reshape((y.shape[0],) + tuple(x_shape))
    mu = mu0.detach().clone().requires_grad_(True)  # [B, ...]
    if ts is None:
        ts = torch.linspace(p.t_max, max(p.t_min, 1e-3), steps, dtype=torch.float64)
    rng = make_rng(seed, mu.shape[0], mu.device)
    opt = torch.optim.Adam([mu], lr=lr)
    for t in ts:
        c = p.at(t).broadcast(mu)
        a, s = c.alpha, c.sigma
        eps = rng.randn_like(mu)
        with torch.no_grad():
            eps_hat = den.predict(a * mu + s * eps, t).eps
        fidelity = 0.5 * op.residual_norm2(mu, y).sum() / op.noise_std ** 2
        reg = (lam * (s / a) * (eps_hat - eps) * mu).sum()
        opt.zero_grad()
        (fidelity + reg).backward()
        opt.step()
    return mu.detach()


# --- projection / replacement with RePaint resampling ----------------------------------
def repaint_schedule(n_steps: int, resample: int = 1, jump: int = 1) -> list[tuple[int, int]]:
    """The RePaint index moves ``(i, j)``: ``j = i + 1`` a solver step down, ``j < i`` a jump
    back up by forward noising. Every block of ``jump`` steps is done ``resample`` times
    (Lugmayr et al. 2022, section 4.2); ``resample = 1`` is the plain grid."""
    if resample < 1 or jump < 1:
        raise ValueError(f"resample and jump must be >= 1, got {resample}, {jump}")
    moves = []
    start = 0
    while start < n_steps:
        end = min(start + jump, n_steps)
        for r in range(resample):
            moves += [(i, i + 1) for i in range(start, end)]
            if r < resample - 1 and end < n_steps:  # the last block ends at the data: no jump back
                moves.append((end, start))
        start = end
    return moves


def repaint_blocks(moves: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs of consecutive forward moves merged into ``(start, stop)`` blocks; a jump back
    ``(i, j)`` (``j < i``) stays one move. A solver is started afresh at each block's start."""
    blocks: list[tuple[int, int]] = []
    for i, j in moves:
        if j > i and blocks and blocks[-1][1] == i and blocks[-1][0] < blocks[-1][1]:
            blocks[-1] = (blocks[-1][0], j)
        else:
            blocks.append((i, j))
    return blocks


def sample_with_resampling(den: DenoiserBase, shape: Sequence[int], solver="ddpm", steps: int = 50,
                           ts: Tensor | None = None, seed=0, resample: int = 1, jump: int = 1,
                           after_step: Callable | None = None, dtype=torch.float32, device="cpu",
                           **solver_options) -> SampleResult:
    """A sampling loop on the solver protocol with RePaint's time travel (Lugmayr et al.
    2022): every block of ``jump`` steps is redone ``resample`` times, jumping back by the
    forward process ``q(x_{t'} | x_t)`` (``Process.renoise``) and restarting the solver there.
    ``jump = 1`` is universal guidance's per-step self-recurrence (Bansal et al. 2023,
    Algorithm 1). ``after_step(x, t, rng) -> x`` runs after every solver step (e.g. a
    projection). Randomness comes from each row's stream."""
    solver = solver_registry.get(solver, **solver_options)
    p = den.process
    ts = grids.resolve(p, steps, ts)
    shape = tuple(int(v) for v in shape)
    rng = make_rng(seed, shape[0], device)
    x = initial_noise(den, shape, ts, rng, dtype=dtype, device=device)
    nfe0, start = den.nfe, time.perf_counter()
    for block_start, block_stop in repaint_blocks(repaint_schedule(ts.numel() - 1, resample, jump)):
        if block_stop < block_start:  # jump back up by the forward process, restart the solver there
            x = p.renoise(x, ts[block_start], ts[block_stop], rng.randn_like(x))
            continue
        for step in iterate(den, solver, x, ts, rng, start=block_start, stop=block_stop):
            if after_step is not None:
                step.x = after_step(step.x, ts[step.i + 1], rng)
            x = step.x
    return SampleResult(x=x, nfe=den.nfe - nfe0, wall_time=time.perf_counter() - start, ts=ts,
                        solver=solver.name)


def projection_sample(den: DenoiserBase, op: LinearOperator, y: Tensor, shape: Sequence[int],
                      solver="ddpm", steps: int = 50, ts: Tensor | None = None, seed=0,
                      resample: int = 1, jump: int = 1, **solver_options) -> SampleResult:
    """Replacement / projection sampling (score-SDE imputation; RePaint with ``resample``).

    After every solver step to ``t`` the sample is projected onto ``{A x = a y + s A z}``
    (``z`` fresh noise from each row's stream): ``x <- x + A^+(a y + s A z - A x)``; for an
    inpainting mask this replaces the known pixels. With measurement noise the projection
    is damped, ``A^+ -> A^T (A A^T + noise_std^2 I)^{-1}`` (the Gaussian update of a
    unit-variance prior), which keeps ill-conditioned operators (blur) from amplifying
    noise; without it the final step makes ``A x = y`` exactly.
    """
    p = den.process

    def project(x: Tensor, t: Tensor, rng: SampleRNG) -> Tensor:
        if float(p.sigma(t)) == 0.0:
            target = y
        else:
            target = p.alpha(t).item() * y + p.sigma(t).item() * op.forward(rng.randn_like(x))
        return x + op.pinv(target - op.forward(x), damping=op.noise_std ** 2)

    return sample_with_resampling(den, shape, solver, steps, ts, seed, resample, jump, project,
                                  dtype=y.dtype, device=y.device, **solver_options)


# --- two diffusion priors for y = x + h ------------------------------------------------
class StackedPriors(DenoiserBase):
    """Two independent priors on a stacked state ``z = [B, 2, *shape]``: ``z[:, 0]`` is
    denoised by ``den_x``, ``z[:, 1]`` by ``den_h`` (both on one process, so ``z_t`` is the
    joint noisy state). The joint denoiser of independent sources is the pair of denoisers.
    Two network calls per evaluation (one per prior)."""

    def __init__(self, den_x: DenoiserBase, den_h: DenoiserBase):
        if repr(den_x.process) != repr(den_h.process):
            raise ValueError(f"the two priors must share a process, got {den_x.process!r} and {den_h.process!r}")
        self.den_x, self.den_h = den_x, den_h
        self._data_scale = max(den_x.data_scale, den_h.data_scale)
        self.process = den_x.process
        self._counter = summed_counter([den_x, den_h])

    def predict(self, z: Tensor, t) -> Prediction:
        if z.dim() < 3 or z.shape[1] != 2:
            raise ValueError(f"StackedPriors acts on stacked pairs [B, 2, ...], got {tuple(z.shape)}")
        px, ph = self.den_x.predict(z[:, 0], t), self.den_h.predict(z[:, 1], t)
        return Prediction(torch.stack([px.x0, ph.x0], 1), torch.stack([px.eps, ph.eps], 1))

    def select(self, idx: Tensor) -> "StackedPriors":
        return StackedPriors(self.den_x.select(idx), self.den_h.select(idx))


def two_prior_posterior(den_x: DenoiserBase, den_h: DenoiserBase, y: Tensor, noise_std: float,
                        solver="heun", steps: int = 40, seed=0, scale=1.0,
                        log_likelihood: Callable | None = None, likelihood: str = "norm",
                        normalized: bool | None = None) -> tuple[Tensor, Tensor]:
    """Joint posterior samples ``(x, h)`` given ``y = x + h + noise`` ``[B, *shape]``.

    Runs ``StackedPriors`` guided by ``log p(y | x_t, h_t)``: DPS on ``y = x + h``
    (``likelihood="norm"``, the normalised step ``scale * grad -|y - x0_hat - h0_hat|``, or
    ``"gaussian"``, ``-|y - x0_hat - h0_hat|^2 / (2 noise_std^2)`` with its step capped at
    the normalised one unless ``normalized=False``; see ``DPS``) unless an exact
    ``log_likelihood`` (``f(z_t, t, pred) -> [B]``) is given (the toys'
    ``NoisyLogLikelihood``). Guided runs raise ``GuidanceDivergenceError`` if they leave the
    priors' scale (``guidance`` module docstring)."""
    joint = StackedPriors(den_x, den_h)
    if log_likelihood is None:
        guided = DPS(joint, SumOfSources(noise_std), y, scale=scale, likelihood=likelihood, normalized=normalized,
                     method=f"two_prior_posterior (DPS, {likelihood} likelihood)")
    else:
        guided = GradientGuidance(joint, log_likelihood, scale=scale, through_denoiser=True,
                                  method="two_prior_posterior (exact likelihood)")
    shape = (y.shape[0], 2) + tuple(y.shape[1:])
    z = sample(guided, shape=shape, solver=solver, steps=steps, seed=seed, dtype=y.dtype).x
    return z[:, 0], z[:, 1]


# --- TSDiff: observation self-guidance and refinement ----------------------------------
OBS_LOSSES = ("mse", "quantile")


def quantile_loss(residual: Tensor, q: Tensor) -> Tensor:
    """Pinball loss ``rho_q(r) = r (q - 1[r < 0])`` of ``residual = y - prediction``."""
    return residual * (q - (residual < 0).to(residual.dtype))


class ObservedLoss:
    """``-scale_free loss`` of ``x0_hat`` on the observed entries ``[B]``: MSE (Gaussian
    ``log p(y|x_t)``) or the quantile loss at per-row levels ``quantiles`` ``[B]``
    (asymmetric Laplace), as TSDiff's self-guidance (Kollovieh et al. 2023, eqs. 7-8).
    ``clip = (lo, hi)`` clamps ``x0_hat`` first (see ``MeasurementLogLikelihood``)."""

    def __init__(self, mask: Tensor, y: Tensor, loss: str = "mse", quantiles: Tensor | None = None, clip=None):
        if loss not in OBS_LOSSES:
            raise ValueError(f"unknown observation loss {loss!r}; valid: {', '.join(OBS_LOSSES)}")
        if loss == "quantile" and quantiles is None:
            raise ValueError("the quantile loss needs quantiles [B] in (0, 1)")
        self.mask, self.y, self.loss, self.quantiles, self.clip = mask, y, loss, quantiles, clip

    def __call__(self, x: Tensor, t, pred: Prediction) -> Tensor:
        x0 = pred.x0 if self.clip is None else pred.x0.clamp(*self.clip)
        m = self.mask.to(x0)
        r = (self.y.to(x0) - x0) * m  # [B, ...]
        if self.loss == "mse":
            v = r * r
        else:
            q = self.quantiles.to(x0).reshape((-1,) + (1,) * (r.dim() - 1))
            v = quantile_loss(r, q) * m
        return -v.reshape(v.shape[0], -1).sum(1)

    def select(self, idx: Tensor) -> "ObservedLoss":
        mask = self.mask[idx] if self.mask.shape[0] == self.y.shape[0] and self.mask.dim() == self.y.dim() else self.mask
        q = None if self.quantiles is None else self.quantiles[idx]
        return ObservedLoss(mask, self.y[idx], self.loss, q, self.clip)


class ObservationGuidance(GradientGuidance):
    """TSDiff self-guidance: an unconditional model steered toward the observed entries
    (``mask`` 1) of ``y`` by ``scale * grad_{x_t} [-loss(y_obs, x0_hat_obs)]``."""

    def __init__(self, den: DenoiserBase, mask: Tensor, y: Tensor, scale=1.0, loss: str = "mse",
                 quantiles: Tensor | None = None, interval=None, clip=None):
        super().__init__(den, ObservedLoss(mask, y, loss, quantiles, clip), scale, interval, through_denoiser=True)


def forecast_mask(length: int, horizon: int, channels: int = 1) -> Tensor:
    """``[channels, length]`` mask observing the first ``length - horizon`` steps."""
    if not 0 < horizon < length:
        raise ValueError(f"horizon must be in (0, {length}), got {horizon}")
    mask = torch.ones(channels, length)
    mask[:, length - horizon:] = 0
    return mask


def tsdiff_forecast(den: DenoiserBase, history: Tensor, horizon: int, n_samples: int = 16,
                    scale: float = 1.0, loss: str = "mse", solver="ddpm", steps: int = 50, seed=0,
                    interval=None, clip=None, **solver_options) -> Tensor:
    """Forecast samples ``[n_samples, C, horizon]`` after ``history`` ``[C, L - horizon]``.

    The window is ``[C, L]`` with the history observed; ``loss='quantile'`` gives sample
    ``i`` the level ``(i + 0.5) / n_samples`` (quantile self-guidance). For a trained
    eps-network, ``interval=(0, 0.6)`` and ``clip=(-1, 1)`` keep the guidance away from the
    highest noise levels, where ``x0_hat``'s errors are amplified by ``1 / alpha``."""
    C, L_obs = history.shape
    L = L_obs + horizon
    mask = forecast_mask(L, horizon, C)  # [C, L]
    y = torch.zeros(n_samples, C, L, dtype=history.dtype)
    y[:, :, :L_obs] = history
    q = (torch.arange(n_samples, dtype=torch.float64) + 0.5) / n_samples if loss == "quantile" else None
    guided = ObservationGuidance(den, mask, y, scale, loss, q, interval, clip)
    x = sample(guided, shape=(n_samples, C, L), solver=solver, steps=steps, seed=seed,
               dtype=history.dtype, **solver_options).x
    return x[:, :, L_obs:]


def diffusion_energy(den: DenoiserBase, x: Tensor, t, rng: SampleRNG) -> Tensor:
    """A one-sample estimate of ``-log p(x)`` up to constants and scale ``[B]``: the
    denoising loss ``|eps_hat(a x + s eps, t) - eps|^2`` at ``t`` (TSDiff eq. 9)."""
    eps = rng.randn_like(x)
    d = den.predict(den.process.add_noise(x, eps, t), t).eps - eps
    return (d * d).reshape(x.shape[0], -1).sum(1)


def tsdiff_refine(den: DenoiserBase, base: Tensor, mask: Tensor, y: Tensor, steps: int = 50,
                  lr: float = 0.01, lam: float = 1.0, loss: str = "mse", quantiles: Tensor | None = None,
                  langevin: bool = False, noise_scale: float = 0.1, seed=0, t_range=(0.02, 0.5),
                  levels: int = 8) -> Tensor:
    """TSDiff refinement of a base forecast ``base`` ``[B, C, L]`` (observed entries from ``y``).

    Minimises ``E(x) = diffusion_energy(x, t_k) + lam * loss(x_obs, y_obs)`` by gradient
    steps ``x <- x - lr grad E`` (energy minimisation) or, with ``langevin``, samples with
    ``x <- x - lr grad E + sqrt(2 lr) noise_scale xi`` (Kollovieh et al. 2023, section 4.2).
    Step ``k`` uses ``t_k``, cycling through ``levels`` values evenly spaced in ``t_range``
    (shared by the batch: one NFE per step, and a row's result does not depend on its batch).
    """
    rng = make_rng(seed, base.shape[0], base.device)
    obs = ObservedLoss(mask, y, loss, quantiles)
    grid = torch.linspace(t_range[0], t_range[1], levels, dtype=torch.float64)
    x = base.detach().clone()
    for k in range(steps):
        t = grid[(k * 5) % levels] if levels % 5 else grid[k % levels]  # a stride that visits every level
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            energy = diffusion_energy(den, xg, t, rng) - lam * obs(xg, None, Prediction(xg, xg))
            (grad,) = torch.autograd.grad(energy.sum(), xg)
        x = x.detach() - lr * grad
        if langevin:
            x = x + math.sqrt(2 * lr) * noise_scale * rng.randn_like(x)
    return x.detach()


def seasonal_naive(history: Tensor, horizon: int, period: int) -> Tensor:
    """The seasonal-naive forecast ``[..., horizon]``: repeat the last ``period`` values."""
    if history.shape[-1] < period:
        raise ValueError(f"history of {history.shape[-1]} steps is shorter than the period {period}")
    last = history[..., -period:]
    reps = -(-horizon // period)
    return last.repeat(*([1] * (history.dim() - 1)), reps)[..., :horizon]


def crps_samples(samples: Tensor, truth: Tensor) -> float:
    """Continuous ranked probability score of an ensemble ``[N, ...]`` against ``truth``
    ``[...]``, averaged over entries: ``E|X - y| - E|X - X'| / 2`` (Gneiting & Raftery 2007)."""
    n = samples.shape[0]
    term1 = (samples - truth.unsqueeze(0)).abs().mean(0)
    s, _ = torch.sort(samples, dim=0)
    i = torch.arange(1, n + 1, dtype=samples.dtype).reshape((n,) + (1,) * (samples.dim() - 1))
    term2 = ((2 * i - n - 1) * s).sum(0) / (n * n)  # E|X - X'| / 2
    return float((term1 - term2).mean())


# --- one entry point for the CLI and benchmarks ----------------------------------------
METHODS = ("dps", "reddiff", "projection")


def restore(den: DenoiserBase, op: LinearOperator, y: Tensor, shape: Sequence[int], method: str = "dps",
            steps: int | None = None, seed=0, scale: float = 1.0, solver: str = "ddpm", **options) -> tuple[Tensor, int]:
    """Posterior samples ``[B, *shape]`` for measurements ``y`` ``[B, ...]`` and the NFE.

    ``dps``: ``DPS`` sampled with ``solver`` (default DDPM, ``steps`` 100); ``reddiff``:
    ``red_diff`` (``steps`` 500 iterations); ``projection``: ``projection_sample`` (``steps``
    50; ``resample`` / ``jump`` options for RePaint). ``options`` go to the method."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    full = (y.shape[0],) + tuple(int(v) for v in shape)
    nfe0 = den.nfe
    if method == "dps":
        guided = DPS(den, op, y, scale=scale, normalized=options.pop("normalized", None),
                     interval=options.pop("interval", None), clip=options.pop("clip", None),
                     likelihood=options.pop("likelihood", None))
        x = sample(guided, shape=full, solver=solver, steps=steps or 100, seed=seed, dtype=y.dtype, **options).x
    elif method == "reddiff":
        x = red_diff(den, op, y, steps=steps or 500, seed=seed, x_shape=shape, **options)
    else:
        x = projection_sample(den, op, y, full, solver=solver, steps=steps or 50, seed=seed, **options).x
    return x, den.nfe - nfe0
