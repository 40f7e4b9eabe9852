"""A small character-level transformer (nanoGPT-style pre-norm blocks).

Bidirectional and time-free by default: fed a canvas with mask tokens it returns the
logits of the clean token at every position (MDLM / RADD show a masked-diffusion
model needs no time input). ``causal=True`` gives the autoregressive reference model
(next-token logits at each position).

Besides the plain ``forward`` it has the key/value-cache forward used by Fast-dLLM
(Wu et al. 2025, "Fast-dLLM: Training-free acceleration of diffusion LLM by enabling
KV cache and parallel decoding", arXiv:2505.22618): ``forward_with_cache`` runs the whole
canvas and keeps every layer's keys and values; ``forward_window`` recomputes only the
positions ``[start, end)`` and reads the other positions' keys and values from the cache.
``end = L`` is the prefix cache, ``end < L`` the dual cache.

``attention="block-causal", block=K`` is the block-diffusion model (SDAR, Cheng et al. 2025;
BD3-LM, Arriola et al. 2025, "Block diffusion: interpolating between autoregressive and
diffusion language models"): token ``i`` attends to token ``j`` iff ``j // K <= i // K``
(causal across blocks, bidirectional within one). ``forward`` applies that mask in one pass
(training); ``forward_blocks`` evaluates the same function one block at a time, appending each
block's keys and values to a cache, so the keys and values of finished blocks are exact and are
computed once (``block=1`` is the causal model, ``block >= L`` the bidirectional one).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Per-layer keys and values of a whole canvas, each ``[B, H, L, D/H]``."""

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def select(self, idx: Tensor) -> "KVCache":
        """Rows ``idx`` of the cache (batch first, like solver state)."""
        return KVCache([k[idx] for k in self.keys], [v[idx] for v in self.values])


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, dropout: float, block: int | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal, self.dropout, self.block = n_heads, causal, dropout, block
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, W, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # each [B, W, D]
        shape = (B, W, self.n_heads, D // self.n_heads)
        return tuple(t.view(shape).transpose(1, 2) for t in (q, k, v))  # [B, H, W, Dh]

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, q_start: int, mask: Tensor | None = None) -> Tensor:
        """Queries at positions ``q_start + [0, W)`` against keys at ``[0, Lk)``; ``mask``
        ``[W, Lk]`` (True: attend) replaces the model's own pattern."""
        if mask is None and self.causal:
            W, Lk = q.shape[2], k.shape[2]
            qpos = torch.arange(q_start, q_start + W, device=q.device)[:, None]
            mask = torch.arange(Lk, device=q.device)[None, :] <= qpos  # [W, Lk]
        elif mask is None and self.block is not None:
            W, Lk, K = q.shape[2], k.shape[2], self.block
            if (Lk - 1) // K > q_start // K:  # else every key lies in a block <= every query's: no mask
                qblk = torch.arange(q_start, q_start + W, device=q.device)[:, None] // K
                mask = torch.arange(Lk, device=q.device)[None, :] // K <= qblk  # [W, Lk]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)  # [B, H, W, Dh]
        B, H, W, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, W, H * Dh))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Full attention over ``x`` ``[B, L, D]``; returns output and this layer's k, v."""
        q, k, v = self._heads(x)
        return self._attend(q, k, v, 0, mask), k, v

    def forward_extend(self, x: Tensor, start: int, k_prev: Tensor, v_prev: Tensor):
        """Block ``x`` ``[B, W, D]`` at ``[start, start+W)`` attending to itself and to the cached
        keys/values ``[B, H, start, Dh]`` of every earlier position (no mask: a block-causal block
        sees exactly these); returns the output and the keys/values of ``[0, start+W)``."""
        q, k, v = self._heads(x)
        keys, values = torch.cat([k_prev, k], dim=2), torch.cat([v_prev, v], dim=2)  # [B, H, start+W, Dh]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, keys, values, dropout_p=drop)  # [B, H, W, Dh]
        B, H, W, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, W, H * Dh)), keys, values

    def forward_window(self, x: Tensor, start: int, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        """Window ``x`` ``[B, W, D]`` at positions ``[start, start+W)``; other keys/values
        come from the cache ``[B, H, L, Dh]`` (Fast-dLLM prefix / dual cache)."""
        q, k, v = self._heads(x)
        end = start + x.shape[1]
        keys = torch.cat([k_cache[:, :, :start], k, k_cache[:, :, end:]], dim=2)  # [B, H, L, Dh]
        values = torch.cat([v_cache[:, :, :start], v, v_cache[:, :, end:]], dim=2)
        return self._attend(q, keys, values, start)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, dropout: float, block: int | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, causal, dropout, block)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln1(x), mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v

    def forward_extend(self, x: Tensor, start: int, k_prev: Tensor, v_prev: Tensor):
        a, k, v = self.attn.forward_extend(self.ln1(x), start, k_prev, v_prev)
        x = x + a
        return x + self.mlp(self.ln2(x)), k, v

    def forward_window(self, x: Tensor, start: int, k_cache: Tensor, v_cache: Tensor) -> Tensor:
        x = x + self.attn.forward_window(self.ln1(x), start, k_cache, v_cache)
        return x + self.mlp(self.ln2(x))


ATTENTIONS = ("bidirectional", "causal", "block-causal")


class CharTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, a final norm and a linear head.

    ``attention``: ``"bidirectional"`` (default, or ``"causal"`` when ``causal=True``),
    ``"causal"``, or ``"block-causal"`` with ``block=K`` (block diffusion, see the module
    docstring)."""

    def __init__(self, vocab_size: int, d_model: int = 256, n_layers: int = 6, n_heads: int = 8,
                 max_len: int = 256, causal: bool = False, dropout: float = 0.0,
                 attention: str | None = None, block: int | None = None):
        super().__init__()
        if attention is None:
            attention = "causal" if causal else "bidirectional"
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(ATTENTIONS)}")
        if causal and attention != "causal":
            raise ValueError(f"causal=True contradicts attention={attention!r}")
        if attention == "block-causal":
            if isinstance(block, bool) or not isinstance(block, int) or block < 1:
                raise ValueError(f"attention='block-causal' needs an int block >= 1, got {block!r}")
        elif block is not None:
            raise ValueError(f"block={block!r} is only for attention='block-causal' (got {attention!r})")
        causal = attention == "causal"
        self.vocab_size, self.max_len, self.causal = vocab_size, max_len, causal
        self.attention, self.block = attention, block
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, causal, dropout, block) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def _check(self, tokens: Tensor) -> None:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"length {tokens.shape[1]} exceeds max_len {self.max_len}")

    def _embed(self, tokens: Tensor, start: int = 0, positions: Tensor | None = None) -> Tensor:
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device) if positions is None else positions
        return self.drop(self.tok(tokens) + self.pos(pos))  # [B, W, D]

    def forward_masked(self, tokens: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """Logits ``[B, N, V]`` of ``tokens`` ``[B, N]`` at position indices ``positions`` ``[N]``
        under an explicit attention ``mask`` ``[N, N]`` (True: attend). Block-diffusion training
        feeds ``[noisy copy | clean sequence]`` this way (BD3-LM, Arriola et al. 2025, sec. 3.2)."""
        if tokens.dim() != 2 or positions.shape != tokens.shape[1:] or mask.shape != (tokens.shape[1],) * 2:
            raise ValueError(f"need tokens [B, N], positions [N], mask [N, N]; got {tuple(tokens.shape)}, "
                             f"{tuple(positions.shape)}, {tuple(mask.shape)}")
        if int(positions.max()) >= self.max_len:
            raise ValueError(f"position {int(positions.max())} exceeds max_len {self.max_len}")
        x = self._embed(tokens, positions=positions)
        for block in self.blocks:
            x = block(x, mask)[0]
        return self.head(self.ln_f(x))

    def forward_blocks(self, tokens: Tensor, start: int = 0, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """Block-causal evaluation one block at a time: logits ``[B, W, V]`` of ``tokens``
        ``[B, W]`` at positions ``[start, start+W)`` (``start`` a multiple of ``block``) given
        ``cache``, the keys/values of ``[0, start)`` (``None`` when ``start = 0``), and the cache
        extended to ``[0, start+W)``. Each block ``[s, s+K)`` runs through every layer attending
        to the cache and to itself, with the same shapes whether its keys were cached or not, so
        ``forward_blocks(x)`` and ``forward_blocks(x[:, s:], s, cache of x[:, :s])`` give the
        same bits at ``[s, L)`` (same batch). Equal to ``forward`` up to round-off."""
        if self.attention != "block-causal":
            raise ValueError(f"forward_blocks needs attention='block-causal', this model is {self.attention!r}")
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, W], got shape {tuple(tokens.shape)}")
        K, B, W = self.block, tokens.shape[0], tokens.shape[1]
        cached = 0 if cache is None else cache.length
        if start % K or start != cached:
            raise ValueError(f"start {start} must be a multiple of the block {K} and equal the cached "
                             f"length {cached}")
        if start + W > self.max_len:
            raise ValueError(f"length {start + W} exceeds max_len {self.max_len}")
        if cache is None:
            h = self.blocks[0].attn.n_heads
            dh = self.tok.embedding_dim // h
            p = self.tok.weight
            empty = p.new_zeros(B, h, 0, dh)
            cache = KVCache([empty] * len(self.blocks), [empty] * len(self.blocks))
        keys, values, out = list(cache.keys), list(cache.values), []
        for s in range(start, start + W, K):
            x = self._embed(tokens[:, s - start:s - start + K], s)  # [B, <=K, D]
            for i, block in enumerate(self.blocks):
                x, keys[i], values[i] = block.forward_extend(x, s, keys[i], values[i])
            out.append(self.head(self.ln_f(x)))
        return torch.cat(out, dim=1), KVCache(keys, values)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``[B, L, vocab_size]`` for ``tokens`` ``[B, L]``."""
        return self.forward_with_cache(tokens)[0]

    def forward_with_cache(self, tokens: Tensor) -> tuple[Tensor, KVCache]:
        """Full forward that also returns every layer's keys and values (Fast-dLLM)."""
        self._check(tokens)
        x = self._embed(tokens)
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k)
            values.append(v)
        return self.head(self.ln_f(x)), KVCache(keys, values)

    def forward_window(self, tokens: Tensor, start: int, cache: KVCache) -> Tensor:
        """Logits ``[B, W, V]`` for ``tokens`` ``[B, W]`` at positions ``[start, start+W)``,
        reading the other positions' keys and values from ``cache`` (Fast-dLLM prefix cache
        when the window runs to the end, dual cache otherwise). Equal to the full forward
        when the cached positions hold the tokens the cache was built from and, for the
        bidirectional model, the window does too; for ``causal=True`` the prefix cache is exact
        whatever the window holds."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, W], got shape {tuple(tokens.shape)}")
        end = start + tokens.shape[1]
        if start < 0 or end > cache.length:
            raise ValueError(f"window [{start}, {end}) outside the cached length {cache.length}")
        x = self._embed(tokens, start)
        for block, k, v in zip(self.blocks, cache.keys, cache.values):
            x = block.forward_window(x, start, k, v)
        return self.head(self.ln_f(x))
