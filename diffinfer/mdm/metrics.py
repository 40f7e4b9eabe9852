"""Exact quality of decoded sequences against a Markov-chain or hidden-Markov oracle (any
model with ``n_states``, ``pair_distribution(length, lag)`` and ``log_prob``)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..metrics import total_variation


def pair_frequencies(tokens: Tensor, n_states: int, lag: int = 1) -> Tensor:
    """Empirical law of the pairs ``(x_i, x_{i+lag})`` over all rows and positions, ``[V, V]``."""
    if tokens.dim() != 2 or not 1 <= lag < tokens.shape[1]:
        raise ValueError(f"tokens must be [N, L] with 1 <= lag={lag} < L, got shape {tuple(tokens.shape)}")
    if ((tokens < 0) | (tokens >= n_states)).any():
        raise ValueError(f"tokens must lie in [0, {n_states}) (no masks left)")
    pairs = (tokens[:, :-lag] * n_states + tokens[:, lag:]).flatten()
    counts = torch.bincount(pairs, minlength=n_states * n_states).double()
    return (counts / counts.sum()).view(n_states, n_states)


def bigram_frequencies(tokens: Tensor, n_states: int) -> Tensor:
    """Empirical law of adjacent pairs ``(x_i, x_{i+1})`` over all rows and positions, ``[V, V]``."""
    return pair_frequencies(tokens, n_states, 1)


def pair_tv(tokens: Tensor, oracle, lag: int = 1) -> float:
    """Total-variation distance between the ``(x_i, x_{i+lag})`` frequencies of ``tokens``
    ``[N, L]`` and the oracle's exact law of those pairs for length ``L``."""
    freq = pair_frequencies(tokens, oracle.n_states, lag)
    return total_variation(freq, oracle.pair_distribution(tokens.shape[1], lag))


def bigram_tv(tokens: Tensor, chain) -> float:
    """Total-variation distance between the bigram frequencies of ``tokens`` ``[N, L]`` and the
    oracle's exact bigram law for length ``L`` (``pair_tv`` at lag 1)."""
    return pair_tv(tokens, chain, 1)


def nll_per_token(tokens: Tensor, chain) -> float:
    """Mean ``-log P(x) / L`` of complete sequences ``[N, L]`` under the chain (nats)."""
    return float(-chain.log_prob(tokens).mean()) / tokens.shape[1]
