"""An exact conditional masked model over a finite set of captions (a noisy-label captioner).

Row ``b`` of a batch is an "image" whose caption is caption ``k`` of a fixed list with
probability ``weights[b, k]`` (e.g. the names of the ten digits, padded to one length, and a
label law ``p(y | image)``). Its exact conditionals given any partly masked canvas follow from
Bayes' rule over the list: ``P(x_i = v | visible) = sum_k w_k [caption k agrees with the
visible tokens] [caption_k[i] = v] / sum_k w_k [agrees]`` (a canvas no caption agrees with,
which only a decoder that commits several positions at once can write, gets the unconditional
law ``weights[b]``). A decoder that samples the masked
model's law exactly reproduces ``weights[b]`` as the law of row ``b``'s caption, so
captioning decoders are measured against a closed form (``tests/test_mdm_caption.py``).

It answers the masked-model protocol (``logits``, ``mask_id = V``) with ``takes_rows``: the
decode loop says which rows each call holds.
"""
from __future__ import annotations

import torch
from torch import Tensor


class CaptionOracle:
    """``captions`` ``[K, L]`` (ids in ``[0, V)``, distinct rows), ``weights`` ``[B, K]`` (each row
    a law; one row serves every canvas), ``n_states`` ``V``."""

    takes_time = False
    shift_logits = False
    supports_kv_cache = False
    takes_rows = True

    def __init__(self, captions: Tensor, weights: Tensor, n_states: int):
        captions = torch.as_tensor(captions, dtype=torch.long)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        if captions.dim() != 2:
            raise ValueError(f"captions must be [K, L], got shape {tuple(captions.shape)}")
        if ((captions < 0) | (captions >= n_states)).any():
            raise ValueError(f"caption ids must lie in [0, {n_states})")
        if len(torch.unique(captions, dim=0)) != len(captions):
            raise ValueError("captions must be distinct")
        weights = weights[None] if weights.dim() == 1 else weights
        if weights.dim() != 2 or weights.shape[1] != captions.shape[0]:
            raise ValueError(f"weights must be [B, K={captions.shape[0]}], got shape {tuple(weights.shape)}")
        if (weights < 0).any() or not torch.allclose(weights.sum(-1), torch.ones(len(weights), dtype=torch.float64)):
            raise ValueError("each row of weights must be a probability vector")
        self.captions, self.weights, self.n_states = captions, weights, int(n_states)
        self.mask_id = self.n_states
        self.vocab_size = self.n_states + 1

    @property
    def length(self) -> int:
        return self.captions.shape[1]

    def _weights(self, n: int, rows: Tensor | None) -> Tensor:
        if len(self.weights) == 1:
            return self.weights.expand(n, -1)
        if rows is None:
            if n != len(self.weights):
                raise ValueError(f"{n} canvases for {len(self.weights)} weight rows")
            return self.weights
        return self.weights[torch.as_tensor(rows, dtype=torch.long)]

    def posterior(self, tokens: Tensor, rows: Tensor | None = None) -> Tensor:
        """``P(caption k | visible tokens)`` ``[B, K]`` (float64); ``weights`` where no caption agrees."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens must be [B, {self.length}], got shape {tuple(tokens.shape)}")
        if ((tokens < 0) | (tokens > self.mask_id)).any():
            raise ValueError(f"tokens must lie in [0, {self.mask_id}] (mask_id = {self.mask_id})")
        visible = tokens != self.mask_id  # [B, L]
        agree = ((tokens[:, None, :] == self.captions[None]) | ~visible[:, None, :]).all(-1)  # [B, K]
        prior = self._weights(len(tokens), rows)
        w = prior * agree
        z = w.sum(-1, keepdim=True)
        off = z[:, 0] == 0  # the canvas agrees with no caption: fall back on the caption law
        w, z = torch.where(off[:, None], prior, w), torch.where(off[:, None], torch.ones_like(z), z)
        return w / z

    def conditionals(self, tokens: Tensor, rows: Tensor | None = None) -> Tensor:
        """Exact ``P(x_i = v | visible tokens)`` ``[B, L, V]`` (float64)."""
        post = self.posterior(tokens, rows)  # [B, K]
        onehot = torch.nn.functional.one_hot(self.captions, self.n_states).double()  # [K, L, V]
        return torch.einsum("bk,klv->blv", post, onehot)

    def logits(self, tokens: Tensor, rows: Tensor | None = None) -> Tensor:
        """Log conditionals ``[B, L, V + 1]``; the mask gets ``-inf``."""
        p = self.conditionals(tokens, rows)
        return torch.log(torch.cat([p, torch.zeros(*p.shape[:2], 1, dtype=p.dtype)], dim=-1))

    __call__ = logits

    def caption_index(self, tokens: Tensor) -> Tensor:
        """``[B]`` index of each complete canvas's caption in the list, ``-1`` if none."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        eq = (tokens[:, None, :] == self.captions[None]).all(-1)  # [B, K]
        return torch.where(eq.any(-1), eq.long().argmax(-1), torch.full((len(tokens),), -1))
