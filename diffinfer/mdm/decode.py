"""The one decode loop for masked-diffusion language models.

Every published decoder is this loop with a different unmasking policy (``unmasking``),
block policy (``blocks``), remasking policy (``remasking``) and cache (``caching``):

    repeat until no row holds a mask in its generation region:
        logits  <- model(canvas)                     (cached / reused / guided / the policy's last call)
        law     <- temperature, top-k, top-p          (``sampling.filter_logits``)
        blocks  <- rows whose block is finished move to the next block
        x0      <- one proposal per position          (Gumbel-max on each row's own stream)
        commit  <- the policy's choice among the masked positions of the block
        canvas  <- x0 at committed positions (remasked positions back to the mask)
        end-of-sequence: a decoded EOS with nothing masked before it ends the row
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..rng import make_rng
from .blocks import get_block_policy
from .caching import LogitsEvaluator
from .model import as_masked_model
from .sampling import filter_logits, propose_tokens
from .schedules import get_schedule, reveal_probabilities, revealed_counts
from .policies import get_policy
from .reweighting import EnergyReweighting
from .unmasking import StepContext


@dataclass
class DecodeResult:
    """``tokens`` ``[B, L]``: the decoded canvases (prompt, generation, then padding with
    ``pad_id``); ``gen_start`` / ``gen_end`` ``[B]``: each row's generation region;
    ``decoded_per_row`` ``[B]``: tokens decoded in each row; ``steps``: loop iterations;
    ``wall_time``: seconds.

    Model calls are counted one way everywhere (reports, ``stats``, the CLI):

    - ``nfe``: function evaluations of the decode. One evaluation of the model on the batch is
      one NFE, however many rows it holds (rows that finished early are not evaluated but do
      not make a call cheaper); classifier-free guidance counts two (the conditional and the
      unconditional input). This is ``batch_nfe``, counted by ``decode``.
    - ``tokens_per_nfe``: decoded tokens per sequence per NFE,
      ``decoded_per_row.sum() / (B * nfe)`` (for one row: its tokens over its calls).
    - ``nfe_per_row`` ``[B]``: evaluations each row took part in (two per call with guidance);
      a row that finishes early stops counting, so ``nfe_per_row.max() <= nfe``, with equality
      unless the ``reuse`` cache skips different rows at different steps.
      ``row_evaluations`` is their sum (the rows actually pushed through the model, the cost
      the ``reuse`` cache lowers); neither is an NFE.
    - ``policy_calls``: batched model calls made by the unmasking policy itself (the
      ``dependency`` policy's leave-one-out call, the ``speculative`` policy's verification
      call, which also serves as the next step's call), already included in ``nfe``;
      ``policy_rows``: the canvases those calls evaluated (not in ``row_evaluations``);
      ``model_rows`` is everything pushed through the model, ``row_evaluations + policy_rows``.
    """

    tokens: Tensor
    gen_start: Tensor
    gen_end: Tensor
    nfe_per_row: Tensor
    decoded_per_row: Tensor
    steps: int
    wall_time: float
    pad_id: int
    eos_id: int | None = None
    batch_nfe: int | None = None
    energy_calls: int = 0
    energy_rows: int = 0
    policy_calls: int = 0
    policy_rows: int = 0

    @property
    def nfe(self) -> int:
        if self.batch_nfe is None:
            raise ValueError("this DecodeResult carries no batch_nfe (build it with decode)")
        return int(self.batch_nfe)

    @property
    def row_evaluations(self) -> int:
        return int(self.nfe_per_row.sum())

    @property
    def model_rows(self) -> int:
        return self.row_evaluations + int(self.policy_rows)

    @property
    def tokens_per_nfe(self) -> float:
        rows = max(1, len(self.decoded_per_row))
        return float(self.decoded_per_row.sum()) / (rows * max(1, self.nfe))

    def generated(self) -> list[list[int]]:
        """Each row's generated tokens, cut before the first end-of-sequence token."""
        out = []
        for row, s, e in zip(self.tokens.tolist(), self.gen_start.tolist(), self.gen_end.tolist()):
            seq = row[s:e]
            if self.eos_id is not None and self.eos_id in seq:
                seq = seq[: seq.index(self.eos_id)]
            out.append(seq)
        return out

    def stats(self) -> dict:
        return {"nfe": self.nfe, "tokens_per_nfe": round(self.tokens_per_nfe, 4), "steps": self.steps,
                "wall_time_s": round(self.wall_time, 4), "decoded_tokens": int(self.decoded_per_row.sum()),
                "energy_calls": self.energy_calls, "energy_rows": self.energy_rows,
                "policy_calls": self.policy_calls, "policy_rows": self.policy_rows}


def _prompt_rows(prompt, batch: int | None) -> list[Tensor]:
    """Normalise ``prompt`` (None, a list of ids, a 1-D/2-D tensor, or a list of those of
    different lengths) to a list of 1-D LongTensors, one per row."""
    if prompt is None:
        return [torch.zeros(0, dtype=torch.long) for _ in range(batch or 1)]
    if hasattr(prompt, "keys") and "input_ids" in prompt.keys():  # a tokenizer's BatchEncoding (or a dict)
        ids, attn = prompt["input_ids"], prompt.get("attention_mask")
        ids = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in ids]
        if attn is not None:  # padding (left or right) is not prompt
            ids = [r[torch.as_tensor(a).reshape(-1).bool()] for r, a in zip(ids, attn)]
        prompt = ids
    if isinstance(prompt, Tensor):
        if prompt.dtype.is_floating_point:
            raise ValueError("prompt must hold integer token ids")
        if prompt.dim() == 1:
            rows = [prompt]
        elif prompt.dim() == 2:
            rows = list(prompt)
        else:
            raise ValueError(f"prompt must be [P] or [B, P], got shape {tuple(prompt.shape)}")
    elif len(prompt) and all(isinstance(p, int) for p in prompt):
        rows = [torch.tensor(prompt)]
    else:
        rows = [torch.as_tensor(p, dtype=torch.long).reshape(-1) for p in prompt]
    if batch is not None and batch != len(rows):
        if len(rows) != 1:
            raise ValueError(f"batch={batch} but {len(rows)} prompts")
        rows = rows * batch
    return [r.long().cpu() for r in rows]


def _build_canvas(model, prompt, length, canvas, batch, pad_id):
    """``tokens`` ``[B, L]``, ``given`` ``[B, L]`` (never changed), ``gen_start``/``gen_end`` ``[B]``,
    ``prompt_mask`` ``[B, L]``, ``real`` ``[B, L]`` (not padding)."""
    mask_id, vocab = model.mask_id, model.vocab_size
    if canvas is not None:
        if prompt is not None or length is not None:
            raise ValueError("give either canvas (a template) or prompt and length, not both")
        tokens = torch.as_tensor(canvas, dtype=torch.long)
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        if tokens.dim() != 2:
            raise ValueError(f"canvas must be [L] or [B, L], got shape {tuple(tokens.shape)}")
        if batch is not None and tokens.shape[0] == 1:
            tokens = tokens.expand(batch, -1)
        tokens = tokens.clone()
        B, L = tokens.shape
        gen_start = torch.zeros(B, dtype=torch.long)
        gen_end = torch.full((B,), L, dtype=torch.long)
        prompt_mask = torch.zeros(B, L, dtype=torch.bool)
        real = torch.ones(B, L, dtype=torch.bool)
    else:
        if length is None or int(length) < 1:
            raise ValueError(f"length (tokens to generate) must be >= 1, got {length}")
        rows = _prompt_rows(prompt, batch)
        for r in rows:
            if ((r < 0) | (r >= vocab)).any():
                raise ValueError(f"prompt token ids must lie in [0, {vocab})")
            if (r == mask_id).any():
                raise ValueError("the prompt holds the mask token; use canvas= for templates")
        B = len(rows)
        plen = torch.tensor([len(r) for r in rows])
        L = int(plen.max()) + int(length)
        tokens = torch.full((B, L), pad_id, dtype=torch.long)
        for b, r in enumerate(rows):
            tokens[b, : len(r)] = r
            tokens[b, len(r): len(r) + length] = mask_id
        gen_start, gen_end = plen, plen + int(length)
        pos = torch.arange(L)[None, :]
        prompt_mask = pos < gen_start[:, None]
        real = pos < gen_end[:, None]
    if ((tokens < 0) | (tokens >= vocab)).any():
        raise ValueError(f"token ids must lie in [0, {vocab})")
    max_len = getattr(model, "max_len", None) or getattr(getattr(model, "net", None), "max_len", None)
    if max_len is not None and L > max_len:
        raise ValueError(f"the canvas needs {L} positions (prompt + length) but the model's context "
                         f"holds {max_len}; shorten the prompt or the length")
    pos = torch.arange(L)[None, :]
    region = (pos >= gen_start[:, None]) & (pos < gen_end[:, None])
    given = ~(region & (tokens == mask_id))
    return tokens, given, gen_start, gen_end, prompt_mask, real, region


def _schedule_counts(schedule, n_block: Tensor, steps_block: Tensor, step: Tensor, remaining: Tensor):
    """This step's scheduled count ``k`` ``[B]`` (the ``remaining`` candidates at a block's last
    step) and ancestral reveal probability ``[B]`` for rows at ``step`` of ``steps_block`` in a
    block that started with ``n_block`` masks."""
    done, due = (revealed_counts(n_block, s, steps_block, schedule) for s in (step, step + 1))
    k = torch.where(step + 1 >= steps_block, remaining, (due - done).clamp_min(0))
    return k, reveal_probabilities(step, steps_block, schedule)


@torch.no_grad()
def decode(model, prompt=None, length: int | None = None, policy="low-confidence", steps: int | None = None,
           block=None, cache=None, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed=None, eos_id: int | None = None,
           callback: Callable | None = None, *, canvas=None, batch: int | None = None, cfg: float = 0.0,
           schedule="linear", delimiters: Sequence[int] | None = None, mask_id: int | None = None,
           segments=None, reweight=None, **policy_options) -> DecodeResult:
    """Decode a masked-diffusion language model.

    Args:
        model: a masked model (``logits(tokens)`` and ``mask_id``), e.g. a ``MarkovChain``, a
            ``CharTransformerModel``, a transformers adapter; a bare ``CharTransformer`` with ``mask_id``.
        prompt: ``None``, a list of ids, ``[P]`` or ``[B, P]`` tensor, a list of prompts of
            different lengths (rows are padded on the right with ``eos_id`` or the mask id), or a
            tokenizer's ``BatchEncoding`` (its ``attention_mask``'s padding is dropped).
        length: tokens to generate after each prompt.
        policy: an unmasking policy or its name: ``random``, ``ancestral``, ``low-confidence``,
            ``margin``, ``dilated``, ``entropy``, ``threshold``, ``factor``, ``confident``, ``rcr``,
            ``dependency``, ``speculative``; options (``threshold=0.9``, ``factor=1.0``, ``score=...``,
            ``tau=0.01``, ``k_max=8``, ``order="left-to-right"``) go in ``policy_options``.
        steps: total steps for scheduled policies (split over blocks in proportion to their
            length); default one token per step.
        block: ``None`` (whole canvas), an int (semi-autoregressive blocks), ``"adaptive"``
            (AdaBlock; needs ``delimiters``) or a ``BlockPolicy``.
        cache: ``None``/``"none"``, ``"reuse"`` (RADD, exact), ``"prefix"``, ``"dual"`` (Fast-dLLM),
            ``"block"`` (the exact key/value cache of a block-causal model: SDAR / BD3-LM).
        temperature, top_k, top_p: the law tokens are drawn from (temperature 0: greedy).
        seed: row ``i`` draws from stream ``(seed, i)`` (see ``diffinfer.rng``).
        eos_id: once a row decodes it with nothing masked before it, the rest of the row is
            filled with it and the row stops.
        callback: ``callback(step, tokens, info)`` after each step.
        canvas: a template ``[L]`` or ``[B, L]`` whose mask positions are the slots (S^3).
        batch: rows when ``prompt`` is ``None`` (or to repeat one prompt).
        cfg: LLaDA classifier-free guidance weight (the unconditional input masks the prompt).
        schedule: masking schedule for the per-step counts (``linear``, ``cosine``, ``loglinear``).
        segments: ``[L]`` or ``[B, L]`` integer segment of each position (``-1``: none), e.g. the
            slots of a template; with ``eos_id`` the end-of-sequence rule then acts within each
            segment instead of the whole row (S^3 slot-length adaptation: a slot whose first
            ``eos_id`` has nothing masked before it in the slot is filled with ``eos_id`` to its end).
        reweight: an ``EnergyReweighting`` (EDLM): the committed values are chosen among
            several candidates by importance resampling under an energy; its calls are counted in
            ``DecodeResult.energy_calls`` / ``energy_rows``, apart from the model's NFE.
    Returns:
        ``DecodeResult``.
    """
    t0 = time.perf_counter()
    model = as_masked_model(model, mask_id)
    policy = get_policy(policy, **policy_options)
    policy.reset()
    if reweight is not None:
        if not isinstance(reweight, EnergyReweighting):
            raise TypeError(f"reweight must be an mdm.EnergyReweighting, got {type(reweight).__name__}")
        reweight.reset()
    needs_model = getattr(policy, "needs_model", False)
    if needs_model and (cfg or cache not in (None, "none", "reuse") or reweight is not None):
        raise ValueError(f"policy {policy.name!r} makes its own model calls: it decodes without guidance "
                         f"(cfg=0), with cache None/'none'/'reuse' and without reweight")
    schedule = get_schedule(schedule)
    blocks = get_block_policy(block, delimiters)
    mask = model.mask_id
    pad_id = eos_id if eos_id is not None else mask
    tokens, given, gen_start, gen_end, prompt_mask, real, region = _build_canvas(
        model, prompt, length, canvas, batch, pad_id)
    B, L = tokens.shape
    gen_len = gen_end - gen_start
    blocks.check(gen_len)
    if steps is None:
        steps = int(gen_len.max())
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = make_rng(seed, B, "cpu")
    if segments is not None:
        segments = torch.as_tensor(segments, dtype=torch.long)
        segments = segments.expand(B, L) if segments.dim() == 1 else segments
        if segments.shape != (B, L):
            raise ValueError(f"segments must be [L] or [B, L] = [{B}, {L}], got shape {tuple(segments.shape)}")
        seg_regions = [(segments == v) & region for v in segments.unique().tolist() if v >= 0]
    evaluator = LogitsEvaluator(model, cache, B, cfg, prompt_mask, real, blocks=blocks, gen_end=gen_end)
    pos = torch.arange(L)[None, :]
    is_masked = lambda: (tokens == mask) & region  # noqa: E731
    decoded_per_row = is_masked().sum(-1)

    def evaluate(canvases: Tensor, rows: Tensor) -> Tensor:
        """The policy's extra call: filtered log-probabilities ``[N, L, V]`` of canvases ``[N, L]``
        belonging to decode rows ``rows`` ``[N]``."""
        t = ((canvases == mask) & region[rows]).sum(-1).double() / gen_len[rows].clamp_min(1).double()  # [N]
        return filter_logits(evaluator.canvases(canvases, rows, t), mask, temperature, top_k, top_p)

    block_start, block_end = gen_start.clone(), gen_start.clone()
    n_block = torch.zeros(B, dtype=torch.long)
    steps_block = torch.ones(B, dtype=torch.long)
    step_in_block = torch.zeros(B, dtype=torch.long)
    max_iterations = 4 * (int(gen_len.max()) + steps) + 16
    step, batch_nfe = 0, 0
    draft = None  # [B, L, V]: a law handed over by the policy (Selection.draft)
    while True:
        masked = is_masked()
        active = masked.any(-1)
        if not active.any():
            break
        if step >= max_iterations:
            raise RuntimeError(f"decode did not finish in {max_iterations} steps (policy {policy!r})")
        in_block = (pos >= block_start[:, None]) & (pos < block_end[:, None])
        finished_block = active & ~(masked & in_block).any(-1)
        t_row = masked.sum(-1).double() / gen_len.clamp_min(1).double()  # masked fraction [B]
        if draft is not None:  # the policy's last call left this step's law: no call of the loop's own
            logp, draft = draft, None
        else:
            calls_before = evaluator.nfe.clone()
            logits = evaluator(tokens, active, t_row, block_start, block_end, bool(finished_block.any()))
            batch_nfe += int((evaluator.nfe - calls_before).max())  # one batched call (two with guidance)
            if logits.shape[:2] != (B, L):
                raise ValueError(f"the model returned logits of shape {tuple(logits.shape)} for a [{B}, {L}] canvas")
            logp = filter_logits(logits, mask, temperature, top_k, top_p)  # [B, L, V]
        probs = logp.exp()
        # rows whose block has no mask left move on (several blocks if a block is all given)
        move = finished_block
        while move.any():
            block_start = torch.where(move, block_end, block_start)
            block_end = torch.where(move, blocks.next_end(block_start, gen_end, probs), block_end)
            in_block = (pos >= block_start[:, None]) & (pos < block_end[:, None])
            n_new = (masked & in_block).sum(-1)
            n_block = torch.where(move, n_new, n_block)
            share = (block_end - block_start).double() / gen_len.clamp_min(1).double()
            steps_block = torch.where(move, (steps * share).round().long().clamp_min(1), steps_block)
            step_in_block = torch.where(move, torch.zeros_like(step_in_block), step_in_block)
            move = move & (n_new == 0) & (block_end < gen_end)
        x0 = propose_tokens(logp, rng, greedy=temperature == 0)  # [B, L]
        uniform = rng.rand((L,), dtype=torch.float64) if policy.needs_uniform else None  # [B, L]
        candidates = masked & in_block & active[:, None]
        k, reveal_p = _schedule_counts(schedule, n_block, steps_block, step_in_block, candidates.sum(-1))
        ctx = StepContext(probs=probs, x0=x0, candidates=candidates, k=k, reveal_p=reveal_p, uniform=uniform,
                          decoded=in_block & ~given & ~masked & active[:, None], block_start=block_start)
        if needs_model:
            ctx.tokens, ctx.evaluate, ctx.rng, ctx.mask_id, ctx.greedy = tokens, evaluate, rng, mask, temperature == 0
            calls_before = policy.calls
        sel = policy.select(ctx)
        if needs_model:
            batch_nfe += policy.calls - calls_before  # its extra batched calls are model calls too
        commit = sel.commit & candidates
        draft = sel.draft
        if reweight is None:
            tokens = torch.where(commit, x0 if sel.values is None else sel.values, tokens)
        else:
            tokens = reweight.choose(tokens, logp, commit, masked & active[:, None], rng)
        if sel.remask is not None:
            tokens = tokens.masked_fill(sel.remask & ctx.decoded, mask)
        if eos_id is not None and segments is None:
            tokens, given = _stop_at_eos(tokens, given, region, mask, eos_id)
        elif eos_id is not None:
            for seg in seg_regions:
                tokens, given = _stop_at_eos(tokens, given, seg, mask, eos_id)
        step_in_block = step_in_block + active.long()
        if callback is not None:
            callback(step, tokens, {"commit": commit, "remask": sel.remask, "nfe": evaluator.nfe.clone(),
                                    "batch_nfe": batch_nfe,
                                    "block_start": block_start, "block_end": block_end})
        step += 1
    return DecodeResult(tokens=tokens, gen_start=gen_start, gen_end=gen_end, nfe_per_row=evaluator.nfe,
                        decoded_per_row=decoded_per_row, steps=step, wall_time=time.perf_counter() - t0,
                        pad_id=pad_id, eos_id=eos_id, batch_nfe=batch_nfe,
                        energy_calls=reweight.energy_calls if reweight is not None else 0,
                        energy_rows=reweight.energy_rows if reweight is not None else 0,
                        policy_calls=policy.calls if needs_model else 0,
                        policy_rows=policy.rows if needs_model else 0)


def _stop_at_eos(tokens: Tensor, given: Tensor, region: Tensor, mask_id: int, eos_id: int):
    """Where a row's first decoded EOS has no mask before it, fill the rest of its generation
    region with EOS (LLaDA pads answers with EOS) and freeze it; the row is then finished."""
    L = tokens.shape[1]
    pos = torch.arange(L)[None, :]
    is_eos = (tokens == eos_id) & region
    first = torch.where(is_eos, pos, torch.full_like(pos, L)).min(-1).values  # [B]
    masked_before = ((tokens == mask_id) & region & (pos < first[:, None])).any(-1)
    stop = (first < L) & ~masked_before
    fill = stop[:, None] & region & (pos > first[:, None])
    return tokens.masked_fill(fill, eos_id), given | fill | (stop[:, None] & (pos == first[:, None]))
