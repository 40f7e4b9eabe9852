"""Restoring corrupted token sequences (text) with a masked-diffusion prior.

A clean sequence ``x`` is observed through a symmetric channel (each token kept with
probability ``1 - eps``, else replaced by one of the ``V - 1`` others uniformly) with some
positions erased (unobserved): ``channel_likelihood`` gives ``p(y_j | x_j = v)`` ``[B, L, V]``.
``restore`` decodes a restoration per row with one of the posterior samplers of this package:

- ``tilt``: one draw of ``LikelihoodTilt`` in random order (``posterior.LikelihoodTilt``);
- ``tilt-greedy``: the tilt decoded greedily, most confident position first (a MAP-like fill);
- ``aps`` / ``aps-reward-free``: Anchored Posterior Sampling (``aps.aps_sample``: quantized
  expectation with the one-hot codebook, i.e. the tilt, and anchored remasking; anchors ranked by
  the guided law, or by the unguided model's law);
- ``smc``: ``posterior_smc`` with ``n_particles`` per row; the restoration is the per-position
  argmax of the weighted particle marginals (the posterior-marginal estimate, which minimises the
  expected character error rate); ``smc+rb``: the same with Rao-Blackwellised marginals
  (``rao_blackwell_marginals``, ``L`` more calls per row);
- ``loo``: each position's argmax of ``p(x_j | y_{-j}) lik_j`` -- the model's conditional given
  the *observed* rest (erased positions masked) as if it were clean, tilted by its own
  observation: one Gibbs conditional from the observation, cheap (``L`` batched calls), but a
  corrupted neighbour misleads it (worse than the input at eps = 0.2 even under an exact
  bigram prior; ``bench/mdm_posterior_text.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .model import as_masked_model

RESTORE_METHODS = ("tilt", "tilt-greedy", "aps", "aps-reward-free", "smc", "smc+rb", "loo")


def channel_likelihood(observed: Tensor, n_tokens: int, eps: float, erased: Tensor | None = None) -> Tensor:
    """``[B, L, V]`` ``p(y_j | x_j = v)`` of a symmetric channel: ``1 - eps`` for ``v = y_j``,
    ``eps / (V - 1)`` otherwise; rows of ones where ``erased`` ``[B, L]`` is true."""
    y = torch.as_tensor(observed).long()
    y = y[None] if y.dim() == 1 else y
    if y.dim() != 2 or (y < 0).any() or (y >= n_tokens).any():
        raise ValueError(f"observed must be [B, L] token ids in [0, {n_tokens}), got shape {tuple(y.shape)}")
    if not 0 <= eps < 1 or n_tokens < 2:
        raise ValueError(f"need 0 <= eps < 1 and n_tokens >= 2, got {eps}, {n_tokens}")
    lik = torch.full((*y.shape, n_tokens), eps / (n_tokens - 1), dtype=torch.float64)
    lik.scatter_(-1, y[..., None], 1.0 - eps)
    if erased is not None:
        erased = torch.as_tensor(erased, dtype=torch.bool).reshape(y.shape)
        lik[erased] = 1.0
    return lik


def corrupt(clean: Tensor, n_tokens: int, eps: float, erase: float = 0.0,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(observed [B, L], erased [B, L])``: ``clean`` through the symmetric channel, then a
    fraction ``erase`` of positions erased (their observed token is meaningless)."""
    clean = torch.as_tensor(clean).long()
    flip = torch.rand(clean.shape, generator=generator) < eps
    other = (clean + torch.randint(1, n_tokens, clean.shape, generator=generator)) % n_tokens
    erased = torch.rand(clean.shape, generator=generator) < erase
    return torch.where(flip, other, clean), erased


@torch.no_grad()
def restore(model, likelihood: Tensor, method: str = "tilt", seed: int = 0, n_particles: int = 16) -> Tensor:
    """A restoration ``[B, L]`` of each row from its likelihood ``[B, L, V]`` (``V`` tokens
    without the mask, mask id last) with the masked model ``model``; see the module docstring."""
    from .aps import aps_sample, channel_codebook
    from .decode import decode
    from .posterior import (LikelihoodTilt, _full_conditional, _log_likelihood, posterior_smc,
                            rao_blackwell_marginals, weighted_marginals)

    if method not in RESTORE_METHODS:
        raise ValueError(f"unknown restore method {method!r}; valid: {', '.join(RESTORE_METHODS)}")
    model = as_masked_model(model)
    lik = torch.as_tensor(likelihood, dtype=torch.float64)
    lik = lik[None] if lik.dim() == 2 else lik
    V = int(model.vocab_size) - 1
    if lik.dim() != 3 or lik.shape[-1] != V or int(model.mask_id) != V:
        raise ValueError(f"likelihood must be [B, L, {V}] for a model whose mask id is last, got "
                         f"{tuple(lik.shape)} (mask id {model.mask_id})")
    B, L = lik.shape[:2]
    if method in ("tilt", "tilt-greedy"):
        greedy = method == "tilt-greedy"
        r = decode(LikelihoodTilt(model, lik), length=L, batch=B, steps=L, seed=seed,
                   policy="low-confidence" if greedy else "random", temperature=0.0 if greedy else 1.0)
        return r.tokens
    if method.startswith("aps"):
        codebook, log_lik = channel_codebook(lik, V)
        return aps_sample(model, codebook, log_lik, B, length=L, steps=L, seed=seed,
                          reward_free=method == "aps-reward-free").tokens
    if method == "loo":
        mask = int(model.mask_id)
        log_lik = _log_likelihood(lik, V + 1, mask)  # [B, L, V+1]
        context = lik.argmax(-1)  # the observed token (the channel's most likely input)
        context = torch.where((lik == lik[..., :1]).all(-1), torch.full_like(context, mask), context)  # erased
        out = torch.empty(B, L, dtype=torch.long)
        for j in range(L):
            out[:, j] = _full_conditional(model, context, j, log_lik[:, j]).argmax(-1)
        return out
    out = torch.empty(B, L, dtype=torch.long)
    for b in range(B):
        s = posterior_smc(model, lik[b], int(n_particles), seed=seed + b)
        if method == "smc+rb":
            out[b] = rao_blackwell_marginals(model, s["tokens"], lik[b], s["log_weights"]).argmax(-1)
        else:
            out[b] = weighted_marginals(s["tokens"], V, s["log_weights"]).argmax(-1)
    return out


def character_error_rate(restored: Tensor, clean: Tensor) -> float:
    """The fraction of positions where ``restored`` differs from ``clean`` (same shape;
    substitutions only, the channel neither inserts nor deletes)."""
    if restored.shape != clean.shape:
        raise ValueError(f"shapes differ: {tuple(restored.shape)} vs {tuple(clean.shape)}")
    return float((restored != clean).double().mean())
