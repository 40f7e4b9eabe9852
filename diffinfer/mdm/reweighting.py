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
evaluations and ``energy_rows`` sequences scored. An energy with a
``score_candidates(tokens [n, L], filled [n, K, L], drawn [n, L]) -> [n, K]`` method (equal to
scoring the ``n K`` filled rows) is called that way, so it can share work across a row's
candidates (``mdm.ar_energy``: one prefix per row).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..rng import SampleRNG
from .sampling import propose_tokens

PROPOSALS = ("commit", "full")
#: how candidates are drawn: Gumbel-max at every position (the original stream), or by the
#: inverse CDF at only the columns some row fills (same law, ``V L / W`` times fewer uniforms)
DRAWS = ("all", "columns")


@dataclass
class EnergyReweighting:
    """``energy(tokens [N, L]) -> log-density [N]`` (higher is more likely; masks allowed
    with ``proposal="commit"``), ``particles`` candidates per row and step, ``draw`` (``DRAWS``)
    how they are drawn."""

    energy: Callable[[Tensor], Tensor]
    particles: int = 16
    proposal: str = "commit"
    draw: str = "all"
    energy_calls: int = field(default=0, init=False)
    energy_rows: int = field(default=0, init=False)

    def __post_init__(self):
        if not callable(self.energy):
            raise TypeError(f"energy must be callable (tokens [N, L] -> log-density [N]), got {type(self.energy).__name__}")
        if int(self.particles) < 1:
            raise ValueError(f"particles must be >= 1, got {self.particles}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"unknown proposal {self.proposal!r}; valid: {', '.join(PROPOSALS)}")
        if self.draw not in DRAWS:
            raise ValueError(f"unknown draw {self.draw!r}; valid: {', '.join(DRAWS)}")
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
        if self.draw == "all":
            cand = propose_tokens(logp.unsqueeze(1).expand(B, K, L, logp.shape[-1]), rng, greedy=False)  # [B, K, L]
        else:
            cand = _draw_columns(logp, drawn, tokens, K, rng)
        filled = torch.where(drawn[:, None], cand, tokens[:, None])  # [B, K, L]
        log_q = torch.gather(logp[:, None].expand(B, K, L, logp.shape[-1]), -1, cand[..., None])[..., 0]  # [B, K, L]
        log_q = torch.where(drawn[:, None], log_q.double(), torch.zeros((), dtype=torch.float64)).sum(-1)  # [B, K]
        rows = commit.any(-1)  # rows with something to commit
        log_e = torch.zeros(B, K, dtype=torch.float64)
        if rows.any():
            if hasattr(self.energy, "score_candidates"):  # an energy that shares work across a row's candidates
                e = torch.as_tensor(self.energy.score_candidates(tokens[rows], filled[rows], drawn[rows]),
                                    dtype=torch.float64).reshape(-1, K)
            else:
                e = torch.as_tensor(self.energy(filled[rows].reshape(-1, L)), dtype=torch.float64).reshape(-1, K)
            if not torch.isfinite(e).any(-1).all() or torch.isnan(e).any():
                raise ValueError("the energy returned NaN, or -inf for every candidate of a row")
            log_e[rows] = e
            self.energy_calls += 1
            self.energy_rows += e.numel()
        log_w = log_e - log_q  # [B, K]
        w = torch.softmax(log_w, dim=-1)  # [B, K]
        u = rng.rand((), dtype=torch.float64)  # [B]
        idx = torch.searchsorted(w.cumsum(-1), u[:, None]).clamp_max(K - 1)[:, 0]  # [B]
        chosen = filled[torch.arange(B), idx]  # [B, L]
        return torch.where(commit, chosen, tokens)


def _draw_columns(logp: Tensor, drawn: Tensor, tokens: Tensor, K: int, rng: SampleRNG) -> Tensor:
    """``K`` candidates ``[B, K, L]`` drawn by the inverse CDF of ``logp`` ``[B, L, V]`` at the
    columns where some row of ``drawn`` ``[B, L]`` is set (one uniform per row, candidate and
    column from the row's stream); other positions hold ``tokens``."""
    B, L, V = logp.shape
    cols = drawn.any(0).nonzero()[:, 0]  # [W]
    cand = tokens[:, None].expand(B, K, L).clone()
    if len(cols) == 0:
        return cand
    p = logp[:, cols].exp()  # [B, W, V]
    cdf = p.cumsum(-1)  # [B, W, V]
    u = rng.rand((K, len(cols)), dtype=torch.float64) * cdf[:, None, :, -1]  # [B, K, W]
    idx = torch.searchsorted(cdf[:, None].expand(B, K, len(cols), V).contiguous(), u[..., None], right=True)
    idx = idx[..., 0].clamp_max(V - 1)  # [B, K, W]
    zero = p[:, None].expand(B, K, len(cols), V).gather(-1, idx[..., None])[..., 0] <= 0  # round-off at the top
    idx = torch.where(zero, p.argmax(-1)[:, None].expand(B, K, len(cols)), idx)
    cand[:, :, cols] = idx
    return cand
