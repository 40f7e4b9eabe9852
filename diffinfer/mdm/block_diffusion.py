"""Block diffusion with an exact key/value cache (SDAR, Cheng et al. 2025, "SDAR: a synergistic
diffusion-autoregression paradigm for scalable sequence generation"; BD3-LM, Arriola et al. 2025,
"Block diffusion: interpolating between autoregressive and diffusion language models").

A block-causal model (``CharTransformer(attention="block-causal", block=K)``) attends causally
across blocks of ``K`` positions and bidirectionally within one. Its output at a position depends
only on the tokens of its own and earlier blocks, so once a block is finished its keys and values
never change: caching them is exact, not the approximation the Fast-dLLM caches make for a
bidirectional model.

- ``BlockCausalModel``: the masked-model adapter; ``logits(tokens)`` evaluates the network one
  block at a time from scratch (``CharTransformer.forward_blocks``), ``logits_blocks(window,
  start, cache)`` evaluates only ``[start, start + W)`` given the cached keys/values of
  ``[0, start)``; it counts the positions the network computes (``positions``).
- ``decode(..., cache="block")`` (``caching.LogitsEvaluator``) keeps the keys/values of every
  finished model block and recomputes only the model blocks that hold the decode block (plus,
  once, the block just finished). With the same rows in the batch throughout, it gives the same
  bits as ``cache="none"``.
- ``block_diffusion_loss``: the training loss: each block gets its own masking time and is
  denoised given the clean earlier blocks, all blocks in one pass over ``[noisy | clean]``
  (BD3-LM, sec. 3.2, vectorised training); ``block_elbo`` evaluates it.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from .model import MaskedModel


def pair_mask(length: int, block: int, device=None) -> Tensor:
    """``[2L, 2L]`` attention mask (True: attend) of ``[noisy copy | clean sequence]``: a noisy
    block sees itself and the clean earlier blocks; the clean sequence is block-causal."""
    blk = torch.arange(length, device=device) // block
    same = blk[:, None] == blk[None, :]  # [L, L]
    before = blk[None, :] < blk[:, None]
    upto = blk[None, :] <= blk[:, None]
    top = torch.cat([same, before], dim=1)  # noisy queries: noisy keys | clean keys
    bottom = torch.cat([torch.zeros_like(same), upto], dim=1)  # clean queries never see noisy keys
    return torch.cat([top, bottom], dim=0)


def _check_net(net) -> int:
    if getattr(net, "attention", None) != "block-causal":
        raise ValueError("block diffusion needs a CharTransformer with attention='block-causal'")
    return int(net.block)


def block_diffusion_loss(net, tokens: Tensor, mask_id: int, generator: torch.Generator | None = None,
                         t: Tensor | None = None, t_min: float = 1e-3, shift: bool = False) -> Tensor:
    """Block-diffusion ELBO (nats per token; an upper bound on the NLL):
    ``mean_rows sum_b (1 / t_b) sum_{i in b masked} CE_i / L``, block ``b`` of each row masked with
    its own probability ``t_b ~ U(t_min, 1)`` (or ``t`` ``[B, n_blocks]``) and denoised given the
    clean blocks before it (``log p(x) = sum_b log p(x_b | x_<b)``, each term MDLM's bound).

    ``shift=True``: Dream's logit shift (an AR-initialised model): token ``i``'s logits are the
    network's output at ``i - 1``; for the first token of a block that is the last position of the
    clean previous block (a plain next-token prediction), inside a block the noisy block's.

    ``net``: a block-causal ``CharTransformer``; ``tokens`` ``[B, L]``."""
    K = _check_net(net)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got {tuple(tokens.shape)}")
    B, L = tokens.shape
    n_blocks = -(-L // K)
    if t is None:
        t = t_min + (1 - t_min) * torch.rand(B, n_blocks, generator=generator)
    elif t.shape != (B, n_blocks):
        raise ValueError(f"t must be [B, n_blocks] = [{B}, {n_blocks}], got {tuple(t.shape)}")
    t_pos = t.repeat_interleave(K, dim=1)[:, :L]  # [B, L]
    masked = torch.rand(B, L, generator=generator) < t_pos
    noisy = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
    pos = torch.arange(L, device=tokens.device)
    out = net.forward_masked(torch.cat([noisy, tokens], 1), torch.cat([pos, pos]),
                             pair_mask(L, K, tokens.device))  # [B, 2L, V]
    logits = out[:, :L]
    if shift:
        first = (pos[1:] % K == 0)[None, :, None]  # [1, L-1, 1]: block starts read the clean copy
        logits = torch.cat([logits[:, :1], torch.where(first, out[:, L:2 * L - 1], logits[:, :-1])], dim=1)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float32; float64 kept
    ce = F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="none").view(B, L)
    return ((ce * masked) / t_pos.to(ce.dtype)).sum(1).mean() / L


@torch.no_grad()
def block_elbo(net, tokens: Tensor, mask_id: int, draws: int = 8, seed: int = 0, shift: bool = False) -> float:
    """``block_diffusion_loss`` averaged over ``draws`` seeded draws (nats per token)."""
    total = 0.0
    for k in range(draws):
        gen = torch.Generator().manual_seed(seed * 1000 + k)
        total += float(block_diffusion_loss(net, tokens, mask_id, gen, shift=shift))
    return total / draws


class BlockCausalModel(MaskedModel):
    """A block-causal ``CharTransformer`` as a masked model, with the exact block cache.

    ``block_size``: the model's block; ``positions``: positions the network has computed, summed
    over rows and calls (the cost the cache lowers); ``shift_logits``: Dream's shift (the cache
    applies it to the windows, keeping a block's first logits, read off the finished block)."""

    def __init__(self, net, mask_id: int, shift_logits: bool = False):
        super().__init__(mask_id, net.vocab_size)
        self.block_size = _check_net(net)
        self.shift_logits = bool(shift_logits)
        self.net, self.max_len = net, net.max_len
        self.positions = 0

    @torch.no_grad()
    def raw_logits(self, tokens: Tensor) -> Tensor:
        """Every position, block by block from an empty cache (the uncached path: the same
        per-block computations as the cached one)."""
        self.positions += tokens.numel()
        return self.net.forward_blocks(tokens)[0]

    @torch.no_grad()
    def logits_blocks(self, tokens_window: Tensor, start: int, cache):
        """``(raw logits [B, W, V], cache of [0, start + W))`` for positions ``[start, start + W)``
        given ``cache``, the keys/values of ``[0, start)`` (``None`` for ``start = 0``); unshifted."""
        self.positions += tokens_window.numel()
        return self.net.forward_blocks(tokens_window, start, cache)


def truncate(cache, length: int):
    """The keys/values of positions ``[0, length)``."""
    from ..nets.char_transformer import KVCache
    return KVCache([k[:, :, :length] for k in cache.keys], [v[:, :, :length] for v in cache.values])
