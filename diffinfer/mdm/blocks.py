"""Block policies: the window of the canvas that is being decoded.

Each row decodes ``[start, end)`` until it holds no mask, then moves to the next block.
"""
from __future__ import annotations

import torch
from torch import Tensor


class BlockPolicy:
    name = "base"

    def check(self, gen_lengths: Tensor) -> None:
        """Raise ``ValueError`` if the policy cannot tile generation regions of these lengths."""

    def next_end(self, start: Tensor, gen_end: Tensor, probs: Tensor | None) -> Tensor:
        """End ``[B]`` of the block that begins at ``start`` ``[B]``; ``probs`` ``[B, L, V]``
        is the current step's law (used by adaptive policies)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class WholeCanvas(BlockPolicy):
    """One block: the whole generation region (MDLM, RADD, LLaDA with one block)."""

    name = "whole"

    def next_end(self, start, gen_end, probs):
        return gen_end.clone()


class FixedBlocks(BlockPolicy):
    """Semi-autoregressive blocks of ``size`` tokens, left to right (LLaDA, Nie et al. 2025,
    sec. 2.4; SDAR, Cheng et al. 2025; block diffusion, Arriola et al. 2025)."""

    name = "fixed"

    def __init__(self, size: int):
        if int(size) < 1:
            raise ValueError(f"block size must be >= 1, got {size}")
        self.size = int(size)

    def check(self, gen_lengths):
        bad = [int(n) for n in gen_lengths if int(n) % self.size]
        if bad:
            raise ValueError(f"block size {self.size} does not divide the generation length "
                             f"{bad[0]}; pick a divisor of it")

    def next_end(self, start, gen_end, probs):
        return torch.minimum(start + self.size, gen_end)


class AdaptiveBlocks(BlockPolicy):
    """AdaBlock-dLLM (Lu et al. 2025, "AdaBlock-dLLM: semantic-aware diffusion LLM inference
    via adaptive block size", arXiv:2509.26432): at the start of a block, look at the next
    ``window`` positions; if a delimiter token (``delimiters``, e.g. newline) is predicted
    somewhere there with probability at least ``threshold``, end the block just after the most
    confident such position; otherwise use ``default`` tokens."""

    name = "adaptive"

    def __init__(self, delimiters, default: int = 32, window: int = 64, min_size: int = 4,
                 threshold: float = 0.3):
        self.delimiters = [int(d) for d in delimiters]
        if not self.delimiters:
            raise ValueError("adaptive blocks need at least one delimiter token id")
        if not 1 <= min_size <= default <= window:
            raise ValueError(f"need 1 <= min_size <= default <= window, got {min_size}, {default}, {window}")
        self.default, self.window, self.min_size, self.threshold = int(default), int(window), int(min_size), threshold

    def next_end(self, start, gen_end, probs):
        B, L, _ = probs.shape
        delim = probs[..., self.delimiters].max(-1).values  # [B, L]
        pos = torch.arange(L, device=probs.device)[None, :]
        lo = start[:, None] + self.min_size - 1
        in_window = (pos >= lo) & (pos < start[:, None] + self.window) & (pos < gen_end[:, None])
        d = delim.masked_fill(~in_window, -1.0)
        best, where = d.max(-1)  # [B]
        end = torch.where(best >= self.threshold, where + 1, start + self.default)
        return torch.minimum(end, gen_end)


def get_block_policy(block, delimiters=None) -> BlockPolicy:
    """``None``/``"whole"``: one block; an int: fixed blocks; ``"adaptive"``: AdaBlock (needs
    ``delimiters``); or a ``BlockPolicy``."""
    if isinstance(block, BlockPolicy):
        return block
    if block is None or block == "whole":
        return WholeCanvas()
    if block == "adaptive":
        if delimiters is None:
            raise ValueError("block='adaptive' needs delimiter token ids (delimiters=[...])")
        return AdaptiveBlocks(delimiters)
    if isinstance(block, str) and block.isdigit():
        block = int(block)
    if isinstance(block, int) and not isinstance(block, bool):
        return FixedBlocks(block)
    raise ValueError(f"unknown block policy {block!r}; give None, 'whole', 'adaptive', an int, or a BlockPolicy")
