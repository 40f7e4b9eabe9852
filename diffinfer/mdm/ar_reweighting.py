"""EDLM reweighting whose AR energy also draws each block's last token.

``EnergyReweighting(ar_prefix_energy(ar))`` on a block-by-block decode resamples all ``k``
tokens of a block among ``K`` candidates drawn from the masked model's factorised
conditionals (Xu et al. 2024, "Energy-Based Diffusion Language Models"). The energy call that
scores the candidates already computes, for each candidate, the AR model's exact law of the
position after it. ``ARCompletedReweighting`` uses it: the candidates fill the block's first
``k - 1`` positions, one is kept by self-normalised importance resampling with weights
``p_AR(x_s..x_{e-2} | prefix) / q(x_s..x_{e-2})``, and the block's last token is then drawn
from ``p_AR(x_{e-1} | prefix, kept candidate)``, the exact conditional (mask token excluded).
The block's law is ``SNIS_K(p_AR over k-1 tokens) x p_AR(last | ...)``: exact as ``K`` grows,
like the plain form, with one token fewer carried by the weights, and the same cost (one
masked-model call and one batched energy evaluation per step: the kept candidate's last
token is appended to the AR prefix, extended incrementally, in the next evaluation).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..rng import SampleRNG
from .ar_energy import ARPrefixEnergy, prefix_lengths
from .reweighting import EnergyReweighting, _draw_columns


class ARCompletedReweighting(EnergyReweighting):
    """``EnergyReweighting`` for an ``ARPrefixEnergy`` (``proposal="commit"``): the energy also
    draws the last committed token of each block (see the module docstring). Each step must
    commit one contiguous block right after the unmasked prefix."""

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.energy, ARPrefixEnergy):
            raise TypeError(f"ARCompletedReweighting needs an mdm.ARPrefixEnergy, got {type(self.energy).__name__}")
        if self.proposal != "commit":
            raise ValueError("ARCompletedReweighting draws the committed positions only (proposal='commit')")

    def choose(self, tokens: Tensor, logp: Tensor, commit: Tensor, masked: Tensor, rng: SampleRNG) -> Tensor:
        B, L = tokens.shape
        K, mask = self.particles, self.energy.mask_id
        pos = torch.arange(L)[None, :]
        s = prefix_lengths(tokens, mask)  # [B]
        e = s + commit.sum(-1)  # [B]
        if not bool((commit == ((pos >= s[:, None]) & (pos < e[:, None]))).all()):
            raise ValueError("ARCompletedReweighting needs each step to commit the block right after the unmasked "
                             "prefix (block=k with steps=length/k); this step commits other positions")
        head = commit & (pos < (e - 1)[:, None])  # [B, L]: drawn by the masked model and reweighted
        if self.draw == "all":
            from .sampling import propose_tokens
            cand = propose_tokens(logp.unsqueeze(1).expand(B, K, L, logp.shape[-1]), rng, greedy=False)
        else:
            cand = _draw_columns(logp, head, tokens, K, rng)  # [B, K, L]
        filled = torch.where(head[:, None], cand, tokens[:, None])  # [B, K, L]
        log_q = torch.gather(logp[:, None].expand(B, K, L, logp.shape[-1]), -1, filled[..., None].clamp_max(
            logp.shape[-1] - 1))[..., 0]
        log_q = torch.where(head[:, None], log_q.double(), torch.zeros((), dtype=torch.float64)).sum(-1)  # [B, K]
        rows = commit.any(-1)
        log_e = torch.zeros(B, K, dtype=torch.float64)
        nxt = None
        if rows.any():
            e_rows, nxt = self.energy.score_and_next(tokens[rows], filled[rows])  # [n, K], [n, K, V]
            if torch.isnan(e_rows).any() or not torch.isfinite(e_rows).any(-1).all():
                raise ValueError("the energy returned NaN, or -inf for every candidate of a row")
            log_e[rows] = e_rows
            self.energy_calls += 1
            self.energy_rows += e_rows.numel()
        w = torch.softmax(log_e - log_q, dim=-1)  # [B, K]
        u = rng.rand((), dtype=torch.float64)  # [B]
        idx = torch.searchsorted(w.cumsum(-1), u[:, None]).clamp_max(K - 1)[:, 0]  # [B]
        chosen = filled[torch.arange(B), idx]  # [B, L]
        u_last = rng.rand((), dtype=torch.float64)  # [B]
        if nxt is not None:
            r = rows.nonzero()[:, 0]
            law = nxt[torch.arange(len(r)), idx[r]].clone()  # [n, V]
            if mask < law.shape[-1]:
                law[:, mask] = -torch.inf
            p = torch.softmax(law, -1)
            cdf = p.cumsum(-1)
            last = torch.searchsorted(cdf, (u_last[r] * cdf[:, -1])[:, None], right=True)[:, 0]
            last = last.clamp_max(p.shape[-1] - 1)  # [n]
            last = torch.where(p.gather(-1, last[:, None])[:, 0] > 0, last, p.argmax(-1))
            chosen[r, e[r] - 1] = last
        return torch.where(commit, chosen, tokens)
