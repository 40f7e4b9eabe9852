"""The history of one ``decode``: every canvas and the step at which each position was committed.

``DecodeTrace`` is a ``decode`` callback (``decode(..., callback=trace)``); it changes
nothing in the loop. After the decode:

- ``canvases``: ``[steps, B, L]``, the canvas after each step (the mask id where masked);
- ``commit_step``: ``[B, L]``, the step whose commit put the position's final token there,
  ``-1`` where the loop never committed one (prompt, padding, positions an end-of-sequence
  token filled). A position that a remasking policy (``rcr``) masks again loses its step
  until it is committed again, so ``commit_step`` is always the step of the token the
  canvas holds: the order in which the text was written.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class DecodeTrace:
    """A ``decode`` callback recording the canvas after each step and each position's commit step.

    ``mask_id``: the model's mask token (to notice remasked positions); ``then``: another
    callback to call after recording (e.g. a progress bar); ``keep_canvases=False`` keeps
    only ``commit_step`` (memory ``B x L`` instead of ``steps x B x L``)."""

    def __init__(self, mask_id: int, then: Callable | None = None, keep_canvases: bool = True):
        self.mask_id = int(mask_id)
        self.then = then
        self.keep_canvases = bool(keep_canvases)
        self._canvases: list[Tensor] = []
        self._commit_step: Tensor | None = None
        self.steps = 0

    def __call__(self, step: int, tokens: Tensor, info: dict) -> None:
        if self._commit_step is None:
            self._commit_step = torch.full(tokens.shape, -1, dtype=torch.long)  # [B, L]
        commit = info["commit"]  # [B, L] bool
        self._commit_step[commit] = int(step)
        self._commit_step[tokens == self.mask_id] = -1  # remasked: its earlier commit is gone
        if self.keep_canvases:
            self._canvases.append(tokens.clone())
        self.steps = int(step) + 1
        if self.then is not None:
            self.then(step, tokens, info)

    @property
    def commit_step(self) -> Tensor:
        """``[B, L]`` step of each position's commit (``-1``: never committed by the loop)."""
        if self._commit_step is None:
            raise ValueError("the trace is empty: pass it to decode(..., callback=trace) first")
        return self._commit_step

    @property
    def canvases(self) -> Tensor:
        """``[steps, B, L]`` the canvas after each step."""
        if not self.keep_canvases:
            raise ValueError("this trace was made with keep_canvases=False")
        if not self._canvases:
            raise ValueError("the trace is empty: pass it to decode(..., callback=trace) first")
        return torch.stack(self._canvases)


__all__ = ["DecodeTrace"]
