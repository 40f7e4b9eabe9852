"""Dependency-aware unmasking: commit together only positions that the model itself says are
(nearly) conditionally independent (our own rule, after issue 18's idea: "choose positions
whose predicted joint is close to the product of marginals, e.g. by a mutual-information
estimate from the model's own conditionals").

Drawing several masked positions at once from their marginals ``p(x_j | x_U)`` is exact only
when they are conditionally independent given the unmasked tokens ``x_U``. Each step:

1. a candidate set ``C``: the next ``k_max`` masked positions of the block in a uniformly
   random order (the order of ``RandomOrder``);
2. proposals ``x~_j ~ p(x_j | x_U)`` for ``j`` in ``C`` (the loop's own draws ``x0``);
3. ONE extra batched model call on ``|C|`` canvases per sequence: for each ``j``, ``C \\ {j}``
   filled with the proposals and ``j`` masked, giving the leave-one-out conditional
   ``q_j = p(x_j | x_U, x~_{C\\j})``;
4. ``D_j = KL(q_j || p_j)``. Since ``E_{x_{C\\j}}[KL(p(x_j | x_U, x_{C\\j}) || p(x_j | x_U))]
   = I(x_j; x_{C\\j} | x_U)`` (the conditional mutual information) when ``x_{C\\j}`` is drawn
   from the joint, ``D_j`` is a one-sample estimate of the dependence of ``x_j`` on the rest
   of ``C`` (here ``x~_{C\\j}`` comes from the product of marginals, so it is the same
   divergence averaged under that law: 0 for every draw when ``x_j`` is independent of
   ``x_{C\\j}``, positive wherever the model's conditional moves);
5. commit the first candidate and every other ``j`` with ``D_j <= tau``, each with a fresh draw
   from its marginal (``draw="fresh"``, the default: the values are then independent of the
   proposals the choice of positions looked at), its proposal ``x~_j`` (``draw="proposal"``) or a
   draw from ``q_j`` (``draw="conditional"``; it conditions on proposals that may not be kept).

With ``k_max = 1`` no extra call is made and the rule is the exact one-token-per-call
random-order sampler (the same tokens as ``policy="random"`` with the same seed).

Costs: the extra calls are real model calls, counted in the decode's NFE
(``DecodeResult.nfe``) and apart in ``DecodeResult.policy_calls`` / ``policy_rows`` (canvases
evaluated by them).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .sampling import propose_tokens
from .unmasking import Selection, StepContext, UnmaskPolicy, top_k_mask

#: the committed values: a fresh draw from the marginal, independent of the proposals the choice
#: of positions looked at ("fresh"); the proposal itself ("proposal"); a draw from the
#: leave-one-out conditional ("conditional")
DRAWS = ("fresh", "proposal", "conditional")


def leave_one_out_canvases(tokens: Tensor, x0: Tensor, chosen: Tensor, mask_id: int):
    """For every chosen position ``(b, j)`` (``chosen`` ``[B, L]`` bool), the canvas ``tokens[b]``
    with the other chosen positions of row ``b`` filled from ``x0`` and ``j`` left masked.
    Returns ``(canvases [N, L], rows [N], cols [N])`` with ``N = chosen.sum()``."""
    rows, cols = chosen.nonzero(as_tuple=True)  # [N], [N]
    filled = torch.where(chosen, x0, tokens)  # [B, L]
    canvases = filled[rows].clone()  # [N, L]
    canvases[torch.arange(len(rows)), cols] = mask_id
    return canvases, rows, cols


def kl_divergence(logq: Tensor, logp: Tensor) -> Tensor:
    """``KL(q || p)`` over the last axis from log-probabilities (``0 log 0 = 0``; ``+inf`` where
    ``q`` puts mass on a value ``p`` forbids)."""
    q = logq.exp()
    diff = torch.where(q > 0, logq - logp, torch.zeros_like(logq))
    return (q * diff).sum(-1).clamp_min(0.0)


class DependencyAware(UnmaskPolicy):
    """Commit the candidates whose leave-one-out divergence ``D_j`` is at most ``tau`` among the
    next ``k_max`` positions of a random order (see the module docstring). Needs the model:
    ``decode`` passes ``ctx.tokens``, ``ctx.evaluate`` (canvases ``[N, L]`` and their rows
    ``[N]`` -> filtered log-probabilities ``[N, L, V]``), ``ctx.rng`` and ``ctx.mask_id``.

    After each step ``divergence`` ``[B, L]`` holds ``D_j`` at the candidates (NaN elsewhere)."""

    name = "dependency"
    needs_uniform = True
    needs_model = True

    def __init__(self, tau: float = 0.01, k_max: int = 8, draw: str = "fresh"):
        if not tau >= 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        if int(k_max) != k_max or k_max < 1:
            raise ValueError(f"k_max must be an integer >= 1, got {k_max}")
        if draw not in DRAWS:
            raise ValueError(f"unknown draw {draw!r}; valid: {', '.join(DRAWS)}")
        self.tau, self.k_max, self.draw = float(tau), int(k_max), draw
        self.reset()

    def reset(self) -> None:
        self.calls, self.rows = 0, 0
        self.divergence: Tensor | None = None

    def select(self, ctx: StepContext) -> Selection:
        B, L = ctx.candidates.shape
        k = torch.full((B,), self.k_max, dtype=torch.long, device=ctx.candidates.device)
        chosen = top_k_mask(ctx.uniform, ctx.candidates, k)  # [B, L]: the candidate set C
        first = top_k_mask(ctx.uniform, ctx.candidates, torch.ones_like(k))  # [B, L]
        self.divergence = torch.full((B, L), float("nan"), dtype=torch.float64)
        several = chosen & (chosen.sum(-1, keepdim=True) > 1)  # rows where C holds 2+ positions
        if not several.any():
            return Selection(first)
        if ctx.evaluate is None or ctx.tokens is None:
            raise ValueError("the dependency policy needs the model: use it through mdm.decode")
        canvases, rows, cols = leave_one_out_canvases(ctx.tokens, ctx.x0, several, ctx.mask_id)
        logq = ctx.evaluate(canvases, rows)[torch.arange(len(rows)), cols]  # [N, V]
        self.calls += 1
        self.rows += len(rows)
        logp = ctx.probs[rows, cols].log()  # [N, V]
        d = kl_divergence(logq.double(), logp.double())  # [N]
        if torch.isnan(d).any():
            raise ValueError("the model returned NaN in the leave-one-out call")
        self.divergence[rows, cols] = d
        commit = first | (several & (self.divergence <= self.tau))
        values = None
        if self.draw == "fresh":  # new Gumbel noise: the values do not depend on the choice of positions
            values = propose_tokens(ctx.probs.log(), ctx.rng, greedy=ctx.greedy)  # [B, L]
        elif self.draw == "conditional":
            loo = torch.zeros(B, L, logq.shape[-1], dtype=torch.float64)  # [B, L, V]
            loo[rows, cols] = logq.double()
            fresh = propose_tokens(loo, ctx.rng, greedy=ctx.greedy)  # [B, L]
            values = torch.where(several, fresh, ctx.x0)
        return Selection(commit, values=values)
