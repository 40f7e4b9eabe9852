"""An exact oracle for masked-diffusion decoding: a first-order Markov chain.

For any pattern of unmasked tokens, the conditional law of every masked position is
computed exactly by the forward-backward recursion (Rabiner 1989, "A tutorial on hidden
Markov models", section III.A, with the evidence "token observed or masked" as emission).
The chain answers the masked-model protocol of ``diffinfer.mdm`` (``logits(tokens)`` with a
``mask_id``), so decoders can be checked against exact answers with no trained network.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .forward_backward import smoothed
from .masked_oracle import MaskedOracle


def _as_probability_table(x, name: str, dims: int) -> Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    if x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimension(s), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all() or (x < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    sums = x.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-8):
        raise ValueError(f"{name} must sum to 1 along its last axis, sums are {sums.tolist()}")
    return x / sums.unsqueeze(-1)


class MarkovChain(MaskedOracle):
    """``P(x_0..x_{L-1}) = initial[x_0] * prod_i transition[x_{i-1}, x_i]`` over ``V`` states.

    As a masked model its vocabulary is the ``V`` states plus the mask token ``mask_id = V``.

    Args:
        transition: ``[V, V]`` row-stochastic matrix.
        initial: ``[V]`` law of the first token; default the stationary law.
    """

    def __init__(self, transition, initial=None):
        self.transition = _as_probability_table(transition, "transition", 2)  # [V, V]
        V = self.transition.shape[0]
        if self.transition.shape != (V, V):
            raise ValueError(f"transition must be square, got {tuple(self.transition.shape)}")
        self.n_states = V
        self.initial = self.stationary() if initial is None else _as_probability_table(initial, "initial", 1)
        if self.initial.shape != (V,):
            raise ValueError(f"initial must have {V} entries, got {tuple(self.initial.shape)}")
        self.mask_id = V
        self.vocab_size = V + 1

    # ---- chain quantities -------------------------------------------------------------
    def stationary(self) -> Tensor:
        """The stationary law ``pi = pi T`` (left eigenvector of eigenvalue 1), ``[V]``."""
        vals, vecs = torch.linalg.eig(self.transition.T)
        pi = vecs[:, torch.argmin((vals - 1).abs())].real
        pi = pi / pi.sum()
        return pi.clamp_min(0) / pi.clamp_min(0).sum()

    def entropy_rate(self) -> float:
        """``H = -sum_i pi_i sum_j T_ij log T_ij`` (nats per token; Cover & Thomas, thm 4.2.4)."""
        pi = self.stationary()
        return float(-(pi[:, None] * torch.special.xlogy(self.transition, self.transition)).sum())

    def marginals(self, length: int) -> Tensor:
        """Unconditional law of each position, ``[length, V]``."""
        out = [self.initial]
        for _ in range(length - 1):
            out.append(out[-1] @ self.transition)
        return torch.stack(out)

    def expected_nll_per_token(self, length: int) -> float:
        """Exact ``E[-log P(x)] / length`` for sequences of ``length`` tokens."""
        m = self.marginals(length)  # [L, V]
        h0 = -float(torch.special.xlogy(self.initial, self.initial).sum())
        row_entropy = -torch.special.xlogy(self.transition, self.transition).sum(1)  # [V]
        return (h0 + float((m[:-1] @ row_entropy).sum())) / length

    def pair_distribution(self, length: int, lag: int = 1) -> Tensor:
        """Law of ``(x_i, x_{i+lag})`` with ``i`` uniform in ``[0, length - lag)``, ``[V, V]``."""
        if not 1 <= lag < length:
            raise ValueError(f"need 1 <= lag < length, got lag={lag}, length={length}")
        m = self.marginals(length)[: length - lag].mean(0)  # [V]
        return m[:, None] * torch.linalg.matrix_power(self.transition, lag)

    def bigram_distribution(self, length: int) -> Tensor:
        """Law of ``(x_i, x_{i+1})`` with ``i`` uniform in ``[0, length-1)``, ``[V, V]``."""
        return self.pair_distribution(length, 1)

    # ---- exact sampling and likelihood ------------------------------------------------
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact sequences ``[n, length]`` by ancestral sampling."""
        x = torch.empty(n, length, dtype=torch.long)
        x[:, 0] = torch.multinomial(self.initial.expand(n, -1), 1, generator=generator)[:, 0]
        for i in range(1, length):
            x[:, i] = torch.multinomial(self.transition[x[:, i - 1]], 1, generator=generator)[:, 0]
        return x

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact ``log P(x)`` of complete sequences ``[B, L]`` -> ``[B]`` (float64)."""
        tokens = self._check_tokens(tokens)
        if (tokens == self.mask_id).any():
            raise ValueError("log_prob needs complete sequences; found mask tokens")
        lp = torch.log(self.initial[tokens[:, 0]])
        return lp + torch.log(self.transition[tokens[:, :-1], tokens[:, 1:]]).sum(1)

    # ---- the masked-model protocol ----------------------------------------------------
    def conditionals(self, tokens: Tensor) -> Tensor:
        """Exact ``P(x_i = v | unmasked tokens)`` for every position, ``[B, L, V]`` float64.

        Forward-backward with scaled messages; unmasked positions come out one-hot.
        Raises ``ValueError`` if the unmasked tokens have probability zero."""
        tokens = self._check_tokens(tokens)
        B, L = tokens.shape
        V = self.n_states
        masked = tokens == self.mask_id
        evidence = torch.ones(B, L, V, dtype=torch.float64)  # [B, L, V]
        obs = torch.nn.functional.one_hot(tokens.clamp_max(V - 1), V).double()
        evidence = torch.where(masked[..., None], evidence, obs)
        return smoothed(self.initial, self.transition, evidence, error="the unmasked tokens have probability zero under the chain")

    # ---- a few standard chains ----------------------------------------------------------
    @classmethod
    def random(cls, n_states: int, concentration: float = 0.3, floor: float = 1e-3,
               seed: int = 0) -> "MarkovChain":
        """A chain with Dirichlet(``concentration``) rows mixed with ``floor`` of the uniform
        law (every transition possible), started from its stationary law."""
        rng = np.random.default_rng(seed)
        rows = torch.from_numpy(rng.dirichlet(np.full(n_states, float(concentration)), size=n_states))
        rows = (1 - floor) * rows + floor / n_states
        return cls(rows)

    @classmethod
    def two_state(cls, p_stay: float = 0.9) -> "MarkovChain":
        """The symmetric two-letter chain that keeps its letter with probability ``p_stay``."""
        if not 0 < p_stay < 1:
            raise ValueError("p_stay must lie in (0, 1)")
        q = 1 - p_stay
        return cls([[p_stay, q], [q, p_stay]])

    @classmethod
    def cycle(cls, n_states: int = 8, p_next: float = 0.95) -> "MarkovChain":
        """A nearly deterministic, text-like chain: state ``s`` moves to ``s + 1 (mod V)`` with
        probability ``p_next`` and to any other state uniformly otherwise (uniform stationary law)."""
        if n_states < 2 or not 0 < p_next < 1:
            raise ValueError("need n_states >= 2 and p_next in (0, 1)")
        rest = (1 - p_next) / (n_states - 1)
        T = torch.full((n_states, n_states), rest, dtype=torch.float64)
        T[torch.arange(n_states), (torch.arange(n_states) + 1) % n_states] = p_next
        return cls(T)

    def __repr__(self) -> str:
        return (f"MarkovChain(n_states={self.n_states}, entropy_rate={self.entropy_rate():.4f} nats"
                f" = {self.entropy_rate() / math.log(2):.4f} bits)")
