"""Turning logits into token proposals: temperature, top-k, top-p, per-row Gumbel-max
sampling, and the confidence scores that unmasking policies rank by."""
from __future__ import annotations

import torch
from torch import Tensor

from ..registry import Registry
from ..rng import SampleRNG


def filter_logits(logits: Tensor, mask_id: int, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Log-probabilities ``[B, L, V]`` (float64) after forbidding the mask token, dividing by
    ``temperature`` (0 means greedy and keeps the untempered law), keeping the ``top_k``
    largest and the nucleus of mass ``top_p`` (Holtzman et al. 2020)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if torch.isnan(logits).any():
        raise ValueError("the model returned NaN logits")
    x = logits.to(torch.float64, copy=True)  # one copy, never the caller's tensor
    x[..., mask_id] = -torch.inf
    if temperature > 0 and temperature != 1:
        x /= temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = x.topk(min(top_k, x.shape[-1]), dim=-1).values[..., -1:]  # [B, L, 1]
        x = x.masked_fill(x < kth, -torch.inf)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # mass before this token already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, -torch.inf)
    return x.log_softmax(-1)


def propose_tokens(logp: Tensor, rng: SampleRNG, greedy: bool) -> Tensor:
    """One token per position ``[B, L]``: argmax if ``greedy``, else Gumbel-max with row ``b``'s
    uniforms from its own stream (float64, as LLaDA recommends for masked models)."""
    if greedy:
        return logp.argmax(-1)
    u = rng.rand(logp.shape[1:], dtype=torch.float64, device=logp.device)  # [B, L, V]
    gumbel = -torch.log(-torch.log(u.clamp(1e-300, 1 - 1e-16)))
    return (logp + gumbel).argmax(-1)


def _confidence(probs: Tensor, x0: Tensor) -> Tensor:
    return probs.gather(-1, x0[..., None])[..., 0]


def _max(probs: Tensor, x0: Tensor) -> Tensor:
    return probs.max(-1).values


def _margin(probs: Tensor, x0: Tensor) -> Tensor:
    top2 = probs.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def _entropy(probs: Tensor, x0: Tensor) -> Tensor:
    return torch.special.xlogy(probs, probs).sum(-1)


_SCORE_FUNCTIONS = {"confidence": _confidence, "max": _max, "margin": _margin, "entropy": _entropy}
#: score name -> ``fn(probs [B, L, V], x0 [B, L]) -> [B, L]``
SCORE_REGISTRY = Registry("score", _SCORE_FUNCTIONS)
SCORES = list(_SCORE_FUNCTIONS)  # in this order (the CLI's --score choices)


def check_score(name: str) -> str:
    """``name`` if it is a registered score, else ValueError naming the valid ones."""
    SCORE_REGISTRY.factory(name)
    return name


def token_scores(name: str, probs: Tensor, x0: Tensor) -> Tensor:
    """Per-position score ``[B, L]`` (higher = decode sooner) from ``probs`` ``[B, L, V]``:

    - ``confidence``: probability of the proposed token (LLaDA low-confidence remasking);
    - ``max``: largest probability (does not depend on the draw);
    - ``margin``: top-1 minus top-2 probability (Kim et al. 2025, "Train for the worst,
      plan for the best");
    - ``entropy``: minus the entropy of the position's law (Ben-Hamu et al. 2025; Dream).
    """
    return SCORE_REGISTRY.factory(name)(probs, x0)
