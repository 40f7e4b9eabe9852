"""An MLP denoiser for low-dimensional data, and the time / label embedding every
network in ``diffinfer.nets`` shares.

Networks take ``(x, t, label=None)``: ``x`` ``[B, ...]``, ``t`` ``[B]`` in ``[0, 1]`` (our
convention, 0 data, 1 noise), ``label`` ``[B]`` int64 with ``num_classes`` as the null
class (classifier-free guidance, Ho & Salimans 2022); ``label=None`` means null.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """Transformer positional features of ``scale * t`` (Vaswani et al. 2017; as in DDPM,
    Ho et al. 2020): ``[B] -> [B, dim]``."""
    if t.dim() != 1:
        raise ValueError(f"t must be [B], got shape {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = scale * t.float().unsqueeze(1) * freqs.unsqueeze(0)  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(t.dtype) if t.is_floating_point() else emb


class TimeLabelEmbedding(nn.Module):
    """``emb(t) + emb(label)`` ``[B, dim]``: sinusoidal features through a 2-layer MLP, plus a
    learned class embedding with an extra null row (index ``num_classes``)."""

    def __init__(self, dim: int, num_classes: int = 0):
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def null_labels(self, batch: int, device) -> Tensor:
        return torch.full((batch,), self.num_classes, dtype=torch.int64, device=device)

    def forward(self, t: Tensor, label: Tensor | None = None) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.dim).to(self.time_mlp[0].weight.dtype))  # [B, dim]
        if self.label_emb is None:
            if label is not None:
                raise ValueError("this network is unconditional: it takes no label")
            return emb
        if label is None:
            label = self.null_labels(t.shape[0], t.device)
        label = torch.as_tensor(label, device=t.device)
        if label.dim() == 0:
            label = label.expand(t.shape[0])
        if label.shape != t.shape or label.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"label must be integer [B]={t.shape[0]}, got {label.dtype} {tuple(label.shape)}")
        # checked on the host only: on an accelerator the check would wait for the device at
        # every model call, and the embedding lookup itself rejects an index out of range
        if label.device.type == "cpu" and bool(((label < 0) | (label > self.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} is the null class)")
        return emb + self.label_emb(label.long())


class MLPDenoiser(nn.Module):
    """Residual MLP on flattened ``x`` with time (and label) embedding added in each block.

    ``[B, *shape] -> [B, *shape]``; a small version of the networks used on 2-D toy data
    (e.g. Karras et al. 2022's toy experiments, Lipman et al. 2022's 2-D examples).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, num_classes: int = 0):
        super().__init__()
        self.dim = dim
        self.embed = TimeLabelEmbedding(hidden, num_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        shape = x.shape
        h = x.reshape(shape[0], -1)
        if h.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} features per sample, got {tuple(shape[1:])}")
        emb = self.embed(t, label)  # [B, hidden]
        h = self.inp(h)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h).reshape(shape)
