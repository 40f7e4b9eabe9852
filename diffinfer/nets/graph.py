"""A tiny permutation-equivariant joint denoiser for graph states ``(X, A)``.

In the spirit of GDSS's two score networks (Jo et al. 2022, ScoreNetworkX / ScoreNetworkA:
graph convolutions on the noisy adjacency, node and edge outputs from shared node
states), scaled down to train in seconds on a CPU: node states from the node features,
the (noisy) degree and neighbourhood sums, a few rounds of message passing ``h += MLP([h,
A h / n])``, then

- node output ``Linear(h_i)`` ``[B, n, f]``;
- edge output ``MLP([h_i + h_j, h_i * h_j, A_ij, (A A)_ij / n])`` on the pairs ``i < j``,
  mirrored into a symmetric ``[B, n, n]`` with a zero diagonal (``(A A)`` counts common
  neighbours, the feature clustering needs).

Relabelling the nodes permutes both outputs the same way. Used through
``structured_state.joint_denoiser(GraphNet(...), Layout(nodes=Dense(n, f), adj=Symmetric(n)), ...)``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .mlp import sinusoidal_embedding


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, d_out))


class GraphNet(nn.Module):
    """``forward(X [B, n, f], A [B, n, n], t [B]) -> (X_out [B, n, f], A_out [B, n, n])``."""

    def __init__(self, node_features: int = 1, hidden: int = 48, rounds: int = 2, time_dim: int = 32):
        super().__init__()
        self.node_features, self.hidden, self.rounds, self.time_dim = int(node_features), int(hidden), int(rounds), int(time_dim)
        h = self.hidden
        self.time = nn.Sequential(nn.Linear(self.time_dim, h), nn.SiLU(), nn.Linear(h, h))
        self.embed = nn.Linear(2 * self.node_features + 1, h)
        self.message = nn.ModuleList([_mlp(2 * h, h, h) for _ in range(self.rounds)])
        self.node_out = nn.Linear(h, self.node_features)
        self.edge_out = _mlp(2 * h + 2, h, 1)

    def forward(self, X: Tensor, A: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        B, n, _ = X.shape
        temb = self.time(sinusoidal_embedding(t.reshape(-1).expand(B), self.time_dim).to(X.dtype))  # [B, h]
        deg = A.sum(-1, keepdim=True) / n  # [B, n, 1]
        h = self.embed(torch.cat([X, (A @ X) / n, deg], dim=-1)) + temb[:, None]  # [B, n, h]
        for mlp in self.message:
            h = h + mlp(torch.cat([h, (A @ h) / n], dim=-1))
        rows, cols = torch.triu_indices(n, n, offset=1, device=X.device)  # the P = n (n - 1) / 2 pairs i < j
        hi, hj = h[:, rows], h[:, cols]  # [B, P, h]
        common = (A @ A)[:, rows, cols, None] / n  # [B, P, 1]
        pair = torch.cat([hi + hj, hi * hj, A[:, rows, cols, None], common], dim=-1)  # [B, P, 2h + 2]
        e = self.edge_out(pair).squeeze(-1)  # [B, P]
        A_out = X.new_zeros(B, n, n)
        A_out[:, rows, cols] = e
        A_out[:, cols, rows] = e
        return self.node_out(h), A_out


__all__ = ["GraphNet"]
