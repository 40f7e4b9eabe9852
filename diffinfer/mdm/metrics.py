"""Exact quality of decoded sequences against a Markov-chain oracle."""
from __future__ import annotations

import torch
from torch import Tensor

from ..metrics import total_variation


def bigram_frequencies(tokens: Tensor, n_states: int) -> Tensor:
    """Empirical law of adjacent pairs ``(x_i, x_{i+1})`` over all rows and positions, ``[V, V]``."""
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [N, L] with L >= 2, got shape {tuple(tokens.shape)}")
    if ((tokens < 0) | (tokens >= n_states)).any():
        raise ValueError(f"tokens must lie in [0, {n_states}) (no masks left)")
    pairs = (tokens[:, :-1] * n_states + tokens[:, 1:]).flatten()
    counts = torch.bincount(pairs, minlength=n_states * n_states).double()
    return (counts / counts.sum()).view(n_states, n_states)


def bigram_tv(tokens: Tensor, chain) -> float:
    """Total-variation distance between the bigram frequencies of ``tokens`` ``[N, L]`` and the
    chain's exact bigram law for length ``L`` (``MarkovChain.bigram_distribution``)."""
    freq = bigram_frequencies(tokens, chain.n_states)
    return total_variation(freq, chain.bigram_distribution(tokens.shape[1]))


def nll_per_token(tokens: Tensor, chain) -> float:
    """Mean ``-log P(x) / L`` of complete sequences ``[N, L]`` under the chain (nats)."""
    return float(-chain.log_prob(tokens).mean()) / tokens.shape[1]
