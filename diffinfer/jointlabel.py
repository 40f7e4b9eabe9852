"""Joint data-label diffusion: one model diffuses ``(x, one-hot label)`` together; classifying
is inpainting the label, generating is inpainting the data.

Chen et al., "Diffusion Models for Multi-Task Generative Modeling" (ICLR 2024) diffuse images
and labels in one process with a shared backbone and per-modality heads. Here the two blocks
carry their own times (UniDiffuser, Bao et al., "One Transformer Fits All Distributions in
Multi-Modal Diffusion at Scale", ICML 2023): the model answers ``E[x, l | x_{t_x}, l_{t_l}]``
for any pair of times. Inpainting a block is then exact with the exact model: holding the
observed block clean (``t = 0``) makes the other block's denoiser the posterior mean of the
*conditional* law, so any solver run on that block alone samples ``p(l | x)`` (classification)
or ``p(x | l)`` (class-conditional generation). Replacement / RePaint conditioning of a
one-time joint model (``inverse.projection_sample``) is not exact: it conditions on a noised
copy of the observed block (``bench/structured_jointlabel.py`` measures its bias).

    jden = JointDenoiser(net, process, prediction="velocity", num_classes=10)
    p = label_probabilities(jden, x)                        # E[l | x, l_1] = p(y | x) if alpha(1) = 0
    res = inpaint_label(jden, x, steps=20, seed=0)          # samples of the label block [B, C]
    res = inpaint_data(jden, labels, (B, 1, 8, 8), steps=20, seed=0)   # samples of p(x | y)
    loss = joint_denoising_loss(jden, x0, labels, generator)           # training, per-block times
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from .denoiser import DenoiserBase, Prediction, _Counter, check_prediction, from_x0_eps, to_prediction
from .loop import SampleResult, sample
from .process import Process, as_time

_F64 = torch.float64


def _times(t, batch: int) -> Tensor:
    """Float64 ``[B]`` times from a scalar, ``[B]`` tensor or grid point."""
    t = as_time(t).to(_F64).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch).clone()
    if t.numel() != batch:
        raise ValueError(f"t has {t.numel()} entries for a batch of {batch}")
    return t


class JointDenoiser:
    """A network on ``(x, one-hot label)`` with one time per block.

    ``net(x_t [B, *S], l_t [B, C], t_x [B], t_l [B]) -> (out_x [B, *S], out_l [B, C])``, both
    outputs of the one ``prediction`` type, on ``process`` (times float64 in ``[0, 1]``, cast to
    ``x_t``'s dtype). ``predict`` converts each block with its own coefficients and counts one
    NFE per call. A clean block (``t = 0``) is returned as given.
    """

    def __init__(self, net: Callable, process: Process, num_classes: int, prediction: str = "x0",
                 check: bool = True):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a diffinfer Process, got {type(process).__name__}")
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.net, self.process, self.num_classes = net, process, int(num_classes)
        self.prediction, self.check = check_prediction(prediction), check
        self._counter = _Counter()

    @property
    def nfe(self) -> int:
        return self._counter.n

    def raw(self, x: Tensor, l: Tensor, t_x, t_l) -> tuple[Tensor, Tensor]:
        """The network's own outputs (one NFE)."""
        B = x.shape[0]
        if l.shape != (B, self.num_classes):
            raise ValueError(f"labels must be [B, C] = [{B}, {self.num_classes}], got {tuple(l.shape)}")
        tx, tl = _times(t_x, B), _times(t_l, B)
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        out_x, out_l = self.net(x, l, tx.to(device=x.device, dtype=dt), tl.to(device=x.device, dtype=dt))
        self._counter.n += 1
        if self.check:
            if out_x.shape != x.shape or out_l.shape != l.shape:
                raise ValueError(f"the joint network returned shapes {tuple(out_x.shape)}, {tuple(out_l.shape)} "
                                 f"for inputs {tuple(x.shape)}, {tuple(l.shape)}")
            if not (bool(torch.isfinite(out_x).all()) and bool(torch.isfinite(out_l).all())):
                raise FloatingPointError("the joint network returned NaN or Inf")
        return out_x, out_l

    def predict(self, x: Tensor, l: Tensor, t_x, t_l) -> tuple[Prediction, Prediction]:
        """``(Prediction of the data block, Prediction of the label block)``."""
        B = x.shape[0]
        tx, tl = _times(t_x, B), _times(t_l, B)
        out_x, out_l = self.raw(x, l, tx, tl)
        cx, cl = self.process.at(tx).broadcast(x), self.process.at(tl).broadcast(l)
        px, pl = to_prediction(out_x, self.prediction, x, cx), to_prediction(out_l, self.prediction, l, cl)
        # a clean block is its own x0 (an eps / v network's output there is not used)
        px = _keep_clean(px, x, tx)
        pl = _keep_clean(pl, l, tl)
        return px, pl


def _keep_clean(p: Prediction, given: Tensor, t: Tensor) -> Prediction:
    clean = (t == 0).to(given.device)
    if not bool(clean.any()):
        return p
    mask = clean.reshape((-1,) + (1,) * (given.dim() - 1))
    return Prediction(torch.where(mask, given, p.x0), torch.where(mask, torch.zeros_like(given), p.eps))


class _BlockGiven(DenoiserBase):
    """One block's denoiser with the other block held clean at ``t = 0`` (a ``DenoiserBase``:
    every solver and sampler runs it). Shares the joint model's NFE counter."""

    free: str = ""

    def __init__(self, joint: JointDenoiser, given: Tensor):
        if not isinstance(joint, JointDenoiser):
            raise TypeError(f"joint must be a JointDenoiser, got {type(joint).__name__}")
        self.joint, self.given, self.process, self._counter = joint, given, joint.process, joint._counter

    def _pair(self, free: Tensor, t) -> tuple[Prediction, Prediction]:
        B = free.shape[0]
        if self.given.shape[0] != B:
            raise ValueError(f"{B} rows to denoise, {self.given.shape[0]} given")
        zeros = torch.zeros(B, dtype=_F64)
        given = self.given.to(device=free.device, dtype=free.dtype)
        if self.free == "label":
            return self.joint.predict(given, free, zeros, _times(t, B))
        return self.joint.predict(free, given, _times(t, B), zeros)

    def select(self, idx: Tensor):
        return type(self)(self.joint, self.given[idx])


class LabelGivenData(_BlockGiven):
    """The label block's denoiser given clean data ``x`` ``[B, *S]``: samples ``p(l | x)``."""

    free = "label"

    def predict(self, l: Tensor, t) -> Prediction:
        return self._pair(l, t)[1]


class DataGivenLabel(_BlockGiven):
    """The data block's denoiser given clean one-hot labels ``[B, C]``: samples ``p(x | y)``."""

    free = "data"

    def predict(self, x: Tensor, t) -> Prediction:
        return self._pair(x, t)[0]


class TiedJoint(DenoiserBase):
    """The joint model with one time for both blocks, on the concatenation ``z = (x_flat, l)``
    ``[B, D + C]``: the one-noise-level joint model of Chen et al., for unconditional joint
    sampling and for replacement (RePaint-style) inpainting through ``inverse``."""

    def __init__(self, joint: JointDenoiser, data_shape: Sequence[int]):
        self.joint, self.data_shape = joint, tuple(int(s) for s in data_shape)
        self.process, self._counter = joint.process, joint._counter
        self.dim = int(torch.tensor(self.data_shape).prod())

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[:, :self.dim].reshape((z.shape[0],) + self.data_shape), z[:, self.dim:]

    def predict(self, z: Tensor, t) -> Prediction:
        x, l = self.split(z)
        tt = _times(t, z.shape[0])
        px, pl = self.joint.predict(x, l, tt, tt)
        return Prediction(torch.cat([px.x0.flatten(1), pl.x0], 1), torch.cat([px.eps.flatten(1), pl.eps], 1))


def _onehot(labels: Tensor, num_classes: int, dtype) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(f"one-hot labels must have {num_classes} columns, got {labels.shape[1]}")
        return labels.to(dtype)
    if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer [B] or one-hot [B, {num_classes}], got {labels.dtype} {tuple(labels.shape)}")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    return torch.nn.functional.one_hot(labels.long(), num_classes).to(dtype)


def label_probabilities(joint: JointDenoiser, x: Tensor) -> Tensor:
    """``E[l | x, l_{t_max}]`` ``[B, C]`` in one model call: with ``alpha(t_max) = 0`` (e.g.
    ``RectifiedFlow``) the noisy label carries nothing and this is ``E[onehot(y) | x] = p(y | x)``
    exactly for the exact model; otherwise it conditions on a nearly pure-noise label (set to
    its mean, 0)."""
    B = x.shape[0]
    l = torch.zeros(B, joint.num_classes, dtype=x.dtype, device=x.device)
    t_max = torch.full((B,), float(joint.process.t_max), dtype=_F64)
    return joint.predict(x, l, torch.zeros(B, dtype=_F64), t_max)[1].x0


def inpaint_label(joint: JointDenoiser, x: Tensor, solver="euler", steps: int = 20, seed=0,
                  **options) -> SampleResult:
    """Sample the label block of ``p(l | x)`` (``x`` clean) with any solver; ``result.x`` is
    ``[B, C]`` (argmax: a class drawn from ``p(y | x)``)."""
    return sample(LabelGivenData(joint, x), shape=(x.shape[0], joint.num_classes), solver=solver,
                  steps=steps, seed=seed, dtype=x.dtype, device=x.device, **options)


def classify(joint: JointDenoiser, x: Tensor, method: str = "mean", **options) -> Tensor:
    """Class indices ``[B]``: ``mean`` takes the argmax of ``label_probabilities`` (one call, the
    Bayes decision for the exact model); ``sample`` the argmax of one ``inpaint_label`` draw."""
    if method == "mean":
        return label_probabilities(joint, x).argmax(1)
    if method == "sample":
        return inpaint_label(joint, x, **options).x.argmax(1)
    raise ValueError(f"unknown method {method!r}; valid: mean, sample")


def inpaint_data(joint: JointDenoiser, labels: Tensor, shape: Sequence[int], solver="euler", steps: int = 20,
                 seed=0, dtype=torch.float32, **options) -> SampleResult:
    """Sample the data block of ``p(x | y)`` (class-conditional generation): ``labels`` integer
    ``[B]`` or one-hot ``[B, C]``; ``shape`` the data batch shape ``[B, *S]``."""
    onehot = _onehot(labels, joint.num_classes, dtype)
    if onehot.shape[0] != shape[0]:
        raise ValueError(f"{onehot.shape[0]} labels for a batch of {shape[0]}")
    return sample(DataGivenLabel(joint, onehot), shape=tuple(shape), solver=solver, steps=steps, seed=seed,
                  dtype=dtype, **options)


def joint_times(process: Process, batch: int, generator: torch.Generator | None = None,
                modes: Sequence[float] = (0.25, 0.35, 0.3, 0.1)) -> tuple[Tensor, Tensor]:
    """Training times ``(t_x, t_l)`` ``[B]`` each: with probabilities ``modes`` a row is
    (independent times, data clean, label clean, one shared time); times uniform on the
    process's range. Clean-block rows teach the conditionals inpainting uses."""
    w = torch.as_tensor(modes, dtype=_F64)
    if w.shape != (4,) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"modes must be 4 non-negative weights, got {modes}")
    lo, hi = float(process.t_min), float(process.t_max)
    tx = lo + (hi - lo) * torch.rand(batch, dtype=_F64, generator=generator)
    tl = lo + (hi - lo) * torch.rand(batch, dtype=_F64, generator=generator)
    mode = torch.multinomial(w / w.sum(), batch, replacement=True, generator=generator)
    tx = torch.where(mode == 1, 0.0, tx)
    tl = torch.where(mode == 2, 0.0, torch.where(mode == 3, tx, tl))
    return tx, tl


def joint_denoising_loss(joint: JointDenoiser, x0: Tensor, labels: Tensor, generator: torch.Generator | None = None,
                         label_weight: float = 1.0, modes: Sequence[float] = (0.25, 0.35, 0.3, 0.1)) -> Tensor:
    """``E |out_x - target_x|^2 + label_weight E |out_l - target_l|^2`` (per-entry means) over
    the noisy blocks, targets from ``denoiser.from_x0_eps`` for the model's prediction type,
    times from ``joint_times`` (a clean block is input, not target)."""
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or Inf")
    B = x0.shape[0]
    l0 = _onehot(labels, joint.num_classes, x0.dtype)
    tx, tl = joint_times(joint.process, B, generator, modes)
    ex = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    el = torch.randn(l0.shape, generator=generator, dtype=x0.dtype)
    cx, cl = joint.process.at(tx).broadcast(x0), joint.process.at(tl).broadcast(l0)
    xt, lt = cx.alpha * x0 + cx.sigma * ex, cl.alpha * l0 + cl.sigma * el
    out_x, out_l = joint.raw(xt, lt, tx, tl)
    err_x = (out_x - from_x0_eps(x0, ex, joint.prediction, cx)).pow(2).flatten(1).mean(1)  # [B]
    err_l = (out_l - from_x0_eps(l0, el, joint.prediction, cl)).pow(2).mean(1)  # [B]
    noisy_x, noisy_l = (tx > 0).to(err_x.dtype), (tl > 0).to(err_l.dtype)
    return (err_x * noisy_x).sum() / noisy_x.sum().clamp_min(1) + label_weight * (err_l * noisy_l).sum() / noisy_l.sum().clamp_min(1)
