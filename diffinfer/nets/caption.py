"""A tiny image-conditioned masked-diffusion caption network.

The image (flattened, e.g. an 8x8 digit) goes through a two-layer MLP to one embedding that
sits in front of the caption's token embeddings as a prefix token; the bidirectional
pre-norm blocks of ``char_transformer`` then read image and caption together, and the head
gives, for every caption position, the logits of its clean token (time-free, as MDLM /
RADD). This is the "prefix" form of conditioning; LaDiC (Wang et al. 2024) feeds image
features to its diffuser by cross-attention, which a one-vector image makes equivalent to a
prefix.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .char_transformer import Block


class CaptionTransformer(nn.Module):
    """``forward(tokens [B, L], image [B, ...]) -> logits [B, L, vocab_size]``."""

    def __init__(self, vocab_size: int, image_dim: int = 64, d_model: int = 64, n_layers: int = 2,
                 n_heads: int = 4, max_len: int = 8, image_hidden: int = 128):
        super().__init__()
        self.vocab_size, self.image_dim, self.max_len = vocab_size, image_dim, max_len
        self.image = nn.Sequential(nn.Linear(image_dim, image_hidden), nn.GELU(), nn.Linear(image_hidden, d_model))
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len + 1, d_model)  # position 0 is the image
        self.blocks = nn.ModuleList(Block(d_model, n_heads, causal=False, dropout=0.0) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor, image: Tensor) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        B, L = tokens.shape
        if L > self.max_len:
            raise ValueError(f"caption length {L} exceeds max_len {self.max_len}")
        img = image.reshape(image.shape[0], -1).to(self.head.weight.dtype)  # [B, image_dim]
        if img.shape != (B, self.image_dim):
            raise ValueError(f"image must hold {self.image_dim} values per row for {B} rows, got shape "
                             f"{tuple(image.shape)}")
        x = torch.cat([self.image(img)[:, None], self.tok(tokens)], dim=1)  # [B, 1 + L, D]
        x = x + self.pos(torch.arange(L + 1, device=tokens.device))
        for block in self.blocks:
            x = block(x)[0]
        return self.head(self.ln_f(x[:, 1:]))  # [B, L, V]
