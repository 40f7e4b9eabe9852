"""Computing the step's logits, with the caches that make it cheaper.

- ``none``: every unfinished row is evaluated at every step.
- ``reuse``: a row whose canvas did not change since its last evaluation reuses its logits
  (RADD, Ou et al. 2024, sec. 4: a time-free model gives the same output for the same input,
  so this is exact, not approximate; it pays off when steps reveal zero tokens).
- ``prefix`` / ``dual``: Fast-dLLM key/value caches (Wu et al. 2025, sec. 3.2). At the start of
  each block the whole canvas is run once and every layer's keys and values are kept; inside the
  block only ``[block start, L)`` (prefix) or ``[block start, block end)`` (dual) is recomputed,
  reading the other positions' keys and values from the cache. Approximate for a bidirectional
  model (the cached positions do not see the block's new tokens until the next block).
- ``block``: the exact cache of a block-causal model (SDAR / BD3-LM, ``block_diffusion``): the
  keys and values of every finished model block are kept; each step recomputes only the model
  blocks from the end of the cache to the end of the decode block. Exact: a block-causal
  model's finished blocks never see later positions.

Classifier-free guidance for text follows LLaDA (Nie et al. 2025, app. B.3): the unconditional
input masks the prompt, and ``logits = u + (w + 1)(c - u)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..registry import Registry


@dataclass(frozen=True)
class CacheMode:
    """What a cache mode does: ``reuse`` a row's logits while its canvas is unchanged, or keep
    Fast-dLLM key/value caches recomputing the ``window`` ``"prefix"`` (block start to the end)
    or ``"dual"`` (the block only)."""

    name: str
    reuse: bool = False
    window: str | None = None

    @property
    def kv(self) -> bool:
        return self.window is not None


_MODES = {
    "none": lambda: CacheMode("none"),
    "reuse": lambda: CacheMode("reuse", reuse=True),
    "prefix": lambda: CacheMode("prefix", window="prefix"),
    "dual": lambda: CacheMode("dual", window="dual"),
    "block": lambda: CacheMode("block", window="block"),
}
#: cache mode name -> ``CacheMode``
CACHES = Registry("cache", _MODES)
CACHE_MODES = list(_MODES)  # in this order (the CLI's --cache choices)


def guided(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """LLaDA's classifier-free guidance on logits ``[B, L, V]``."""
    return uncond + (scale + 1) * (cond - uncond)


class LogitsEvaluator:
    """Evaluates the model for the rows that need it and counts each row's model calls.

    Args:
        model: a masked model (see ``diffinfer.mdm.model``).
        mode: one of ``CACHE_MODES``.
        cfg_scale: LLaDA guidance weight ``w`` (0: off); doubles each row's calls.
        prompt_mask: ``[B, L]`` positions masked out in the unconditional input.
        attention_mask: ``[B, L]`` real (not padded) positions, for models that take it.
        blocks, gen_end: the decode's block policy and generation ends ``[B]``; the ``block`` cache
            reads them to compute, at a block's end, the block the rows move to next.
    """

    def __init__(self, model, mode: str | None, batch: int, cfg_scale: float = 0.0,
                 prompt_mask: Tensor | None = None, attention_mask: Tensor | None = None,
                 blocks=None, gen_end: Tensor | None = None):
        mode = "none" if mode is None else mode
        spec = CACHES.get(mode)
        if spec.name != "none" and getattr(model, "takes_time", False):
            raise ValueError(f"cache={mode!r} needs a time-free model; this one takes a time input")
        if spec.window == "block":
            if getattr(model, "block_size", None) is None or not callable(getattr(model, "logits_blocks", None)):
                raise ValueError("cache='block' needs a block-causal model (CharTransformer(attention="
                                 "'block-causal', block=K), e.g. zoo 'shakespeare-block')")
            if cfg_scale:
                raise ValueError("the key/value cache does not combine with classifier-free guidance")
        elif spec.kv:
            if not getattr(model, "supports_kv_cache", False):
                raise ValueError(f"cache={mode!r} needs a model with a key/value-cache forward")
            if cfg_scale:
                raise ValueError("the key/value cache does not combine with classifier-free guidance")
            if getattr(model, "takes_rows", False):
                raise ValueError(f"cache={mode!r} does not pass row indices; a per-row conditioned model "
                                 f"(takes_rows) decodes with cache 'none' or 'reuse'")
        self.model, self.mode, self.spec, self.cfg_scale = model, mode, spec, float(cfg_scale)
        self.prompt_mask, self.attention_mask = prompt_mask, attention_mask
        self.nfe = torch.zeros(batch, dtype=torch.long)  # model calls per row
        self.last: Tensor | None = None  # [B, L, V]
        self.last_tokens: Tensor | None = None  # [B, L]
        self.kv = None  # keys/values of the rows kv_rows (those still active), from the block start
        self.kv_rows: Tensor | None = None
        self.blocks, self.gen_end = blocks, gen_end

    # ---- one call of the model on some rows ---------------------------------------------
    def _inputs(self, rows: Tensor, t: Tensor | None) -> dict:
        """The keyword inputs the model declares for canvases of decode rows ``rows`` ``[b]`` at
        masked fractions ``t`` ``[b]``: time, padding mask, row indices."""
        kwargs = {}
        if getattr(self.model, "takes_time", False):
            kwargs["t"] = t
        if getattr(self.model, "takes_attention_mask", False) and self.attention_mask is not None:
            kwargs["attention_mask"] = self.attention_mask[rows]
        if getattr(self.model, "takes_rows", False):
            kwargs["rows"] = rows
        return kwargs

    def canvases(self, canvases: Tensor, rows: Tensor, t: Tensor | None) -> Tensor:
        """Logits ``[N, L, V]`` of extra canvases ``[N, L]`` belonging to decode rows ``rows``
        ``[N]`` at masked fractions ``t`` ``[N]`` (an unmasking policy's own call: no guidance,
        counted by the policy, not in ``nfe``)."""
        out = self.model.logits(canvases, **self._inputs(rows, t))
        if out.shape[:2] != canvases.shape:
            raise ValueError(f"the model returned logits of shape {tuple(out.shape)} for a "
                             f"{list(canvases.shape)} canvas")
        return out

    def _model(self, tokens: Tensor, rows: Tensor, t: Tensor | None) -> Tensor:
        kwargs = self._inputs(rows, None if t is None else t[rows])
        x = tokens[rows]  # [b, L]
        if not self.cfg_scale:
            self.nfe[rows] += 1
            return self.model.logits(x, **kwargs)
        uncond = x.masked_fill(self.prompt_mask[rows], self.model.mask_id)
        kwargs = {k: torch.cat([v, v]) for k, v in kwargs.items()}
        both = self.model.logits(torch.cat([x, uncond]), **kwargs)  # [2b, L, V]
        self.nfe[rows] += 2
        return guided(both[: len(rows)], both[len(rows):], self.cfg_scale)

    def _store(self, rows: Tensor, logits: Tensor, tokens: Tensor) -> None:
        if self.last is None:
            B, L = tokens.shape
            self.last = torch.zeros(B, L, logits.shape[-1], dtype=logits.dtype, device=logits.device)
            self.last_tokens = torch.full_like(tokens, -1)
        if logits.dtype != self.last.dtype:
            self.last = self.last.to(logits.dtype)
        self.last[rows] = logits
        self.last_tokens[rows] = tokens[rows]

    # ---- the step's logits --------------------------------------------------------------
    def __call__(self, tokens: Tensor, active: Tensor, t: Tensor | None = None,
                 block_start: Tensor | None = None, block_end: Tensor | None = None,
                 new_block: bool = False) -> Tensor:
        """Logits ``[B, L, V]`` for the ``active`` ``[B]`` rows (others hold stale values)."""
        if self.spec.window == "block":
            return self._block_step(tokens, active, block_start, block_end, new_block)
        if self.spec.kv:
            return self._kv_step(tokens, active, block_start, block_end, new_block)
        need = active.clone()
        if self.spec.reuse and self.last is not None:
            need &= (tokens != self.last_tokens).any(-1)
        rows = need.nonzero()[:, 0]
        if len(rows):
            self._store(rows, self._model(tokens, rows, t), tokens)
        return self.last

    def _kv_step(self, tokens, active, block_start, block_end, new_block):
        rows = active.nonzero()[:, 0]
        if new_block or self.kv is None:
            logits, self.kv = self.model.logits_with_cache(tokens[rows])
            self.kv_rows = rows
            self.nfe[rows] += 1
            self._store(rows, logits, tokens)
            return self.last
        if len(rows) != len(self.kv_rows):
            # rows only ever finish, never restart: keep the cache of the rows still active
            self.kv = self.kv.select(torch.searchsorted(self.kv_rows, rows))
            self.kv_rows = rows
        start = int(block_start[rows].min())
        end = tokens.shape[1] if self.spec.window == "prefix" else int(block_end[rows].max())
        window = self.model.logits_window(tokens[rows, start:end], start, self.kv, tokens=tokens[rows])
        self.nfe[rows] += 1
        self.last[rows, start:end] = window.to(self.last.dtype)
        self.last_tokens[rows] = tokens[rows]
        return self.last

    def _next_end(self, tokens, rows, block_end) -> int:
        """Where the block some rows move to after this call ends (those rows' logits are read
        there): the block policy's next end for a fixed or whole-canvas policy whose next block
        holds a mask; else the canvas end."""
        from .blocks import FixedBlocks, WholeCanvas
        L = tokens.shape[1]
        if not isinstance(self.blocks, (FixedBlocks, WholeCanvas)) or self.gen_end is None:
            return L
        nxt = self.blocks.next_end(block_end[rows], self.gen_end[rows], None)  # [b]
        pos = torch.arange(L)[None, :]
        inside = (pos >= block_end[rows, None]) & (pos < nxt[:, None])
        has_mask = ((tokens[rows] == self.model.mask_id) & inside).any(-1) | (nxt >= self.gen_end[rows])
        return int(nxt.max()) if bool(has_mask.all()) else L  # an all-given block: the driver moves on again

    def _block_step(self, tokens, active, block_start, block_end, new_block):
        """Exact block cache: ``self.kv`` holds the keys/values of ``[0, c)``, whole model blocks
        before every active row's decode block (so final); the model blocks from ``c`` to the end
        of the decode block (at a block's end: of the next one) are evaluated, then the cache
        keeps the finished ones."""
        from .block_diffusion import truncate
        rows = active.nonzero()[:, 0]
        K, L = self.model.block_size, tokens.shape[1]
        if self.kv is not None and not torch.equal(rows, self.kv_rows):
            # rows only ever finish, never restart: keep the cache of the rows still active
            self.kv = self.kv.select(torch.searchsorted(self.kv_rows, rows))
        cached = 0 if self.kv is None else self.kv.length
        pos = torch.arange(L)[None, :]
        open_block = ((tokens[rows] == self.model.mask_id) & (pos >= block_start[rows, None])
                      & (pos < block_end[rows, None])).any(-1)  # [b] False: the row moves on after this call
        first_open = torch.where(open_block, block_start[rows], block_end[rows])  # [b]
        final = K * (int(first_open.min()) // K)  # every position before it is final
        end = self._next_end(tokens, rows, block_end) if new_block else int(block_end[rows].max())
        end = min(L, -(-end // K) * K)  # the model block holding the decode block's end
        logits, kv = self.model.logits_blocks(tokens[rows, cached:end], cached, self.kv)
        self.kv, self.kv_rows = truncate(kv, max(final, cached)), rows
        self.nfe[rows] += 1
        if self.last is None:
            self.last = logits.new_zeros(tokens.shape[0], L, logits.shape[-1])
            self.last_tokens = torch.full_like(tokens, -1)
        logits = logits.to(self.last.dtype)
        if not getattr(self.model, "shift_logits", False):
            self.last[rows, cached:end] = logits
        else:  # Dream's shift: position i reads i - 1; position `cached` keeps what a finished block gave it
            self.last[rows, cached + 1:end] = logits[:, :-1]
            if cached == 0:
                self.last[rows, 0] = logits[:, 0]
        self.last_tokens[rows] = tokens[rows]
        return self.last
