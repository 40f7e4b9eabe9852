"""The autoregressive view of an exact masked oracle: its next-token conditionals.

``CausalOracle(oracle)`` answers the causal-model protocol (``logits(tokens [N, n]) ->
[N, n, V+1]`` with ``logits[:, i] = log P(x_{i+1} | x_<=i)``, the convention of
``scaling.text.next_token_logp`` and ``zoo``'s ``shakespeare-ar``) for a ``MarkovChain`` or a
``HiddenMarkovModel``: position ``i``'s law is ``P(x_{i+1} | x_<=i)`` by the forward algorithm
over the hidden chain (a Markov chain is its own hidden chain).
``initial`` is ``log P(x_0)``. It is the exact AR model of the oracle's joint, so an energy
built on it (``mdm.ar_prefix_energy``) can be checked against the oracle's ``log_marginal``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .forward_backward import forward


class CausalOracle:
    """Next-token log-conditionals of ``oracle`` (a ``toys.MaskedOracle``); ``mask_id`` and
    ``vocab_size`` are the oracle's (``V + 1`` tokens, the mask never predicted)."""

    causal = True

    def __init__(self, oracle):
        if not hasattr(oracle, "transition") or not hasattr(oracle, "mask_id"):
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
        the mask) for ``tokens`` ``[N, n]`` (a mask among ``x_0..x_i`` is summed out). One
        forward pass: the filtered hidden law ``P(h_i | x_<=i)`` moved one step and emitted."""
        tokens = self.oracle._check_tokens(tokens)
        N, n = tokens.shape
        initial, transition, emission, evidence = self._chain(tokens)
        fwd, _ = forward(initial, transition, evidence)  # [N, n, S]
        nxt = (fwd @ transition) @ emission  # [N, n, V]
        return torch.cat([nxt.log(), torch.full((N, n, 1), -torch.inf, dtype=torch.float64)], dim=-1)

    def _chain(self, tokens: Tensor):
        """``(initial, transition, emission, evidence)`` of the oracle's hidden chain (a Markov
        chain is its own hidden chain with the identity emission)."""
        o = self.oracle
        if hasattr(o, "emission"):  # HiddenMarkovModel
            return o.initial, o.transition, o.emission, o._evidence(tokens)
        V = self.mask_id
        eye = torch.eye(V, dtype=torch.float64)
        one = torch.ones((), dtype=torch.float64)
        evidence = torch.where((tokens == V)[..., None], one, eye[tokens.clamp_max(V - 1)])  # [N, n, V]
        return o.initial, o.transition, eye, evidence

    __call__ = logits
