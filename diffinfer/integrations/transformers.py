"""Adapters from Hugging Face ``transformers`` models to the masked-model protocol of
``diffinfer.mdm`` (``logits(tokens) -> [B, L, V]`` with a ``mask_id``).

- ``MaskedLMModel``: any ``AutoModelForMaskedLM`` (BERT, RoBERTa, ModernBERT, ...); the mask
  token comes from the tokenizer (``mask_token_id``) or the config, unless given.
- ``DiffusionLMModel``: LLaDA / Dream / SDAR-style diffusion LMs whose class is shaped like a
  causal LM (``model(input_ids).logits``). ``shift=True`` for models initialised from an
  autoregressive one whose position ``i`` predicts token ``i + 1`` (Dream, Dimple); LLaDA and
  SDAR use ``shift=False``. Where the network's ``forward`` takes ``past_key_values`` (or
  ``cache``) the adapter offers the decode loop's Fast-dLLM key/value caches
  (``decode(..., cache="prefix" | "dual")``): the whole canvas is run once per block and the
  window reads the prefix's keys and values through ``past_key_values`` (for a causal-attention
  network the suffix never reaches the window, so ``dual`` is the same computation; for a
  bidirectional one ``dual`` is refused, as ``past_key_values`` holds only a prefix).

Both adapters read the context length from ``config.max_position_embeddings`` (``max_len``:
``decode`` refuses a longer canvas with a clear error), take a token-suppression list
(``suppress_tokens``) and a transformers ``LogitsProcessorList`` (``logits_processor``;
each position's scores are processed with its row's canvas as ``input_ids``), and pass the
padding mask to the network. ``decode`` accepts a tokenizer's ``BatchEncoding`` as the
prompt: its ``attention_mask`` marks padding, which is dropped, not prompt.
``MaskedLMModel`` refuses causal language models (a ``*ForCausalLM`` or ``is_decoder``
config), pointing to ``DiffusionLMModel(shift=True)``.

Nothing here downloads: build or load the model yourself and pass it in.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..mdm.model import MaskedModel


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "out_features"):
        return int(emb.out_features)
    return int(model.config.vocab_size)


def _find_mask_id(model, tokenizer, mask_id):
    if mask_id is not None:
        return int(mask_id)
    if tokenizer is not None and getattr(tokenizer, "mask_token_id", None) is not None:
        return int(tokenizer.mask_token_id)
    cfg_id = getattr(model.config, "mask_token_id", None)
    if cfg_id is not None:
        return int(cfg_id)
    raise ValueError("no mask token: give mask_id, or a tokenizer with mask_token_id, or a config "
                     "with mask_token_id")


def _is_causal(model) -> bool:
    return type(model).__name__.endswith("ForCausalLM") or bool(getattr(model.config, "is_decoder", False))


def _cache_argument(model) -> str | None:
    """The keyword the network's ``forward`` takes a key/value cache by, or ``None``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    for name in ("past_key_values", "cache"):
        if name in params:
            return name
    return None


class HFKVCache:
    """The keys and values of a canvas (a transformers ``Cache`` or legacy tuples), per row;
    ``select(idx)`` keeps rows, ``prefix(n)`` is a fresh cache of the first ``n`` positions."""

    def __init__(self, cache):
        self.layers = _kv_tensors(cache)  # [(keys [B, H, L, D], values), ...]

    def select(self, idx: Tensor) -> "HFKVCache":
        new = object.__new__(HFKVCache)
        new.layers = [(k[idx.to(k.device)], v[idx.to(v.device)]) for k, v in self.layers]
        return new

    def prefix(self, n: int):
        from transformers import DynamicCache
        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k[:, :, :n].clone(), v[:, :, :n].clone(), i)
        return cache


def _kv_tensors(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "to_legacy_cache"):
        cache = cache.to_legacy_cache()
    return [(k, v) for k, v in cache]


class _HFModel(MaskedModel):
    takes_attention_mask = True

    def __init__(self, model, mask_id=None, tokenizer=None, suppress_tokens=None, logits_processor=None):
        super().__init__(_find_mask_id(model, tokenizer, mask_id), _vocab_size(model))
        self.model, self.tokenizer = model.eval(), tokenizer
        max_len = getattr(model.config, "max_position_embeddings", None)
        self.max_len = int(max_len) if max_len else None
        self.suppress_tokens = None
        if suppress_tokens is not None:
            ids = torch.as_tensor(list(suppress_tokens), dtype=torch.long)
            if ((ids < 0) | (ids >= self.vocab_size)).any():
                raise ValueError(f"suppress_tokens must lie in [0, {self.vocab_size})")
            if (ids == self.mask_id).any():
                raise ValueError("suppress_tokens holds the mask token (it is never proposed anyway)")
            self.suppress_tokens = ids
        if logits_processor is not None and not callable(logits_processor):
            raise TypeError("logits_processor must be a transformers LogitsProcessorList (or a callable "
                            "(input_ids [N, L], scores [N, V]) -> scores)")
        self.logits_processor = logits_processor

    def _device(self):
        return next(self.model.parameters()).device

    def _process(self, tokens: Tensor, logits: Tensor) -> Tensor:
        """Token suppression and the logits processors on ``[B, W, V]`` logits of the canvas
        rows ``tokens`` ``[B, L]``."""
        if self.suppress_tokens is not None:
            logits = logits.index_fill(-1, self.suppress_tokens.to(logits.device), float("-inf"))
        if self.logits_processor is not None:
            B, W, V = logits.shape
            ids = tokens.to(logits.device).repeat_interleave(W, dim=0)  # [B W, L]
            logits = self.logits_processor(ids, logits.reshape(B * W, V)).reshape(B, W, V)
        return logits

    @torch.no_grad()
    def raw_logits(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        dev = self._device()
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.long().to(dev)}
        out = self.model(input_ids=tokens.to(dev), **kwargs).logits  # [B, L, V]
        return self._process(tokens, out).to(tokens.device)


class MaskedLMModel(_HFModel):
    """A transformers ``AutoModelForMaskedLM`` as a masked-diffusion model (time-free).
    ``suppress_tokens`` / ``logits_processor``: see the module docstring."""

    def __init__(self, model, mask_id=None, tokenizer=None, suppress_tokens=None, logits_processor=None):
        if _is_causal(model):
            raise ValueError(f"{type(model).__name__} is a causal language model, not a masked one; for a "
                             f"diffusion LM with a causal-LM interface (LLaDA, Dream) use "
                             f"DiffusionLMModel(model, mask_id=..., shift=True) (shift=True when it was "
                             f"initialised from an autoregressive model, as Dream)")
        super().__init__(model, mask_id, tokenizer, suppress_tokens, logits_processor)


class DiffusionLMModel(_HFModel):
    """A LLaDA / Dream-style diffusion LM with a causal-LM-shaped interface.

    Args:
        model: the network; ``model(input_ids=..., attention_mask=...).logits`` is ``[B, L, V]``.
        mask_id: its mask token id (LLaDA 126336; Dream 151666), or from tokenizer / config.
        shift: ``True`` when position ``i`` predicts token ``i + 1`` (Dream, Dimple).
        attention_mask: pass the padding mask to the model (off for models that build their
            own bidirectional mask and reject a 2-D one).
        kv_cache: offer the prefix / dual key-value caches (default: when ``forward`` takes
            ``past_key_values``); see the module docstring.
        suppress_tokens, logits_processor: see the module docstring.
    """

    def __init__(self, model, mask_id=None, tokenizer=None, shift: bool = False, attention_mask: bool = True,
                 kv_cache: bool | None = None, suppress_tokens=None, logits_processor=None):
        super().__init__(model, mask_id, tokenizer, suppress_tokens, logits_processor)
        self.shift_logits = bool(shift)
        self.takes_attention_mask = bool(attention_mask)
        self._cache_arg = _cache_argument(model)
        if kv_cache and self._cache_arg is None:
            raise ValueError(f"{type(model).__name__}.forward takes no past_key_values: no key/value cache")
        self.supports_kv_cache = self._cache_arg is not None if kv_cache is None else bool(kv_cache)
        self.causal = _is_causal(model)

    @torch.no_grad()
    def raw_logits_with_cache(self, tokens: Tensor):
        """Logits ``[B, L, V]`` of the whole canvas and its keys and values (``HFKVCache``)."""
        dev = self._device()
        out = self.model(input_ids=tokens.to(dev), use_cache=True)
        cache = getattr(out, "cache", None) if self._cache_arg == "cache" else None
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError(f"{type(self.model).__name__} returned no key/value cache")
        return self._process(tokens, out.logits).to(tokens.device), HFKVCache(cache)

    @torch.no_grad()
    def raw_logits_window(self, tokens_window: Tensor, start: int, cache: HFKVCache) -> Tensor:
        """Logits of positions ``[start, start + W)``, reading positions ``< start`` from ``cache``."""
        W = tokens_window.shape[1]
        L = cache.layers[0][0].shape[2]
        if start + W < L and not self.causal:
            raise ValueError("the dual cache needs the suffix's keys and values, which past_key_values cannot "
                             "hold for a bidirectional model; use cache='prefix'")
        dev = self._device()
        pos = torch.arange(start, start + W, device=dev)[None].expand(tokens_window.shape[0], -1)
        out = self.model(input_ids=tokens_window.to(dev), position_ids=pos, use_cache=True,
                         **{self._cache_arg: cache.prefix(start)})
        return self._process(tokens_window, out.logits).to(tokens_window.device)
