"""Exact posteriors of a hidden-Markov prior under per-position token observations.

An observation ``y`` that acts on each token separately has a per-position likelihood
``lik[i, v] = p(y_i | x_i = v)`` (``[L, V]``). Under a ``HiddenMarkovModel`` prior the
posterior ``p(x | y)`` is again a hidden Markov model whose emission at position ``i`` is
``emission[h, v] * lik[i, v]``, so it is exact by forward-backward (Rabiner 1989, section
III.A): ``hmm_posterior_marginals`` gives ``p(x_i = v | y)`` and ``hmm_posterior_sample``
draws exact posterior sequences by forward filtering, backward sampling (FFBS; Carter & Kohn
1994, Fruhwirth-Schnatter 1994). Two observation models build ``lik``:

- ``symmetric_channel_likelihood``: each observed token is the true one with probability
  ``1 - eps``, otherwise uniform over the ``V - 1`` others;
- ``inpainting_likelihood``: some positions observed exactly (a one-hot constraint), the rest
  unobserved (likelihood 1).

Likelihoods multiply (``channel * constraints``). ``hmm_sum_posterior_marginals`` gives the
exact marginals under a linear-sum observation ``y = sum_i values[x_i] + N(0, sigma^2)``, which
does not factorise over positions (forward-backward on the hidden state and the running sum).
The masked-diffusion samplers that target these posteriors are in ``diffinfer.mdm.posterior``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .forward_backward import backward
from .hmm import HiddenMarkovModel


def symmetric_channel_likelihood(y: Tensor, n_states: int, eps: float) -> Tensor:
    """``p(y_i | x_i = v)`` ``[..., L, V]`` of the symmetric channel: ``1 - eps`` if ``v == y_i``,
    else ``eps / (V - 1)``. ``y``: ``[..., L]`` observed tokens in ``[0, V)``."""
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or ((y < 0) | (y >= n_states)).any():
        raise ValueError(f"y must hold integer tokens in [0, {n_states})")
    if not 0 <= eps <= 1 or n_states < 2:
        raise ValueError(f"need 0 <= eps <= 1 and n_states >= 2, got eps={eps}, n_states={n_states}")
    same = torch.nn.functional.one_hot(y.long(), n_states).double()  # [..., L, V]
    return same * (1 - eps) + (1 - same) * (eps / (n_states - 1))


def inpainting_likelihood(y: Tensor, observed: Tensor, n_states: int) -> Tensor:
    """``[..., L, V]``: one-hot at ``y_i`` where ``observed`` ``[..., L]`` is true, 1 elsewhere."""
    y, observed = torch.as_tensor(y), torch.as_tensor(observed, dtype=torch.bool)
    if y.shape != observed.shape:
        raise ValueError(f"y {tuple(y.shape)} and observed {tuple(observed.shape)} differ in shape")
    if y.dtype.is_floating_point or ((y < 0) | (y >= n_states)).any():
        raise ValueError(f"y must hold integer tokens in [0, {n_states})")
    hot = torch.nn.functional.one_hot(y.long(), n_states).double()
    return torch.where(observed[..., None], hot, torch.ones_like(hot))


def check_likelihood(lik: Tensor, n_states: int) -> Tensor:
    """``lik`` as float64 ``[B, L, V]`` (an ``[L, V]`` input gets ``B = 1``); raises on a wrong
    vocabulary, negative or non-finite values, or a position that rules out every token."""
    lik = torch.as_tensor(lik, dtype=torch.float64)
    if lik.dim() == 2:
        lik = lik[None]
    if lik.dim() != 3 or lik.shape[-1] != n_states:
        raise ValueError(f"likelihood must be [L, {n_states}] or [B, L, {n_states}], got {tuple(lik.shape)}")
    if not torch.isfinite(lik).all() or (lik < 0).any():
        raise ValueError("likelihood values must be finite and >= 0")
    if (lik.sum(-1) <= 0).any():
        raise ValueError("the likelihood rules out every token at some position")
    return lik


def _filter(hmm: HiddenMarkovModel, lik: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-position evidence ``P(y_i | h_i)`` ``[B, L, H]``, filtered messages
    ``P(h_i | y_<=i)`` ``[B, L, H]`` and ``log p(y)`` ``[B]``."""
    lik = check_likelihood(lik, hmm.n_states)
    evidence = lik @ hmm.emission.T  # [B, L, H]
    try:
        fwd, log_z = hmm._forward(evidence)
    except ValueError:
        raise ValueError("the observation has probability zero under the prior") from None
    return evidence, fwd, log_z


def hmm_posterior_log_evidence(hmm: HiddenMarkovModel, lik: Tensor) -> Tensor:
    """``log p(y) = log sum_x p(x) prod_i lik[i, x_i]`` ``[B]`` (the forward algorithm)."""
    return _filter(hmm, lik)[2]


def hmm_posterior_marginals(hmm: HiddenMarkovModel, lik: Tensor) -> Tensor:
    """Exact ``p(x_i = v | y)`` ``[B, L, V]`` (float64) for per-position likelihoods ``lik``
    ``[L, V]`` or ``[B, L, V]``, by forward-backward."""
    evidence, fwd, _ = _filter(hmm, lik)
    lik = check_likelihood(lik, hmm.n_states).expand(evidence.shape[0], -1, -1)
    gamma = fwd * backward(hmm.transition, evidence)  # P(y_>i | h_i) normalised per position
    gamma = gamma / gamma.sum(-1, keepdim=True)  # [B, L, H]: P(h_i | y)
    # P(x_i = v | h_i, y_i) = emission[h, v] lik[i, v] / evidence[i, h]
    per_h = gamma / torch.where(evidence > 0, evidence, torch.ones_like(evidence))  # [B, L, H]
    post = (per_h @ hmm.emission) * lik  # [B, L, V]
    return post / post.sum(-1, keepdim=True)


def hmm_posterior_sample(hmm: HiddenMarkovModel, lik: Tensor, n: int,
                         generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact posterior sequences ``[n, L]`` given one observation's ``lik`` ``[L, V]``,
    by forward filtering, backward sampling of the hidden states, then each token from
    ``emission[h_i] * lik[i]``."""
    lik = check_likelihood(lik, hmm.n_states)
    if lik.shape[0] != 1:
        raise ValueError("hmm_posterior_sample takes one observation: lik [L, V] or [1, L, V]")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _, fwd, _ = _filter(hmm, lik)
    fwd, lik = fwd[0], lik[0]  # [L, H], [L, V]
    L, H = fwd.shape
    h = torch.empty(n, L, dtype=torch.long)
    h[:, L - 1] = torch.multinomial(fwd[L - 1], n, replacement=True, generator=generator)
    for i in range(L - 2, -1, -1):
        w = fwd[i][None, :] * hmm.transition[:, h[:, i + 1]].T  # [n, H]: P(h_i | y_<=i) T[h_i, h_{i+1}]
        h[:, i] = torch.multinomial(w, 1, generator=generator)[:, 0]
    token_law = hmm.emission[h] * lik[None]  # [n, L, V]
    flat = token_law.reshape(n * L, -1)
    return torch.multinomial(flat, 1, generator=generator).view(n, L)


def _token_values(values, n_states: int) -> Tensor:
    a = torch.arange(n_states) if values is None else torch.as_tensor(values)
    if a.shape != (n_states,) or a.dtype.is_floating_point or (a < 0).any():
        raise ValueError(f"values must be {n_states} non-negative integers (one per token), got {values!r}")
    return a.long()


def _sum_backward(hmm: HiddenMarkovModel, length: int, y: float, sigma: float, values) -> tuple[Tensor, list]:
    """The token values ``[V]`` and the backward messages of the running-sum chain:
    ``b[i][h, s] = P(y | h_i = h, S_i = s)`` ``[H, S]`` (each up to its own constant), ``S_i`` the
    running sum of values up to and including ``x_i``."""
    if int(length) < 1 or not sigma > 0:
        raise ValueError(f"need length >= 1 and sigma > 0, got {length}, {sigma}")
    a = _token_values(values, hmm.n_states)  # [V]
    L, H, V = int(length), hmm.n_hidden, hmm.n_states
    S = L * int(a.max()) + 1  # running sums 0..S-1
    T, E = hmm.transition, hmm.emission
    sums = torch.arange(S, dtype=torch.float64)
    log_end = -0.5 * ((float(y) - sums) / sigma) ** 2  # [S]
    end = torch.exp(log_end - log_end.max())
    b = [None] * L
    b[L - 1] = end.expand(H, S).clone()
    for i in range(L - 2, -1, -1):
        nxt = sum(E[:, v][:, None] * _shift(b[i + 1], int(a[v])) for v in range(V))  # [H', S]: over x_{i+1}
        b[i] = T @ nxt
        b[i] = b[i] / b[i].max()
    return a, b


def _shift(m: Tensor, k: int) -> Tensor:
    """``m[..., s] -> m[..., s + k]`` (zero beyond the range)."""
    out = torch.zeros_like(m)
    out[..., : m.shape[-1] - k] = m[..., k:]
    return out


def _advance(m: Tensor, k: int) -> Tensor:
    """``m[..., s] -> m[..., s - k]``."""
    out = torch.zeros_like(m)
    out[..., k:] = m[..., : m.shape[-1] - k]
    return out


def hmm_sum_posterior_marginals(hmm: HiddenMarkovModel, length: int, y: float, sigma: float,
                                values=None) -> Tensor:
    """Exact ``p(x_i = v | y)`` ``[L, V]`` for the linear-sum observation
    ``y = sum_i values[x_i] + N(0, sigma^2)`` (``values``: non-negative integers, default the
    token ids). The posterior is not a per-position tilt: forward-backward runs on the
    augmented state ``(h_i, S_i)`` with ``S_i`` the running sum of values, the backward message
    starting from ``N(y; S_L, sigma^2)``."""
    a, b = _sum_backward(hmm, length, y, sigma, values)
    L, H, V, S = int(length), hmm.n_hidden, hmm.n_states, b[0].shape[-1]
    T, E = hmm.transition, hmm.emission
    # forward: pred[h, s] = P(h_i = h, S_{i-1} = s) before emitting x_i
    pred = torch.zeros(H, S, dtype=torch.float64)
    pred[:, 0] = hmm.initial
    out = torch.empty(L, V, dtype=torch.float64)
    for i in range(L):
        joint = torch.stack([(pred * E[:, v][:, None] * _shift(b[i], int(a[v]))).sum() for v in range(V)])
        out[i] = joint / joint.sum()
        f = sum(_advance(pred * E[:, v][:, None], int(a[v])) for v in range(V))  # P(h_i, S_i)
        f = f / f.sum()
        pred = T.T @ f
    return out


def hmm_sum_posterior_sample(hmm: HiddenMarkovModel, length: int, y: float, sigma: float, n: int,
                             values=None, generator: torch.Generator | None = None) -> Tensor:
    """``n`` exact posterior sequences ``[n, L]`` under the linear-sum observation of
    ``hmm_sum_posterior_marginals``: the backward messages of the running-sum chain, then a
    forward pass drawing ``(h_i, x_i)`` jointly from
    ``T[h_{i-1}, h_i] E[h_i, x_i] b_i[h_i, S_{i-1} + values[x_i]]`` (exact joint draws, the
    sum-observation counterpart of FFBS)."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    a, b = _sum_backward(hmm, length, y, sigma, values)
    L, H, V, S = int(length), hmm.n_hidden, hmm.n_states, b[0].shape[-1]
    T, E = hmm.transition, hmm.emission
    n = int(n)
    x = torch.empty(n, L, dtype=torch.long)
    h = torch.zeros(n, dtype=torch.long)
    s = torch.zeros(n, dtype=torch.long)  # running sum before x_i
    for i in range(L):
        prior_h = hmm.initial.expand(n, H) if i == 0 else T[h]  # [n, H]
        cols = (s[:, None] + a[None, :]).clamp_max(S - 1)  # [n, V]; never clamped (S = L max a + 1)
        back = b[i][:, cols].permute(1, 0, 2)  # [n, H, V]
        w = prior_h[:, :, None] * E[None] * back  # [n, H, V]
        k = torch.multinomial(w.reshape(n, H * V), 1, generator=generator)[:, 0]
        h, x[:, i] = k // V, k % V
        s = s + a[x[:, i]]
    return x
