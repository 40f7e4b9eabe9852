"""Remasking of already-decoded tokens.

Running-confidence remasking (RCR; He et al. 2025, "MDPO: Overcoming the training-inference
divide of masked diffusion language models", arXiv:2508.13148, sec. 5): instead of freezing a
token once it is committed with its single-step confidence, every position of the block keeps a
running confidence for the token it holds: the highest confidence that very token reached over
the steps it was proposed there while the position was masked. A new proposal of a different
token starts the running value afresh at that token's confidence (the MDPO reference stores the
confidence of the token actually committed), so a position is never ranked by the confidence of
a token it does not commit. After each step the schedule says how many tokens of the block should
be decoded; those are the ones with the highest running confidence, so a decoded token whose
running confidence is overtaken by a still-masked position's is masked again and decoded later
with more context. Decoded tokens keep the running confidence they were committed with.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sampling import check_score, token_scores
from .unmasking import Selection, StepContext, UnmaskPolicy, top_k_mask


class RunningConfidenceRemasking(UnmaskPolicy):
    """RCR on the schedule's counts; keeps its running confidences ``[B, L]`` between steps
    (call ``reset`` before a new decode; ``decode`` does)."""

    name = "rcr"

    def __init__(self, score: str = "confidence"):
        self.score = check_score(score)
        self.running: Tensor | None = None  # [B, L] running confidence of the held token
        self.held: Tensor | None = None  # [B, L] the token that confidence belongs to (-1: none)

    def reset(self) -> None:
        self.running = None
        self.held = None

    def select(self, ctx: StepContext) -> Selection:
        s = token_scores(self.score, ctx.probs, ctx.x0)  # [B, L], the confidence of this step's proposal
        if self.running is None or self.running.shape != s.shape:
            self.running = torch.zeros_like(s)
            self.held = torch.full_like(ctx.x0, -1)
        masked = ctx.candidates
        # a masked position would commit x0: its running value is the running maximum of x0's
        # confidence while x0 keeps being proposed, and starts afresh when the proposal changes
        same = self.held == ctx.x0
        self.running = torch.where(masked, torch.where(same, torch.maximum(self.running, s), s), self.running)
        self.held = torch.where(masked, ctx.x0, self.held)
        pool = masked | ctx.decoded  # everything in the block that is not given
        keep = top_k_mask(self.running, pool, ctx.decoded.sum(-1) + ctx.k)
        remask = ctx.decoded & ~keep
        return Selection(keep & masked, remask)
