"""Energy-based reweighting of parallel proposals (EDLM; Xu et al. 2024, "Energy-Based
Diffusion Language Models").

A masked model's conditionals are a factorised proposal: drawing several positions at once
from ``prod_i p(x_i | x_t)`` ignores how they depend on each other. EDLM corrects the joint
with an energy over sequences: importance weights ``w = exp(-E(x)) / q(x | x_t)`` and
self-normalised resampling among ``K`` candidates. As ``K`` grows the chosen candidate is a
draw from the energy's law given the unmasked tokens, so committing several tokens per call
stays exact when the energy is exact (a hidden-Markov oracle's joint), and moves towards the
energy model's law otherwise (an autoregressive model such as ``shakespeare-ar``).

Two proposal forms:

- ``"commit"``: only the positions the policy commits this step are drawn ``K`` times; the
  weight is ``log p_E(unmasked + drawn) - sum log q(drawn)``, so the energy must score
  partially masked sequences (their marginal log-probability, e.g.
  ``HiddenMarkovModel.log_marginal``). Exact in the limit for any policy whose choice of
  positions does not look at the drawn values (random, dilated, ancestral).
- ``"full"``: every masked position is drawn (EDLM's form) and the energy scores complete
  sequences (``log_prob`` of an AR model or an oracle); the committed positions of the chosen
  candidate are kept. Its weights degenerate when many positions are masked.

Costs are counted apart from the masked model's calls: ``energy_calls`` batched energy
evaluations and ``energy_rows`` sequences scored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..rng import SampleRNG
from .sampling import propose_tokens

PROPOSALS = ("commit", "full")


@dataclass
class EnergyReweighting:
    """``energy(tokens [N, L]) -> log-density [N]`` (higher is more likely; masks allowed
    with ``proposal="commit"``), ``particles`` candidates per row and step."""

    energy: Callable[[Tensor], Tensor]
    particles: int = 16
    proposal: str = "commit"
    energy_calls: int = field(default=0, init=False)
    energy_rows: int = field(default=0, init=False)

    def __post_init__(self):
        if not callable(self.energy):
            raise TypeError(f"energy must be callable (tokens [N, L] -> log-density [N]), got {type(self.energy).__name__}")
        if int(self.particles) < 1:
            raise ValueError(f"particles must be >= 1, got {self.particles}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r}; valid: {', '.join(PROPOSALS)}")
        self.particles = int(self.particles)

    def reset(self) -> None:
        self.energy_calls = self.energy_rows = 0

    def choose(self, tokens: Tensor, logp: Tensor, commit: Tensor, masked: Tensor, rng: SampleRNG) -> Tensor:
        """Values for the ``commit`` positions ``[B, L]``: ``K`` candidates per row drawn from
        the factorised law ``logp`` ``[B, L, V]`` (each row's own stream), one kept per row by
        self-normalised importance resampling under the energy. ``tokens``: the canvas before
        the step; ``masked``: its masked positions. Returns the canvas with the committed
        positions filled (other positions unchanged)."""
        B, L = tokens.shape
        K = self.particles
        drawn = commit if self.proposal == "commit" else masked  # [B, L]: positions the candidates fill
        cand = propose_tokens(logp.unsqueeze(1).expand(B, K, L, logp.shape[-1]), rng, greedy=False)  # [B, K, L]
        filled = torch.where(drawn[:, None], cand, tokens[:, None])  # [B, K, L]
        log_q = torch.gather(logp[:, None].expand(B, K, L, logp.shape[-1]), -1, cand[..., None])[..., 0]  # [B, K, L]
        log_q = torch.where(drawn[:, None], log_q.double(), torch.zeros((), dtype=torch.float64)).sum(-1)  # [B, K]
        rows = commit.any(-1)  # rows with something to commit
        log_e = torch.zeros(B, K, dtype=torch.float64)
        if rows.any():
            flat = filled[rows].reshape(-1, L)  # [n K, L]
            e = torch.as_tensor(self.energy(flat), dtype=torch.float64).reshape(-1, K)
            if not torch.isfinite(e).any(-1).all() or torch.isnan(e).any():
                raise ValueError("the energy returned NaN, or -inf for every candidate of a row")
            log_e[rows] = e
            self.energy_calls += 1
            self.energy_rows += flat.shape[0]
        log_w = log_e - log_q  # [B, K]
        w = torch.softmax(log_w, dim=-1)  # [B, K]
        u = rng.rand((), dtype=torch.float64)  # [B]
        idx = torch.searchsorted(w.cumsum(-1), u[:, None]).clamp_max(K - 1)[:, 0]  # [B]
        chosen = filled[torch.arange(B), idx]  # [B, L]
        return torch.where(commit, chosen, tokens)
