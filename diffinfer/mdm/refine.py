"""Back&Refine: after a full decode, mask the least certain tokens again and decode them anew.

LaDiC (Wang et al. 2024, "LaDiC: Are diffusion models really inferior to autoregressive
counterparts for image-to-text generation?", sec. 3.4) finishes its caption diffusion with
Back&Refine: the tokens of the first complete output that the model is least sure of are sent
back to noise and denoised again with every other token of the caption as context, so tokens
decoded in parallel at the first pass see each other. Here, on the masked (absorbing) process:

1. score every generated token by its leave-one-out confidence ``p(x_i | x_{-i})``: the model
   run on the finished canvas with position ``i`` masked (one batched call over all positions;
   a masked-diffusion model is only trained to predict masked positions, so the confidence of a
   visible token is read at its masked copy);
2. ``back``: mask the ``count`` lowest-scoring generated tokens of each row (``select=
   "confidence"``, LaDiC's rule) or ``count`` positions drawn uniformly (``select="random"``);
3. ``refine``: decode the masked positions with the same decode loop (``decode(canvas=...)``,
   any unmasking policy), every other token given.

With ``select="random"`` and exact conditionals decoded one token per step at temperature 1,
a round is a block-Gibbs step whose block is chosen independently of the tokens, so it
leaves the law of a correct sample unchanged (``tests/test_mdm_caption.py`` checks this on an
exact oracle). The confidence rule picks the block by looking at the tokens and is not
law-preserving: it moves samples towards the modes, which is what a captioner wants.

The running-confidence remasking policy (``remasking.RunningConfidenceRemasking``) remasks
inside the decode on the schedule's counts; Back&Refine acts once the canvas is complete, so
it is this separate step on top of ``decode`` rather than a policy of the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..rng import make_rng
from .decode import DecodeResult, decode
from .model import as_masked_model
from .unmasking import top_k_mask

SELECTIONS = ("confidence", "random")


@dataclass
class RefineResult:
    """``tokens`` ``[B, L]``: the refined canvases; ``before``: the input canvases;
    ``remasked`` ``[B, L]``: positions masked in any round; ``scores`` ``[B, L]``: the last
    round's leave-one-out confidences (``nan`` outside the generation region); ``nfe``: batched
    model calls of the refinement (scoring and re-decoding), on top of the first decode's."""

    tokens: Tensor
    before: Tensor
    remasked: Tensor
    scores: Tensor
    nfe: int


def _call(model, tokens: Tensor, rows: Tensor, t: Tensor) -> Tensor:
    kwargs = {}
    if getattr(model, "takes_rows", False):
        kwargs["rows"] = rows
    if getattr(model, "takes_time", False):
        kwargs["t"] = t
    return model.logits(tokens, **kwargs)


@torch.no_grad()
def leave_one_out_confidence(model, tokens: Tensor, region: Tensor, mask_id: int | None = None) -> Tensor:
    """``p(x_i | x_{-i})`` ``[B, L]`` (float64) of each token of ``tokens`` ``[B, L]`` inside
    ``region`` ``[B, L]`` (``nan`` elsewhere), from one batched call on the canvases with one
    region position masked each (the mask token itself is excluded from the law, as in
    ``decode``)."""
    model = as_masked_model(model, mask_id)
    mask = model.mask_id
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 2 or region.shape != tokens.shape:
        raise ValueError(f"tokens and region must be [B, L] of one shape, got {tuple(tokens.shape)} "
                         f"and {tuple(region.shape)}")
    if (region & (tokens == mask)).any():
        raise ValueError("the canvas still holds masked positions in its region; decode it fully first")
    B, L = tokens.shape
    scores = torch.full((B, L), float("nan"), dtype=torch.float64)
    rows, cols = region.nonzero(as_tuple=True)  # [n], [n]
    if len(rows) == 0:
        return scores
    canvases = tokens[rows].clone()  # [n, L]
    canvases[torch.arange(len(rows)), cols] = mask
    t = 1.0 / region.sum(-1)[rows].double()  # masked fraction of each copy [n]
    logits = _call(model, canvases, rows, t)  # [n, L, V]
    if torch.isnan(logits).any():
        raise ValueError("the model returned NaN logits")
    logits = logits[torch.arange(len(rows)), cols].double()  # [n, V]
    logits[:, mask] = -torch.inf
    logp = logits.log_softmax(-1)
    scores[rows, cols] = logp.gather(-1, tokens[rows, cols][:, None])[:, 0].exp()
    return scores


def _counts(region: Tensor, count: int | None, fraction: float | None) -> Tensor:
    n = region.sum(-1)  # [B]
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        return n.clamp_max(count)
    if fraction is None or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    return torch.floor(n.double() * fraction + 0.5).long().clamp_max(n)


@torch.no_grad()
def back_and_refine(model, result: DecodeResult | Tensor, count: int | None = None, fraction: float | None = 0.4,
                    select: str = "confidence", policy="low-confidence", steps: int | None = None,
                    temperature: float = 1.0, seed=None, rounds: int = 1, region: Tensor | None = None,
                    mask_id: int | None = None, **decode_options) -> RefineResult:
    """LaDiC's Back&Refine on a decoded batch.

    Args:
        model: the masked model that decoded ``result`` (e.g. an ``mdm.Conditioned``).
        result: a ``DecodeResult`` (its generation region is refined) or canvases ``[B, L]``
            with ``region`` ``[B, L]`` (the positions that may be remasked).
        count / fraction: tokens to mask per row and round: ``count``, else
            ``round(fraction * region size)``.
        select: ``"confidence"`` (the lowest leave-one-out confidences) or ``"random"``.
        policy, steps, temperature, decode_options: how the masked tokens are decoded again
            (``decode(canvas=...)``; ``steps`` default: one token per step).
        seed: row ``i`` draws its random selection from stream ``(seed, i)`` and round ``r``'s
            re-decode from ``(seed + 1 + r, i)``.
        rounds: how many times to back and refine.
    """
    if select not in SELECTIONS:
        raise ValueError(f"unknown select {select!r}; valid: {', '.join(SELECTIONS)}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    model = as_masked_model(model, mask_id)
    mask = model.mask_id
    if isinstance(result, DecodeResult):
        if region is not None:
            raise ValueError("give region only with a tokens tensor; a DecodeResult carries its own")
        tokens = result.tokens.clone()
        pos = torch.arange(tokens.shape[1])[None, :]
        region = (pos >= result.gen_start[:, None]) & (pos < result.gen_end[:, None])
    else:
        tokens = torch.as_tensor(result, dtype=torch.long).clone()
        if region is None:
            raise ValueError("give region [B, L] with a tokens tensor")
        region = torch.as_tensor(region, dtype=torch.bool)
    before = tokens.clone()
    B, L = tokens.shape
    k = _counts(region, count, fraction)  # [B]
    remasked = torch.zeros(B, L, dtype=torch.bool)
    base_seed = None if seed is None else int(seed)
    rng = make_rng(base_seed, B, "cpu")
    nfe = 0
    scores = torch.full((B, L), float("nan"), dtype=torch.float64)
    for r in range(rounds):
        if select == "confidence":
            scores = leave_one_out_confidence(model, tokens, region)
            nfe += 1
            back = top_k_mask(-scores.nan_to_num(0.0), region, k)
        else:
            back = top_k_mask(rng.rand((L,), dtype=torch.float64), region, k)
        if not back.any():
            break
        remasked |= back
        canvas = tokens.masked_fill(back, mask)
        out = decode(model, canvas=canvas, policy=policy, steps=steps or int(k.max()), temperature=temperature,
                     seed=None if base_seed is None else base_seed + 1 + r, **decode_options)
        nfe += out.nfe
        tokens = out.tokens
    return RefineResult(tokens=tokens, before=before, remasked=remasked, scores=scores, nfe=nfe)
