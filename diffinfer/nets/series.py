"""A small 1-D network for time series: dilated residual convolutions with a time
embedding, in the style of WaveNet (van den Oord et al. 2016) as used by DiffWave
(Kong et al. 2021) and CSDI / TimeGrad-like diffusion forecasters.

``net(x [B, C, L], t [B], label=None) -> [B, C, L]``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mlp import TimeLabelEmbedding


class DilatedBlock(nn.Module):
    """``h + conv1x1(gate(conv_dilated(GN(h) + emb)))`` with a tanh * sigmoid gate (DiffWave)."""

    def __init__(self, channels: int, emb_dim: int, dilation: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, channels), channels)
        self.emb = nn.Linear(emb_dim, channels)
        self.conv = nn.Conv1d(channels, 2 * channels, 3, padding=dilation, dilation=dilation)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.norm(h) + self.emb(F.silu(emb)).unsqueeze(-1)  # [B, C, L]
        a, b = self.conv(z).chunk(2, dim=1)
        return h + self.proj(torch.tanh(a) * torch.sigmoid(b))


class SeriesNet(nn.Module):
    """Dilated residual 1-D convolutions (dilations ``1, 2, 4, ...`` cycled) with a
    time (and optional label) embedding."""

    def __init__(self, in_channels: int = 1, channels: int = 64, depth: int = 6, emb_dim: int = 64,
                 num_classes: int = 0, max_dilation: int = 8):
        super().__init__()
        self.in_channels = in_channels
        self.embed = TimeLabelEmbedding(emb_dim, num_classes)
        self.inp = nn.Conv1d(in_channels, channels, 3, padding=1)
        dilations, d = [], 1
        for _ in range(depth):
            dilations.append(d)
            d = 1 if d >= max_dilation else 2 * d
        self.blocks = nn.ModuleList(DilatedBlock(channels, emb_dim, d) for d in dilations)
        self.out = nn.Sequential(nn.GroupNorm(min(8, channels), channels), nn.SiLU(),
                                 nn.Conv1d(channels, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, L], got {tuple(x.shape)}")
        emb = self.embed(t, label)  # [B, emb_dim]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
