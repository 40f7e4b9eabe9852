"""The autoregressive view of an exact masked oracle: its next-token conditionals.

``CausalOracle(oracle)`` answers the causal-model protocol (``logits(tokens [N, n]) ->
[N, n, V+1]`` with ``logits[:, i] = log P(x_{i+1} | x_<=i)``, the convention of
``scaling.text.next_token_logp`` and ``zoo``'s ``shakespeare-ar``) for a ``MarkovChain`` or a
``HiddenMarkovModel``: position ``i``'s law is the oracle's exact conditional at ``i + 1``
given the canvas with everything after ``i`` masked (forward-backward sums the future out).
``initial`` is ``log P(x_0)``. It is the exact AR model of the oracle's joint, so an energy
built on it (``mdm.ar_prefix_energy``) can be checked against the oracle's ``log_marginal``.
"""
from __future__ import annotations

import torch
from torch import Tensor


class CausalOracle:
    """Next-token log-conditionals of ``oracle`` (a ``toys.MaskedOracle``); ``mask_id`` and
    ``vocab_size`` are the oracle's (``V + 1`` tokens, the mask never predicted)."""

    causal = True

    def __init__(self, oracle):
        if not hasattr(oracle, "conditionals") or not hasattr(oracle, "mask_id"):
            raise TypeError(f"oracle must be a toys masked oracle (MarkovChain, HiddenMarkovModel), "
                            f"got {type(oracle).__name__}")
        self.oracle, self.mask_id = oracle, oracle.mask_id
        self.vocab_size = oracle.mask_id + 1

    @property
    def initial(self) -> Tensor:
        """``log P(x_0 = v)`` ``[V]``."""
        return self.oracle.conditionals(torch.full((1, 1), self.mask_id))[0, 0].log()

    def logits(self, tokens: Tensor) -> Tensor:
        """``[N, n, V+1]``: position ``i`` holds ``log P(x_{i+1} = v | x_0..x_i)`` (``-inf`` for
        the mask) for ``tokens`` ``[N, n]`` (a mask among ``x_0..x_i`` is summed out)."""
        tokens = torch.as_tensor(tokens).long()
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [N, n], got shape {tuple(tokens.shape)}")
        N, n = tokens.shape
        V = self.mask_id
        out = torch.full((N, n, V + 1), -torch.inf, dtype=torch.float64)
        for i in range(n):
            canvas = torch.full((N, n + 1), self.mask_id, dtype=torch.long)
            canvas[:, : i + 1] = tokens[:, : i + 1]
            out[:, i, :V] = self.oracle.conditionals(canvas)[:, i + 1].log()
        return out

    __call__ = logits
