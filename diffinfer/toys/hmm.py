"""An exact oracle with long-range dependencies: a hidden Markov model over tokens.

Tokens ``x_0..x_{L-1}`` are emitted by hidden states ``h_0..h_{L-1}`` that form a Markov
chain: ``P(x, h) = initial[h_0] emission[h_0, x_0] prod_i transition[h_{i-1}, h_i]
emission[h_i, x_i]``. Unlike a first-order chain over the tokens themselves, the tokens are
not Markov: with sticky hidden states, a token tells about tokens far away, so positions
that are not adjacent are *not* conditionally independent given the rest, and a decoder that
unmasks several of them at once from factorised conditionals draws from the wrong joint.

Everything a decoder is measured with is exact: the conditional law of every masked position
given any pattern of unmasked tokens (forward-backward over the hidden states, Rabiner 1989,
"A tutorial on hidden Markov models", section III.A, with "token observed or masked" as the
evidence), ``log_prob`` (the forward algorithm), exact sampling, and the laws of token pairs
``(x_i, x_{i+k})`` at any lag. The entropy rate of the token process has no closed form
(Blackwell 1957); ``entropy_rate`` estimates it by Monte Carlo with the exact ``log_prob`` and
``entropy_rate_bounds`` gives the exact sandwich of Cover & Thomas (2006), theorem 4.5.1, by
enumeration for small models. The model answers the masked-model protocol of
``diffinfer.mdm`` (``logits(tokens)`` with ``mask_id``), as ``MarkovChain`` does.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from .forward_backward import forward, smoothed
from .markov_chain import MarkovChain, _as_probability_table
from .masked_oracle import MaskedOracle


class HiddenMarkovModel(MaskedOracle):
    """Tokens over ``V`` symbols emitted by a hidden chain over ``H`` states.

    As a masked model its vocabulary is the ``V`` symbols plus ``mask_id = V``.

    Args:
        transition: ``[H, H]`` row-stochastic hidden transition matrix.
        emission: ``[H, V]`` row-stochastic emission matrix.
        initial: ``[H]`` law of the first hidden state; default the stationary law.
    """

    def __init__(self, transition, emission, initial=None):
        self.hidden = MarkovChain(transition, initial)  # the hidden chain: stationary law, marginals
        self.transition, self.initial = self.hidden.transition, self.hidden.initial  # [H, H], [H]
        self.emission = _as_probability_table(emission, "emission", 2)  # [H, V]
        if self.emission.shape[0] != self.transition.shape[0]:
            raise ValueError(f"emission has {self.emission.shape[0]} rows but there are "
                             f"{self.transition.shape[0]} hidden states")
        self.n_hidden, self.n_states = self.emission.shape
        self.mask_id = self.n_states
        self.vocab_size = self.n_states + 1

    # ---- laws of the token process ----------------------------------------------------
    def marginals(self, length: int) -> Tensor:
        """Unconditional law of each token, ``[length, V]``."""
        return self.hidden.marginals(length) @ self.emission

    def pair_distribution(self, length: int, lag: int = 1) -> Tensor:
        """Law of ``(x_i, x_{i+lag})`` with ``i`` uniform in ``[0, length - lag)``, ``[V, V]``:
        ``E^T diag(m) T^lag E`` with ``m`` the mean hidden marginal over those ``i``."""
        if not 1 <= lag < length:
            raise ValueError(f"need 1 <= lag < length, got lag={lag}, length={length}")
        m = self.hidden.marginals(length)[: length - lag].mean(0)  # [H]
        T_lag = torch.linalg.matrix_power(self.transition, lag)  # [H, H]
        return self.emission.T @ (m[:, None] * T_lag) @ self.emission

    def bigram_distribution(self, length: int) -> Tensor:
        """``pair_distribution(length, 1)`` (what ``mdm.metrics.bigram_tv`` compares with)."""
        return self.pair_distribution(length, 1)

    # ---- exact sampling and likelihood ------------------------------------------------
    def sample(self, n: int, length: int, generator: torch.Generator | None = None,
               return_hidden: bool = False):
        """``n`` exact sequences ``[n, length]`` (and their hidden states if asked for)."""
        h = self.hidden.sample(n, length, generator=generator)  # [n, L]
        flat = self.emission[h.reshape(-1)]  # [n L, V]
        x = torch.multinomial(flat, 1, generator=generator).view(n, length)
        return (x, h) if return_hidden else x

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact ``log P(x)`` of complete sequences ``[B, L]`` -> ``[B]`` (float64), by the
        scaled forward algorithm."""
        tokens = self._check_tokens(tokens)
        if (tokens == self.mask_id).any():
            raise ValueError("log_prob needs complete sequences; found mask tokens")
        _, log_z = self._forward(self._evidence(tokens))
        return log_z

    def log_marginal(self, tokens: Tensor) -> Tensor:
        """Exact ``log P(unmasked tokens)`` of partially masked sequences ``[B, L]`` -> ``[B]``
        (masked positions summed out; ``-inf`` where impossible): the energy of EDLM's
        ``"commit"`` proposal (``mdm.EnergyReweighting``)."""
        tokens = self._check_tokens(tokens)
        return self._forward(self._evidence(tokens), strict=False)[1]

    def nll_estimate(self, length: int, n: int = 8192, seed: int = 0) -> tuple[float, float]:
        """``E[-log P(x)] / length`` estimated from ``n`` exact samples with the exact
        ``log_prob`` (no closed form for a hidden Markov model), and its standard error."""
        x = self.sample(n, length, generator=torch.Generator().manual_seed(seed))
        per = -self.log_prob(x) / length  # [n]
        return per.mean().item(), per.std().item() / math.sqrt(n)

    def expected_nll_per_token(self, length: int, n: int = 8192, seed: int = 0) -> float:
        """The estimate of ``nll_estimate``."""
        return self.nll_estimate(length, n, seed)[0]

    def nll_standard_error(self, length: int, n: int = 8192, seed: int = 0) -> float:
        """The standard error of ``nll_estimate``."""
        return self.nll_estimate(length, n, seed)[1]

    def entropy_rate(self, length: int = 256, n: int = 2048, seed: int = 0) -> float:
        """Monte Carlo estimate of the token process's entropy rate (nats per token): the mean
        of ``-log P(x_i | x_<i)`` over the second half of ``n`` exact sequences of ``length``
        (the first half lets the conditional entropy settle; it decreases to the rate)."""
        x = self.sample(n, length, generator=torch.Generator().manual_seed(seed))
        half = length // 2
        return (self.log_prob(x[:, :half]) - self.log_prob(x)).mean().item() / (length - half)

    def entropy_rate_bounds(self, n: int) -> tuple[float, float]:
        """Exact ``(H(X_n | X_<n, S_1), H(X_n | X_<n))`` by enumerating all ``V^n`` sequences:
        the entropy rate lies between them and both converge to it (Cover & Thomas 2006,
        theorem 4.5.1; ``n`` counts tokens, the hidden state conditioned on is the first)."""
        if self.n_states ** n > 2 ** 20:
            raise ValueError(f"enumerating {self.n_states}^{n} sequences is too many")
        seqs = torch.tensor(list(itertools.product(range(self.n_states), repeat=n)))  # [V^n, n]

        def cond_entropy(initial: Tensor) -> float:  # H(X_n | X_<n) with the first hidden law `initial`
            model = HiddenMarkovModel(self.transition, self.emission, initial)
            lp_full = model.log_marginal(seqs)  # [V^n], -inf if impossible
            lp_prefix = model.log_marginal(seqs[:, :-1]) if n > 1 else torch.zeros_like(lp_full)
            possible = lp_full > -math.inf
            return float(-(lp_full[possible].exp() * (lp_full[possible] - lp_prefix[possible])).sum())

        upper = cond_entropy(self.initial)
        lower = sum(float(self.initial[s]) * cond_entropy(torch.nn.functional.one_hot(
            torch.tensor(s), self.n_hidden).double()) for s in range(self.n_hidden) if self.initial[s] > 0)
        return lower, upper

    # ---- the masked-model protocol ----------------------------------------------------
    def _evidence(self, tokens: Tensor) -> Tensor:
        """``P(observation_i | h_i)`` ``[B, L, H]``: the emission of an unmasked token, 1 for a mask."""
        masked = tokens == self.mask_id  # [B, L]
        e = self.emission.T[tokens.clamp_max(self.n_states - 1)]  # [B, L, H]
        return torch.where(masked[..., None], torch.ones_like(e), e)

    def _forward(self, evidence: Tensor, strict: bool = True) -> tuple[Tensor, Tensor]:
        """Normalised forward messages ``[B, L, H]`` and ``log P(evidence)`` ``[B]``; evidence
        of probability zero raises (``strict``) or gives ``-inf``."""
        return forward(self.initial, self.transition, evidence, strict)

    def conditionals(self, tokens: Tensor) -> Tensor:
        """Exact ``P(x_i = v | unmasked tokens)`` for every position, ``[B, L, V]`` float64;
        unmasked positions come out one-hot. Raises ``ValueError`` if the unmasked tokens
        have probability zero."""
        tokens = self._check_tokens(tokens)
        post = smoothed(self.initial, self.transition, self._evidence(tokens))  # [B, L, H]: P(h_i | observations)
        probs = post @ self.emission  # [B, L, V]
        observed = tokens != self.mask_id
        one_hot = torch.nn.functional.one_hot(tokens.clamp_max(self.n_states - 1), self.n_states).double()
        return torch.where(observed[..., None], one_hot, probs)

    # ---- random models ------------------------------------------------------------------
    @classmethod
    def random(cls, n_hidden: int = 4, n_states: int = 8, stay: float = 0.95, concentration: float = 0.3,
               seed: int = 0) -> "HiddenMarkovModel":
        """A sticky model: each hidden state keeps itself with probability ``stay`` and
        otherwise moves by a Dirichlet(1) row; emissions are Dirichlet(``concentration``) rows
        mixed with 1e-3 of the uniform law (every token possible). Dependencies between
        tokens decay like ``stay^k`` with the distance ``k``."""
        if n_hidden < 2 or n_states < 2 or not 0 <= stay < 1 or not concentration > 0:
            raise ValueError("need n_hidden >= 2, n_states >= 2, 0 <= stay < 1 and concentration > 0")
        rng = np.random.default_rng(seed)
        move = torch.from_numpy(rng.dirichlet(np.ones(n_hidden), size=n_hidden))
        transition = stay * torch.eye(n_hidden, dtype=torch.float64) + (1 - stay) * move
        emission = torch.from_numpy(rng.dirichlet(np.full(n_states, float(concentration)), size=n_hidden))
        emission = (1 - 1e-3) * emission + 1e-3 / n_states
        return cls(transition, emission)

    def __repr__(self) -> str:
        return f"HiddenMarkovModel(n_hidden={self.n_hidden}, n_states={self.n_states})"
