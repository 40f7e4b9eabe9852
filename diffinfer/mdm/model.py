"""The masked-model protocol that the decode loop sees.

A model answers ``logits(tokens) -> [B, L, V]``: for every position, the logits of the clean
token given the canvas (time-free, as in MDLM / RADD), with a ``mask_id`` inside the
vocabulary. Optional capabilities are declared, never guessed:

- ``takes_time``: ``logits(tokens, t=...)`` wants the masked fraction ``t`` ``[B]``;
- ``shift_logits``: the network was initialised from an autoregressive model and its
  position ``i`` predicts token ``i + 1`` (Dream, Ye et al. 2025; Dimple, Yu et al. 2025);
  the protocol shifts by one so position ``i`` predicts token ``i`` (SDAR does not shift);
- ``takes_attention_mask``: ``logits(tokens, attention_mask=...)`` ignores padded keys;
- ``takes_rows``: ``logits(tokens, rows=...)`` is told which rows of the decode batch the
  canvases ``tokens`` are (``rows`` ``[b]``, long), so a model with per-row conditioning (an
  image per row, ``mdm.conditional``) picks its rows' conditions;
- ``supports_kv_cache``: ``logits_with_cache(tokens) -> (logits, cache)`` and
  ``logits_window(tokens_window, start, cache) -> logits`` (Fast-dLLM, Wu et al. 2025).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def shift_right(logits: Tensor) -> Tensor:
    """Dream's shift for AR-initialised models: position ``i`` takes the logits the network
    produced at ``i - 1`` (position 0 keeps its own). ``[B, L, V] -> [B, L, V]``."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


class MaskedModel:
    """Base adapter: subclasses implement ``raw_logits`` (and, for the key/value cache,
    ``raw_logits_with_cache`` / ``raw_logits_window``); the shift is applied here only."""

    takes_time = False
    shift_logits = False
    takes_attention_mask = False
    takes_rows = False
    supports_kv_cache = False

    def __init__(self, mask_id: int, vocab_size: int):
        if not 0 <= int(mask_id) < int(vocab_size):
            raise ValueError(f"mask_id {mask_id} is outside the vocabulary [0, {vocab_size})")
        self.mask_id, self.vocab_size = int(mask_id), int(vocab_size)

    def raw_logits(self, tokens: Tensor, **kwargs) -> Tensor:
        raise NotImplementedError

    def logits(self, tokens: Tensor, **kwargs) -> Tensor:
        out = self.raw_logits(tokens, **kwargs)
        return shift_right(out) if self.shift_logits else out

    def __call__(self, tokens: Tensor, **kwargs) -> Tensor:
        return self.logits(tokens, **kwargs)

    def logits_with_cache(self, tokens: Tensor):
        out, cache = self.raw_logits_with_cache(tokens)
        return (shift_right(out) if self.shift_logits else out), cache

    def logits_window(self, tokens_window: Tensor, start: int, cache, tokens: Tensor | None = None) -> Tensor:
        """Logits of positions ``[start, start + W)``; with a shift the window is widened by one
        to the left (``tokens``, the whole canvas, supplies that token)."""
        if not self.shift_logits:
            return self.raw_logits_window(tokens_window, start, cache)
        if start == 0:
            return shift_right(self.raw_logits_window(tokens_window, 0, cache))
        wide = torch.cat([tokens[:, start - 1:start], tokens_window], dim=1)
        return self.raw_logits_window(wide, start - 1, cache)[:, :-1]


class CharTransformerModel(MaskedModel):
    """Our bidirectional ``CharTransformer`` (``diffinfer.nets``) with its key/value cache."""

    supports_kv_cache = True

    def __init__(self, net: nn.Module, mask_id: int, shift_logits: bool | None = None):
        super().__init__(mask_id, net.vocab_size)
        if getattr(net, "causal", False):
            raise ValueError("a causal CharTransformer is an autoregressive model, not a masked one")
        self.net = net
        if shift_logits is not None:  # e.g. the zoo's shakespeare-char, trained from shakespeare-ar
            self.shift_logits = bool(shift_logits)

    @torch.no_grad()
    def raw_logits(self, tokens: Tensor) -> Tensor:
        return self.net(tokens)

    @torch.no_grad()
    def raw_logits_with_cache(self, tokens: Tensor):
        return self.net.forward_with_cache(tokens)

    @torch.no_grad()
    def raw_logits_window(self, tokens_window: Tensor, start: int, cache) -> Tensor:
        return self.net.forward_window(tokens_window, start, cache)


def as_masked_model(model, mask_id: int | None = None):
    """Accept anything with ``logits`` and ``mask_id`` (a ``MaskedModel``, a ``MarkovChain``);
    wrap a ``CharTransformer`` given its ``mask_id``, or an object holding a bidirectional one as
    ``net`` (the zoo's ``TextModel``), so its key/value cache is available."""
    from ..nets.char_transformer import CharTransformer

    if isinstance(model, CharTransformer):
        if mask_id is None:
            raise ValueError("give mask_id to decode with a bare CharTransformer")
        if model.attention == "block-causal":
            from .block_diffusion import BlockCausalModel
            return BlockCausalModel(model, mask_id)
        return CharTransformerModel(model, mask_id)
    net = getattr(model, "net", None)
    if (isinstance(net, CharTransformer) and net.attention == "block-causal" and hasattr(model, "mask_id")
            and not isinstance(model, MaskedModel)):
        from .block_diffusion import BlockCausalModel  # e.g. zoo "shakespeare-block": the exact block cache
        if mask_id is not None and mask_id != model.mask_id:
            raise ValueError(f"mask_id {mask_id} disagrees with the model's {model.mask_id}")
        return BlockCausalModel(net, model.mask_id, getattr(model, "shift_logits", False))
    if (isinstance(net, CharTransformer) and not net.causal and hasattr(model, "mask_id")
            and net.attention != "block-causal"):
        # e.g. zoo "shakespeare-char": adds the KV cache, keeps its logit shift
        return CharTransformerModel(net, model.mask_id, getattr(model, "shift_logits", False))
    if not callable(getattr(model, "logits", None)) or not hasattr(model, "mask_id"):
        raise TypeError(f"{type(model).__name__} is not a masked model: it needs logits(tokens) and mask_id")
    if mask_id is not None and mask_id != model.mask_id:
        raise ValueError(f"mask_id {mask_id} disagrees with the model's {model.mask_id}")
    vocab = int(getattr(model, "vocab_size"))
    if not 0 <= int(model.mask_id) < vocab:
        raise ValueError(f"mask_id {model.mask_id} is outside the vocabulary [0, {vocab})")
    return model
