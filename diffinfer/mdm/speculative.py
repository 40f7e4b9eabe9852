"""Speculative unmasking: several tokens per model call, drawn from the model's exact joint.

Any-subset speculative decoding (ASSD; Guo & Ermon 2025, "Reviving Any-Subset Autoregressive
Models with Principled Parallel Sampling and Speculative Decoding", arXiv:2504.20456) with the
accept / residual rule of speculative sampling (Leviathan et al. 2023; Chen et al. 2023), for a
masked model that is its own drafter and its own verifier. It is issue 18's dependency-aware
rule that holds without any independence assumption: a run of positions is committed exactly as
long as the model's conditionals agree with the product of marginals the drafts came from, and
wherever they disagree the residual draw corrects the law.

One step on a row with unmasked tokens ``x_U`` and a draft law ``d_j`` at every masked ``j``:

1. order the next ``k = min(k_max, #candidates)`` candidates ``c_1 .. c_k`` (uniformly at random,
   ``order="random"``, or by position, ``order="left-to-right"``), independently of any value;
2. drafts ``x~_{c_i} ~ d_{c_i}`` (the loop's proposals ``x0``);
3. ONE batched model call on ``k + 1`` canvases per row: canvas ``i`` (``i = 0 .. k``) is ``x_U``
   with ``x~_{c_1} .. x~_{c_i}`` filled in, and gives the target
   ``q_{i+1} = p(x_{c_{i+1}} | x_U, x~_{c_1 .. c_i})`` (canvas ``k`` gives the bonus position
   ``c_{k+1}``, when the block has one);
4. ``x~_{c_1}, x~_{c_2}, ...`` are accepted in turn, each with probability
   ``min(1, q_i(x~) / d_i(x~))``; at the first rejection, ``c_i`` gets a draw from the residual
   ``(q_i - d_i)_+ / sum (q_i - d_i)_+`` and the step stops; if all ``k`` are accepted the bonus
   position ``c_{k+1}`` gets a draw from ``q_{k+1}``;
5. the canvas holding the accepted drafts (canvas ``a`` after ``a`` acceptances) is returned to
   the loop as the next step's draft law (``Selection.draft``): its conditionals lack only the one
   residual or bonus token, so the loop makes no call of its own, and each step costs one call.

Every committed token is an exact draw from the model's conditional given the tokens committed
before it (the speculative-sampling identity ``d min(1, q/d) + (1 - sum min(d, q)) r = q``), and
the positions are an order chosen without looking at values, so for an exact model the decoded
law is the model's joint at any ``k_max`` (tested against enumerated hidden-Markov joints); a
step commits at least one token, so tokens per call are >= 1, and a draft that is never wrong
commits ``k + 1`` per call. The cost is in rows: ``k + 1`` canvases per call
(``DecodeResult.policy_rows``), where ASSD's any-subset network verifies in one pass.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sampling import propose_tokens
from .unmasking import Selection, StepContext, UnmaskPolicy

ORDERS = ("random", "left-to-right")


def accept_or_correct(draft: Tensor, target: Tensor, proposal: Tensor, uniform: Tensor) -> tuple[Tensor, Tensor]:
    """Speculative sampling's test for proposals ``[...]`` drawn from ``draft`` ``[..., V]``
    against ``target`` ``[..., V]`` (probabilities): ``accepted`` ``[...]`` (``uniform <
    q(x~) / d(x~)``) and the residual law ``[..., V]`` to draw from where a proposal is rejected,
    ``(q - d)_+`` normalised (``q`` itself where ``q <= d`` everywhere up to round-off, where a
    rejection has probability zero)."""
    q = target.gather(-1, proposal[..., None])[..., 0]
    d = draft.gather(-1, proposal[..., None])[..., 0]
    accepted = uniform * d < q  # u < q / d without dividing by a zero draft probability
    residual = (target - draft).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 1e-12, residual / mass.clamp_min(1e-300), target)
    return accepted, residual


class SpeculativeUnmasking(UnmaskPolicy):
    """Commit a run of verified drafts per call (see the module docstring). ``k_max``: drafts
    verified per step (``k_max + 1`` canvases per call); ``order``: ``random`` (any order, the
    exact random-order sampler's law) or ``left-to-right`` (the autoregressive order's law).
    Needs the model: ``decode`` passes ``ctx.tokens``, ``ctx.evaluate``, ``ctx.rng``, ``ctx.mask_id``.

    After each step ``accepted`` ``[B]`` holds the drafts accepted in each row."""

    name = "speculative"
    needs_model = True

    def __init__(self, k_max: int = 8, order: str = "random"):
        if int(k_max) != k_max or k_max < 1:
            raise ValueError(f"k_max must be an integer >= 1, got {k_max}")
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; valid: {', '.join(ORDERS)}")
        self.k_max, self.order = int(k_max), order
        self.needs_uniform = order == "random"
        self.reset()

    def reset(self) -> None:
        self.calls, self.rows = 0, 0
        self.accepted: Tensor | None = None

    def _ranks(self, ctx: StepContext) -> Tensor:
        """Each candidate's place in this step's order ``[B, L]`` (0 first; ``L`` elsewhere)."""
        B, L = ctx.candidates.shape
        pos = torch.arange(L, device=ctx.candidates.device).expand(B, L)
        score = ctx.uniform if self.order == "random" else -pos.double()
        score = score.masked_fill(~ctx.candidates, -torch.inf)
        rank = score.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # [B, L]
        return torch.where(ctx.candidates, rank, torch.full_like(rank, L))

    def select(self, ctx: StepContext) -> Selection:
        if ctx.evaluate is None or ctx.tokens is None:
            raise ValueError("the speculative policy needs the model: use it through mdm.decode")
        B, L = ctx.candidates.shape
        rank = self._ranks(ctx)  # [B, L]
        n_cand = ctx.candidates.sum(-1)  # [B]
        k = n_cand.clamp(max=self.k_max)  # [B] drafts verified per row
        live = torch.nonzero(n_cand > 0).flatten()  # rows with a candidate [R]
        # canvases i = 0 .. k[b] of each live row: drafts of rank < i filled in
        rows = live.repeat_interleave(k[live] + 1)  # [N]
        first = torch.cumsum(k[live] + 1, 0) - (k[live] + 1)  # [R] index of each row's canvas 0
        level = torch.arange(len(rows)) - first.repeat_interleave(k[live] + 1)  # [N] i
        canvases = torch.where(rank[rows] < level[:, None], ctx.x0[rows], ctx.tokens[rows])  # [N, L]
        logq = ctx.evaluate(canvases, rows).double()  # [N, L, V]
        self.calls += 1
        self.rows += len(rows)
        if torch.isnan(logq).any():
            raise ValueError("the model returned NaN in the speculative verification call")
        # the target at each candidate of rank r < k + 1 comes from canvas r of its row
        canvas_of = torch.full((B,), -1, dtype=torch.long)
        canvas_of[live] = first
        verified = ctx.candidates & (rank <= k[:, None])  # [B, L]: drafts (rank < k) and the bonus (rank k)
        b_idx, j_idx = verified.nonzero(as_tuple=True)
        target = ctx.probs.clone()  # [B, L, V]
        target[b_idx, j_idx] = logq[canvas_of[b_idx] + rank[b_idx, j_idx], j_idx].exp()
        draft = ctx.probs
        if ctx.greedy:  # greedy decoding: the draft and target are their argmax tokens
            draft, target = (torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).double() for p in (draft, target))
        u = ctx.rng.rand((L,), dtype=torch.float64)  # [B, L]
        ok, residual = accept_or_correct(draft, target, ctx.x0, u)  # [B, L], [B, L, V]
        drafted = ctx.candidates & (rank < k[:, None])
        rejected_rank = torch.where(drafted & ~ok, rank, torch.full_like(rank, L)).min(-1).values  # [B]
        a = torch.minimum(rejected_rank, k)  # [B] accepted drafts (a leading run)
        self.accepted = a
        extra = ctx.candidates & (rank == a[:, None])  # [B, L]: the residual or bonus position
        # the residual where the run stopped at a rejection, the target itself at the bonus position
        law = torch.where((rank < k[:, None])[..., None], residual, target)  # [B, L, V]
        fresh = propose_tokens(law.clamp_min(1e-300).log().masked_fill(law <= 0, -torch.inf), ctx.rng,
                               greedy=ctx.greedy)  # [B, L]
        commit = (ctx.candidates & (rank < a[:, None])) | extra
        values = torch.where(extra, fresh, ctx.x0)
        # the next step's draft: the canvas of each row that holds its accepted drafts
        next_draft = ctx.probs.log().clone()  # [B, L, V]
        next_draft[live] = logq[first + a[live]]
        return Selection(commit, values=values, draft=next_draft)
