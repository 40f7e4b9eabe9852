"""A small UNet with time embedding and class conditioning, and its encoder half as a
(noise-conditional) classifier.

Architecture after Ho et al. 2020 ("DDPM") and Dhariwal & Nichol 2021 ("Diffusion Models
Beat GANs", ADM): residual blocks with GroupNorm and an adaptive scale/shift from the
embedding, down/up sampling with skip connections; the classifier is ADM's encoder half
followed by pooling and a linear head.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mlp import TimeLabelEmbedding


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """``GN -> SiLU -> conv -> GN * (1 + scale) + shift -> SiLU -> conv`` plus a skip
    (ADM's ``use_scale_shift_norm`` block). ``[B, C_in, H, W] -> [B, C_out, H, W]``."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # [B, C_out, 1, 1] each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


def encoder(in_channels: int, channels: tuple[int, ...], emb_dim: int) -> tuple[nn.Conv2d, nn.ModuleList, int]:
    """The down path shared by ``UNet`` and ``UNetClassifier``: the input convolution, one
    ``ResBlock`` per level, and the last level's width."""
    conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
    blocks = nn.ModuleList()
    c_prev = channels[0]
    for c in channels:
        blocks.append(ResBlock(c_prev, c, emb_dim))
        c_prev = c
    return conv_in, blocks, c_prev


class UNet(nn.Module):
    """``net(x [B, C, H, W], t [B], label=None) -> [B, C, H, W]``.

    ``channels`` gives the width at each resolution (halving ``H, W`` between levels; H and
    W must be divisible by ``2 ** (len(channels) - 1)``); ``num_classes > 0`` adds a class
    embedding with a null class ``num_classes`` for classifier-free guidance.
    """

    def __init__(self, in_channels: int = 1, channels=(32, 64, 64), emb_dim: int = 128,
                 num_classes: int = 0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.embed = TimeLabelEmbedding(emb_dim, num_classes)
        self.conv_in, self.down, c_prev = encoder(in_channels, channels, emb_dim)
        self.mid = ResBlock(c_prev, c_prev, emb_dim)
        self.up = nn.ModuleList()
        for c in reversed(channels):
            self.up.append(ResBlock(c_prev + c, c, emb_dim))
            c_prev = c
        self.norm_out = _norm(c_prev)
        self.conv_out = nn.Conv2d(c_prev, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        levels = len(self.channels)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.shape[-1] % 2 ** (levels - 1) or x.shape[-2] % 2 ** (levels - 1):
            raise ValueError(f"H and W must be divisible by {2 ** (levels - 1)}, got {tuple(x.shape[-2:])}")
        emb = self.embed(t, label)  # [B, emb_dim]
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < levels - 1:
                h = F.avg_pool2d(h, 2)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < levels - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))


class UNetClassifier(nn.Module):
    """The UNet's encoder half, global average pooling and a linear head (ADM's noisy
    classifier). ``time_conditional=False`` makes a clean classifier ``net(x)``.

    ``features(x, t)`` ``[B, channels[-1]]`` are the pooled activations (used for the
    Frechet distance on digits, as Inception's pool features are for FID).
    """

    def __init__(self, in_channels: int = 1, channels=(32, 64, 64), emb_dim: int = 128,
                 num_classes: int = 10, time_conditional: bool = True):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.time_conditional = time_conditional
        self.emb_dim = emb_dim
        self.embed = TimeLabelEmbedding(emb_dim, 0) if time_conditional else None
        self.conv_in, self.blocks, c_prev = encoder(in_channels, channels, emb_dim)
        self.norm_out = _norm(c_prev)
        self.head = nn.Linear(c_prev, num_classes)

    def _embedding(self, x: Tensor, t: Tensor | None) -> Tensor:
        if self.embed is None:
            return torch.zeros(x.shape[0], self.emb_dim, dtype=x.dtype, device=x.device)
        if t is None:
            raise ValueError("this classifier is noise-conditional: pass t [B]")
        t = torch.as_tensor(t, device=x.device)
        return self.embed(t.expand(x.shape[0]) if t.dim() == 0 else t)

    def features(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Pooled features ``[B, channels[-1]]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        emb = self._embedding(x, t)
        h = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            h = block(h, emb)
            if i < len(self.blocks) - 1:
                h = F.avg_pool2d(h, 2)
        return F.silu(self.norm_out(h)).mean(dim=(2, 3))

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        """Logits ``[B, num_classes]``."""
        return self.head(self.features(x, t))
