"""Adapters from Hugging Face ``transformers`` models to the masked-model protocol of
``diffinfer.mdm`` (``logits(tokens) -> [B, L, V]`` with a ``mask_id``).

- ``MaskedLMModel``: any ``AutoModelForMaskedLM`` (BERT, RoBERTa, ModernBERT, ...); the mask
  token comes from the tokenizer (``mask_token_id``) or the config, unless given.
- ``DiffusionLMModel``: LLaDA / Dream / SDAR-style diffusion LMs whose class is shaped like a
  causal LM (``model(input_ids).logits``). ``shift=True`` for models initialised from an
  autoregressive one whose position ``i`` predicts token ``i + 1`` (Dream, Dimple); LLaDA and
  SDAR use ``shift=False``.

Nothing here downloads: build or load the model yourself and pass it in.
"""
from __future__ import annotations

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


class _HFModel(MaskedModel):
    takes_attention_mask = True

    def __init__(self, model, mask_id=None, tokenizer=None):
        super().__init__(_find_mask_id(model, tokenizer, mask_id), _vocab_size(model))
        self.model, self.tokenizer = model.eval(), tokenizer

    def _device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def raw_logits(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
        dev = self._device()
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.long().to(dev)}
        out = self.model(input_ids=tokens.to(dev), **kwargs).logits  # [B, L, V]
        return out.to(tokens.device)


class MaskedLMModel(_HFModel):
    """A transformers ``AutoModelForMaskedLM`` as a masked-diffusion model (time-free)."""


class DiffusionLMModel(_HFModel):
    """A LLaDA / Dream-style diffusion LM with a causal-LM-shaped interface.

    Args:
        model: the network; ``model(input_ids=..., attention_mask=...).logits`` is ``[B, L, V]``.
        mask_id: its mask token id (LLaDA 126336; Dream 151666), or from tokenizer / config.
        shift: ``True`` when position ``i`` predicts token ``i + 1`` (Dream, Dimple).
        attention_mask: pass the padding mask to the model (off for models that build their
            own bidirectional mask and reject a 2-D one).
    """

    def __init__(self, model, mask_id=None, tokenizer=None, shift: bool = False, attention_mask: bool = True):
        super().__init__(model, mask_id, tokenizer)
        self.shift_logits = bool(shift)
        self.takes_attention_mask = bool(attention_mask)
