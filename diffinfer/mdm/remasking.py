"""Remasking of already-decoded tokens.

Running-confidence remasking (RCR; He et al. 2025, "MDPO: Overcoming the training-inference
divide of masked diffusion language models", arXiv:2508.13148, sec. 5): instead of freezing a
token once it is committed with its single-step confidence, every position of the block keeps a
running confidence (the highest confidence its proposals reached while it was masked). After
each step the schedule says how many tokens of the block should be decoded; those are the ones
with the highest running confidence, so a decoded token whose running confidence is overtaken by
a still-masked position's is masked again and decoded later with more context.
"""
from __future__ import annotations

import torch

from .sampling import check_score, token_scores
from .unmasking import Selection, StepContext, UnmaskPolicy, top_k_mask

Tensor = torch.Tensor


class RunningConfidenceRemasking(UnmaskPolicy):
    """RCR on the schedule's counts; keeps its running confidences ``[B, L]`` between steps
    (call ``reset`` before a new decode; ``decode`` does)."""

    name = "rcr"

    def __init__(self, score: str = "confidence"):
        self.score = check_score(score)
        self.running: Tensor | None = None

    def reset(self) -> None:
        self.running = None

    def select(self, ctx: StepContext) -> Selection:
        s = token_scores(self.score, ctx.probs, ctx.x0)  # [B, L]
        if self.running is None or self.running.shape != s.shape:
            self.running = torch.zeros_like(s)
        masked = ctx.candidates
        self.running = torch.where(masked, torch.maximum(self.running, s), self.running)
        pool = masked | ctx.decoded  # everything in the block that is not given
        keep = top_k_mask(self.running, pool, ctx.decoded.sum(-1) + ctx.k)
        remask = ctx.decoded & ~keep
        self.running = self.running.masked_fill(remask, 0.0)
        return Selection(keep & masked, remask)
