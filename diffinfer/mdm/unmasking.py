"""Unmasking policies: which masked positions to commit at a step.

Each policy sees a ``StepContext`` and returns a ``Selection`` (positions to commit and,
for remasking policies, decoded positions to mask again). Policies that follow a schedule
use ``ctx.k`` ``[B]``, each row's count this step from the schedule; the others decide the
number themselves and always commit at least one candidate per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .sampling import check_score, token_scores


@dataclass
class StepContext:
    """``probs`` ``[B, L, V]``: the filtered law; ``x0`` ``[B, L]``: proposed tokens;
    ``candidates`` ``[B, L]``: masked positions in the current block; ``k`` ``[B]``: the
    schedule's count this step; ``reveal_p`` ``[B]``: the ancestral reveal probability;
    ``uniform`` ``[B, L]``: per-row uniforms; ``decoded`` ``[B, L]``: positions decoded (not
    given) in the current block; ``block_start`` ``[B]``: first position of each row's block.

    For policies with ``needs_model`` (``dependency``, ``speculative``) the loop also passes ``tokens`` ``[B, L]``
    (the canvas before the step), ``evaluate(canvases [N, L], rows [N]) -> [N, L, V]`` (the
    filtered log-probabilities of one extra batched model call, counted in the NFE), the
    decode's ``rng``, ``mask_id`` and ``greedy`` (temperature 0)."""

    probs: Tensor
    x0: Tensor
    candidates: Tensor
    k: Tensor | None = None
    reveal_p: Tensor | None = None
    uniform: Tensor | None = None
    decoded: Tensor | None = None
    block_start: Tensor | None = None
    tokens: Tensor | None = None
    evaluate: Callable[[Tensor, Tensor], Tensor] | None = None
    rng: object = None
    mask_id: int | None = None
    greedy: bool = False


@dataclass
class Selection:
    commit: Tensor  # [B, L] bool
    remask: Tensor | None = None  # [B, L] bool
    values: Tensor | None = None  # [B, L] long: tokens to commit instead of the loop's x0
    # [B, L, V] filtered log-probabilities the next step uses instead of calling the model (the
    # speculative policy's verified canvas; its own correction keeps the law exact)
    draft: Tensor | None = None


def top_k_mask(score: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """The ``k[b]`` highest-scoring candidates of each row ``[B, L]`` (ties: lowest index)."""
    s = score.masked_fill(~candidates, -torch.inf)
    order = s.argsort(dim=-1, descending=True, stable=True)
    rank = order.argsort(dim=-1)  # [B, L]
    return (rank < k[:, None]) & candidates


def at_least_one(commit: Tensor, score: Tensor, candidates: Tensor) -> Tensor:
    """Add each row's best candidate where ``commit`` chose none."""
    best = top_k_mask(score, candidates, torch.ones(len(score), dtype=torch.long, device=score.device))
    empty = ~commit.any(-1, keepdim=True)
    return commit | (best & empty)


class UnmaskPolicy:
    name = "base"
    needs_uniform = False
    needs_model = False  # the policy makes its own model calls (ctx.evaluate; counted in the NFE)

    def reset(self) -> None:
        """Forget any state kept from an earlier decode (``decode`` calls it first)."""

    def select(self, ctx: StepContext) -> Selection:
        raise NotImplementedError

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({opts})"


class RandomOrder(UnmaskPolicy):
    """``k`` positions uniformly at random per step: with one token per step and exact
    conditionals this samples the data law exactly (any-order autoregression; Hoogeboom et
    al. 2022, Ou et al. 2024 RADD)."""

    name = "random"
    needs_uniform = True

    def select(self, ctx):
        return Selection(top_k_mask(ctx.uniform, ctx.candidates, ctx.k))


class Ancestral(UnmaskPolicy):
    """MDLM / RADD ancestral sampler (Sahoo et al. 2024, eq. 7; Ou et al. 2024): every masked
    position is revealed independently with probability ``(alpha_s - alpha_t) / (1 - alpha_t)``,
    so the number per step is random and may be zero."""

    name = "ancestral"
    needs_uniform = True

    def select(self, ctx):
        return Selection(ctx.candidates & (ctx.uniform < ctx.reveal_p[:, None]))


class TopKScore(UnmaskPolicy):
    """The ``k`` candidates with the highest score per step: ``confidence`` is LLaDA's
    low-confidence remasking (Nie et al. 2025, Alg. 5); ``margin`` and ``entropy`` rank
    by the top-two margin and by the entropy of each position's law."""

    def __init__(self, score: str = "confidence"):
        self.score = check_score(score)
        self.name = {"confidence": "low-confidence"}.get(score, score)

    def select(self, ctx):
        return Selection(top_k_mask(token_scores(self.score, ctx.probs, ctx.x0), ctx.candidates, ctx.k))


class Threshold(UnmaskPolicy):
    """Fast-dLLM confidence-aware parallel decoding (Wu et al. 2025, sec. 3.3): commit every
    candidate whose score exceeds ``threshold``, and the best one if none does."""

    name = "threshold"

    def __init__(self, threshold: float = 0.9, score: str = "confidence"):
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.threshold, self.score = threshold, check_score(score)

    def select(self, ctx):
        s = token_scores(self.score, ctx.probs, ctx.x0)
        return Selection(at_least_one(ctx.candidates & (s > self.threshold), s, ctx.candidates))


class Factor(UnmaskPolicy):
    """Fast-dLLM factor rule (Wu et al. 2025, sec. 3.3): sort confidences ``c_(1) >= c_(2) >= ...``
    and commit the largest ``n`` with ``(n + 1) (1 - c_(n)) < factor`` (at least one)."""

    name = "factor"

    def __init__(self, factor: float = 1.0, score: str = "confidence"):
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.factor, self.score = factor, score

    def select(self, ctx):
        s = token_scores(self.score, ctx.probs, ctx.x0).masked_fill(~ctx.candidates, -torch.inf)
        c = s.sort(dim=-1, descending=True).values  # [B, L]
        n = torch.arange(1, c.shape[1] + 1, device=c.device, dtype=c.dtype)
        ok = (n + 1) * (1 - c) < self.factor  # monotone in n: both factors grow
        count = ok.sum(-1).clamp_min(1)  # [B]
        return Selection(top_k_mask(s, ctx.candidates, count))


class Confident(UnmaskPolicy):
    """Dimple's confident decoding (Yu et al. 2025, arXiv:2505.16990): commit every candidate above
    ``threshold``, but never fewer than the schedule's ``k`` for this step, so the number of
    steps is at most the scheduled one."""

    name = "confident"

    def __init__(self, threshold: float = 0.9, score: str = "confidence"):
        self.threshold, self.score = threshold, score

    def select(self, ctx):
        s = token_scores(self.score, ctx.probs, ctx.x0)
        scheduled = top_k_mask(s, ctx.candidates, ctx.k)
        return Selection(scheduled | (ctx.candidates & (s > self.threshold)))


def dilation_level(offset: Tensor) -> Tensor:
    """Level of block offsets ``j >= 0`` in the coarse-to-fine dilated order: 0 for ``j = 0``,
    then ``K - v(j)`` with ``v(j)`` the number of trailing zero bits of ``j`` (``K = 32``), so
    offset 16 comes before 8 and 24, which come before 4, 12, 20, 28, and so on."""
    j = offset.long()
    low_bit = j & -j  # largest power of two dividing j (0 for j = 0)
    tz = torch.log2(low_bit.clamp_min(1).double()).round().long()
    return torch.where(j == 0, torch.zeros_like(j), 32 - tz)


class Dilated(UnmaskPolicy):
    """Dilated unmasking (DUS; Luxembourg et al. 2025, "Plan for speed: dilated scheduling for
    masked diffusion language models"): a planner-free order that commits, per step, one whole
    dilation level of the block, coarse to fine (offset 0; then the middle; then the quarters;
    ...), so tokens decoded together are never adjacent and ``1 + ceil(log2(block))`` steps fill
    a block. For a first-order Markov chain every level is separated by decoded tokens, so the
    tokens of a step are conditionally independent and the sampler is exact."""

    name = "dilated"

    def select(self, ctx):
        B, L = ctx.candidates.shape
        pos = torch.arange(L, device=ctx.candidates.device)[None, :]
        level = dilation_level((pos - ctx.block_start[:, None]).clamp_min(0))  # [B, L]
        level = level.masked_fill(~ctx.candidates, 1 << 30)
        lowest = level.min(-1, keepdim=True).values
        return Selection(ctx.candidates & (level == lowest))
