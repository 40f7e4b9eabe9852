"""A tiny DiT whose blocks are dense or mixture-of-experts.

- DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers" (ICCV 2023):
  patchify, transformer blocks with adaLN-Zero conditioning on time (+ class), a linear
  un-patchify head initialised at zero.
- MoE blocks: Fei et al., "Scaling Diffusion Transformers to 16 Billion Parameters"
  (DiT-MoE, 2024): the MLP is replaced by ``n_shared`` always-on shared experts plus
  ``n_experts`` routed experts of which each token uses its top ``top_k`` (softmax
  gates renormalised over the chosen ones), with an expert-balance loss. The balance loss
  is the Switch-Transformer form (Fedus et al. 2022, eq. 4)
  ``n_experts * sum_i f_i P_i`` (``f_i`` the fraction of token assignments to expert
  ``i``, ``P_i`` its mean router probability), which is 1 when routing is uniform.

- Task routing (optional, ``routing={"beta": .., "alpha": ..}``): Park et al., "Denoising
  Task Routing for Diffusion Models" (DTR, ICLR 2024): each block sees only a timestep-dependent
  window of the channels, ``out = (1 - m_t) * x + Block(m_t * x)`` (``nets.routing``). Off by
  default; it adds no parameters, so a checkpoint loads either way.

``net(x [B, C, H, W], t [B], label=None) -> [B, C, H, W]``; after each forward,
``net.aux_loss()`` is the mean balance loss of the MoE blocks (0 for a dense net).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .mlp import TimeLabelEmbedding
from .routing import TaskRouting


def _mlp(d: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))


class MoEMLP(nn.Module):
    """Shared experts plus top-k routed experts (DiT-MoE) on tokens ``[N, D]``."""

    def __init__(self, d: int, hidden: int, n_experts: int = 4, top_k: int = 2, n_shared: int = 1):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"need 1 <= top_k <= n_experts, got top_k={top_k}, n_experts={n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(_mlp(d, hidden) for _ in range(n_experts))
        self.shared = nn.ModuleList(_mlp(d, hidden) for _ in range(n_shared))
        self.last_balance_loss = torch.zeros(())
        self.last_load = torch.zeros(n_experts)

    def forward(self, h: Tensor) -> Tensor:
        shape = h.shape
        tokens = h.reshape(-1, shape[-1])  # [N, D]
        probs = F.softmax(self.router(tokens).float(), dim=-1)  # [N, E]
        gate, chosen = probs.topk(self.top_k, dim=-1)  # [N, k] each
        gate = (gate / gate.sum(-1, keepdim=True)).to(tokens.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, gate[rows, slot].unsqueeze(-1) * expert(tokens[rows]))
        for expert in self.shared:
            out = out + expert(tokens)
        assigned = F.one_hot(chosen, self.n_experts).sum(1).float()  # [N, E]
        frac = assigned.mean(0) / self.top_k  # f_i, sums to 1
        self.last_load = frac.detach()
        self.last_balance_loss = self.n_experts * (frac * probs.mean(0)).sum()
        return out.reshape(shape)


class DiTBlock(nn.Module):
    """adaLN-Zero block: ``x + g1 * attn(mod(LN(x), s1, b1))``, ``x + g2 * mlp(mod(LN(x), s2, b2))``
    with the six modulation vectors from the embedding, initialised to zero."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: float, emb_dim: int, moe: dict | None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * mlp_ratio)
        self.mlp = MoEMLP(d, hidden, **moe) if moe is not None else _mlp(d, hidden)
        self.modulation = nn.Linear(emb_dim, 6 * d)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, emb: Tensor, mask: Tensor | None = None) -> Tensor:
        """``mask`` ``[B, 1, D]`` (DTR): the block runs on ``mask * x`` and the inactive channels
        of ``x`` pass by, ``(1 - mask) * x + Block(mask * x)``."""
        skip = None
        if mask is not None:
            skip, x = (1 - mask) * x, mask * x
        s1, b1, g1, s2, b2, g2 = self.modulation(F.silu(emb)).unsqueeze(1).chunk(6, dim=-1)  # [B, 1, D] each
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * self.attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x) * (1 + s2) + b2
        x = x + g2 * self.mlp(h)
        return x if skip is None else skip + x


class DiT(nn.Module):
    """``net(x [B, C, H, W], t [B], label=None)``; ``moe=None`` for dense blocks, or a dict
    ``{"n_experts": 4, "top_k": 2, "n_shared": 1}`` for DiT-MoE blocks (every
    ``moe_every``-th block; 1 = all). ``routing=None`` (default) for the plain DiT, or
    ``{"beta": 0.8, "alpha": 1.0, "t_max": 1.0}`` (any subset) for DTR channel masks of the
    time input ``t`` (``nets.routing.TaskRouting``) on every block."""

    def __init__(self, in_channels: int = 1, image_size: int = 8, patch: int = 2, d_model: int = 64,
                 depth: int = 4, n_heads: int = 4, mlp_ratio: float = 4.0, emb_dim: int = 128,
                 num_classes: int = 0, moe: dict | None = None, moe_every: int = 1,
                 routing: dict | None = None):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not divisible by patch {patch}")
        self.in_channels, self.image_size, self.patch = in_channels, image_size, patch
        self.grid = image_size // patch
        if routing is not None and not isinstance(routing, dict):
            raise TypeError(f"routing must be None or a dict of TaskRouting options, got {type(routing).__name__}")
        unknown = sorted(set(routing or {}) - {"beta", "alpha", "t_max"})
        if unknown:
            raise ValueError(f"unknown routing options {unknown}; valid: alpha, beta, t_max")
        self.routing = None if routing is None else TaskRouting(d_model, **routing)
        self.embed = TimeLabelEmbedding(emb_dim, num_classes)
        self.patchify = nn.Conv2d(in_channels, d_model, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            DiTBlock(d_model, n_heads, mlp_ratio, emb_dim, moe if (moe is not None and i % moe_every == 0) else None)
            for i in range(depth))
        self.norm_out = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(emb_dim, 2 * d_model)
        self.head = nn.Linear(d_model, patch * patch * in_channels)
        for layer in (self.modulation_out, self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def moe_layers(self) -> list[MoEMLP]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoEMLP)]

    def aux_loss(self) -> Tensor:
        """Mean expert-balance loss of the last forward's MoE blocks (0 if dense)."""
        layers = self.moe_layers()
        if not layers:
            return torch.zeros(())
        return torch.stack([m.last_balance_loss for m in layers]).mean()

    def forward(self, x: Tensor, t: Tensor, label: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels or H != self.image_size or W != self.image_size:
            raise ValueError(f"x must be [B, {self.in_channels}, {self.image_size}, {self.image_size}], "
                             f"got {tuple(x.shape)}")
        emb = self.embed(t, label)  # [B, emb_dim]
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos  # [B, T, D]
        if self.routing is None:
            for block in self.blocks:
                h = block(h, emb)
        else:
            mask = self.routing.mask(t, dtype=h.dtype, device=h.device).unsqueeze(1)  # [B, 1, D]
            for block in self.blocks:
                h = block(h, emb, mask)
        shift, scale = self.modulation_out(F.silu(emb)).unsqueeze(1).chunk(2, dim=-1)
        h = self.head(self.norm_out(h) * (1 + scale) + shift)  # [B, T, p*p*C]
        p, g = self.patch, self.grid
        h = h.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # [B, C, g, p, g, p]
        return h.reshape(B, C, H, W)
