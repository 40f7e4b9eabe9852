"""A residual MLP on ``(x, one-hot label)`` with one time per block, for joint data-label
diffusion (``diffinfer.jointlabel``): a shared trunk and one output head per block, as in
Chen et al., "Diffusion Models for Multi-Task Generative Modeling" (ICLR 2024), with the two
times embedded separately (UniDiffuser, Bao et al. 2023)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .mlp import TimeLabelEmbedding


class JointMLP(nn.Module):
    """``net(x_t [B, *S], l_t [B, C], t_x [B], t_l [B]) -> (out_x [B, *S], out_l [B, C])``."""

    def __init__(self, data_shape, num_classes: int, hidden: int = 256, depth: int = 3):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.dim, self.num_classes = math.prod(self.data_shape), int(num_classes)
        self.embed_x = TimeLabelEmbedding(hidden)
        self.embed_l = TimeLabelEmbedding(hidden)
        self.inp = nn.Linear(self.dim + self.num_classes, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.head_x = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, self.dim))
        self.head_l = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, self.num_classes))

    def forward(self, x: Tensor, l: Tensor, t_x: Tensor, t_l: Tensor) -> tuple[Tensor, Tensor]:
        B = x.shape[0]
        if x.shape[1:] != self.data_shape or l.shape != (B, self.num_classes):
            raise ValueError(f"expected x [B, {self.data_shape}] and l [B, {self.num_classes}], "
                             f"got {tuple(x.shape)} and {tuple(l.shape)}")
        emb = self.embed_x(t_x) + self.embed_l(t_l)  # [B, hidden]
        h = self.inp(torch.cat([x.reshape(B, -1), l], 1))
        for block in self.blocks:
            h = h + block(h + emb)
        return self.head_x(h).reshape(x.shape), self.head_l(h)
