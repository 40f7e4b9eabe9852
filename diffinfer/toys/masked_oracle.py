"""The masked-model protocol shared by the exact discrete oracles (``MarkovChain``,
``HiddenMarkovModel``): tokens over ``V`` symbols plus ``mask_id = V``, exact conditionals
turned into logits (see docs/architecture.md, "the discrete model protocol")."""
from __future__ import annotations

import torch
from torch import Tensor


class MaskedOracle:
    """Subclasses set ``n_states`` and ``mask_id`` and implement ``conditionals``."""

    takes_time = False
    shift_logits = False
    supports_kv_cache = False
    n_states: int
    mask_id: int

    def conditionals(self, tokens: Tensor) -> Tensor:
        """Exact ``P(x_i = v | unmasked tokens)``, ``[B, L, V]`` float64."""
        raise NotImplementedError

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point:
            raise ValueError("tokens must be integers")
        if ((tokens < 0) | (tokens > self.mask_id)).any():
            raise ValueError(f"tokens must lie in [0, {self.mask_id}] (mask_id = {self.mask_id})")
        return tokens.long()

    def logits(self, tokens: Tensor) -> Tensor:
        """Log conditionals over the ``V + 1`` tokens, ``[B, L, V+1]``; the mask gets ``-inf``."""
        p = self.conditionals(tokens)
        mask_col = torch.zeros(*p.shape[:2], 1, dtype=p.dtype)
        return torch.log(torch.cat([p, mask_col], dim=-1))

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.logits(tokens)
