"""Conditioning a masked-diffusion model on a per-row input (an image, a label, a feature vector).

A conditional network answers ``fn(tokens [b, L], cond [b, ...]) -> logits [b, L, V]``.
``Conditioned(fn, cond, mask_id, vocab_size)`` binds one condition per row of a decode batch
and is a plain masked model for ``decode``: it declares ``takes_rows``, so the decode loop
tells it which rows of the batch each call holds (rows that finished early are not
evaluated, and the ``reuse`` cache evaluates only the rows whose canvas changed) and it
feeds the network exactly those rows' conditions. This is how LaDiC-style captioning
(Wang et al. 2024, "LaDiC: Are diffusion models really inferior to autoregressive
counterparts for image-to-text generation?") runs on the one decode loop: the caption is the
canvas, the image the bound condition.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .model import MaskedModel


class Conditioned(MaskedModel):
    """``fn`` with ``cond`` ``[B, ...]`` bound row by row (a condition with ``B = 1`` serves every
    row). ``logits(tokens [b, L], rows=None)``: ``rows`` ``[b]`` are the decode-batch rows of
    ``tokens`` (``None``: all ``B`` rows, in order)."""

    takes_rows = True

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], cond: Tensor, mask_id: int, vocab_size: int):
        super().__init__(mask_id, vocab_size)
        cond = torch.as_tensor(cond)
        if cond.dim() < 1 or cond.shape[0] < 1:
            raise ValueError(f"cond must be [B, ...] with B >= 1, got shape {tuple(cond.shape)}")
        if cond.is_floating_point() and not bool(torch.isfinite(cond).all()):
            raise ValueError("cond contains NaN or Inf")
        self.fn, self.cond = fn, cond

    @property
    def batch(self) -> int:
        return self.cond.shape[0]

    def conditions(self, n: int, rows: Tensor | None) -> Tensor:
        """The conditions ``[n, ...]`` of canvases ``rows`` (all rows when ``None``)."""
        if rows is None:
            if self.batch == 1:
                return self.cond.expand(n, *self.cond.shape[1:])
            if n != self.batch:
                raise ValueError(f"{n} canvases for {self.batch} bound conditions; decode with "
                                 f"batch={self.batch} (or bind one condition per canvas)")
            return self.cond
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        if len(rows) != n:
            raise ValueError(f"rows holds {len(rows)} indices for {n} canvases")
        if self.batch == 1:
            return self.cond.expand(n, *self.cond.shape[1:])
        if ((rows < 0) | (rows >= self.batch)).any():
            raise ValueError(f"row indices must lie in [0, {self.batch}) (the bound conditions)")
        return self.cond[rows]

    @torch.no_grad()
    def raw_logits(self, tokens: Tensor, rows: Tensor | None = None) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        out = self.fn(tokens, self.conditions(tokens.shape[0], rows))
        if out.shape[:2] != tokens.shape or out.shape[-1] != self.vocab_size:
            raise ValueError(f"the conditional network returned logits of shape {tuple(out.shape)} for "
                             f"tokens {tuple(tokens.shape)} and a vocabulary of {self.vocab_size}")
        if torch.isnan(out).any():
            raise ValueError("the conditional network returned NaN logits")
        return out

    def select(self, rows: Tensor) -> "Conditioned":
        """The same model bound to the conditions of ``rows`` only (batch first, as solver state)."""
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        return Conditioned(self.fn, self.conditions(len(rows), rows), self.mask_id, self.vocab_size)
