"""Anchored Posterior Sampling (APS; Rout et al. 2025, "Test-Time Anchoring for Discrete
Diffusion Posterior Sampling", arXiv:2510.02291) on a masked model, for token observations.

APS has two parts; both are heuristics (neither targets the posterior exactly; see
``bench/mdm_posterior.py`` for their error against the exact posterior next to SMC):

- **Quantized expectation** (``QuantizedExpectation``): guidance in a discrete embedding space.
  At a step the model's law ``p_j`` at each masked position gives the expected embedding
  ``e_bar_j = sum_v p_j(v) E_v`` (``E`` ``[V, d]``: the codebook), quantized to its nearest
  codebook entry ``q_j`` (the revealed positions hold their token's entry); the measurement's
  log-likelihood ``log p(y | q)`` is differentiated at ``q`` (straight-through: the quantization
  is taken as the identity), and the gradient read along each codebook entry,
  ``g_j(v) = <d log p(y | q) / d q_j, E_v>``, is added to the logits:
  ``logits_j(v) + step_size * g_j(v)``. For a per-position likelihood with the one-hot codebook
  (``E = I``, ``log p(y | q) = sum_j <q_j, log lik_j>``) ``g_j(v) = log lik_j(v)``: one unit step
  *is* the exact per-token tilt (``posterior.LikelihoodTilt``; ``tests/test_mdm_aps.py``). For the
  linear sum ``y = sum_j values[x_j] + N(0, sigma^2)`` with the value codebook (``E_v = values[v]``)
  it is the linearised guidance ``values[v] (y - sum_j q_j) / sigma^2``. (Passing the gradient
  through the softmax instead, ``d log p(y | q) / d logits`` with ``q`` straight-through to
  ``e_bar``, would give ``p_j(v) (g_j(v) - E_p g_j)``: only the first-order term of the tilt.)
- **Anchored remasking** (``AnchoredRemasking``): decoding that may take back earlier decisions.
  At each step a token is proposed at every masked position from the guided law, scored by its
  probability under that law (the "posterior" confidence; ``reward_free=True``: under the
  unguided model's law instead, the variant for observations without a usable reward); the
  tokens already decoded keep the confidence they were committed with. The schedule's number
  of decoded tokens after the step (``decoded + k``) is filled with the most confident of all
  of them (the *anchors*); decoded tokens that drop out of that set are masked again and
  decoded later with more context. With ``remask=False`` it is confidence-ordered decoding
  of the guided law (anchors are never taken back).

The authors' code was not available to us (the public repository holds only a README); this is
our reading of the paper's description (anchors: the tokens most confident under the guided
posterior; the rest remasked), written on this package's decode loop.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .model import as_masked_model
from .sampling import filter_logits
from .unmasking import Selection, StepContext, UnmaskPolicy, top_k_mask


class QuantizedExpectation:
    """A masked model whose logits at masked positions carry APS's quantized-expectation guidance.

    Args:
        model: a time-free masked model.
        codebook: ``[V, d]`` the embedding of each token other than the mask (vocabulary order).
        log_likelihood: ``f(q) -> [B]``, ``log p(y | q)`` of quantized embeddings ``q`` ``[B, L, d]``
            (differentiable in ``q``).
        step_size: the guidance step ``eta``.
    The unguided log-law of the last call is kept in ``prior_logp`` ``[B, L, V+1]``.
    """

    takes_time = False
    shift_logits = False
    supports_kv_cache = False

    def __init__(self, model, codebook, log_likelihood, step_size: float = 1.0):
        self.model = as_masked_model(model)
        if getattr(self.model, "takes_time", False):
            raise ValueError("QuantizedExpectation needs a time-free masked model")
        self.mask_id, self.vocab_size = int(self.model.mask_id), int(self.model.vocab_size)
        E = torch.as_tensor(codebook, dtype=torch.float64)
        E = E[:, None] if E.dim() == 1 else E
        if E.dim() != 2 or E.shape[0] != self.vocab_size - 1 or not torch.isfinite(E).all():
            raise ValueError(f"codebook must be a finite [{self.vocab_size - 1}, d] matrix (one row per "
                             f"token without the mask), got shape {tuple(E.shape)}")
        if not callable(log_likelihood):
            raise TypeError("log_likelihood must be a callable q [B, L, d] -> [B]")
        if not step_size >= 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        m = self.mask_id
        self.codebook = torch.cat([E[:m], E.new_zeros(1, E.shape[1]), E[m:]])  # [V+1, d], mask row 0
        self.log_likelihood, self.step_size = log_likelihood, float(step_size)
        self.prior_logp: Tensor | None = None

    def guidance(self, tokens: Tensor, logp: Tensor) -> Tensor:
        """``g`` ``[B, L, V+1]``: the straight-through gradient of ``log p(y | q)`` read along each
        codebook entry, for the canvas ``tokens`` ``[B, L]`` and the model's log-law ``logp``."""
        E, mask = self.codebook, self.mask_id
        masked = tokens == mask  # [B, L]
        e_bar = logp.exp() @ E  # [B, L, d]: the expected embedding
        nearest = torch.cdist(e_bar, E[None].expand(len(tokens), -1, -1))  # [B, L, V+1]
        nearest[..., mask] = torch.inf
        q = torch.where(masked[..., None], E[nearest.argmin(-1)], E[tokens])  # [B, L, d]
        with torch.enable_grad():
            q = q.detach().requires_grad_(True)
            ll = self.log_likelihood(q)
            if ll.shape != (len(tokens),):
                raise ValueError(f"log_likelihood must return [B] = [{len(tokens)}], got {tuple(ll.shape)}")
            (grad,) = torch.autograd.grad(ll.sum(), q)  # [B, L, d]
        g = grad @ E.T  # [B, L, V+1]
        if not torch.isfinite(g[..., torch.arange(E.shape[0]) != mask]).all():
            raise ValueError("the likelihood's gradient is not finite")
        return torch.where(masked[..., None], g, torch.zeros_like(g))

    def logits(self, tokens: Tensor) -> Tensor:
        logp = filter_logits(self.model.logits(tokens), self.mask_id)  # [B, L, V+1]
        self.prior_logp = logp
        return logp + self.step_size * self.guidance(tokens, logp)

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.logits(tokens)


def channel_codebook(likelihood, n_tokens: int):
    """The one-hot codebook ``[V, V]`` and ``log p(y | q) = sum_j <q_j, log lik_j>`` of a
    per-position likelihood ``[L, V]`` (or ``[B, L, V]``, one observation per row; ``-inf``
    entries, exact constraints, kept finite at ``-1e30`` so the gradient stays finite; guided
    logits there are then ``-inf`` in effect)."""
    lik = torch.as_tensor(likelihood, dtype=torch.float64)
    if lik.dim() not in (2, 3) or lik.shape[-1] != n_tokens:
        raise ValueError(f"likelihood must be [L, {n_tokens}] or [B, L, {n_tokens}], got shape {tuple(lik.shape)}")
    log_lik = torch.log(lik).clamp_min(-1e30)  # [L, V]

    def log_likelihood(q: Tensor) -> Tensor:
        return (q * log_lik).sum((-1, -2))

    return torch.eye(n_tokens, dtype=torch.float64), log_likelihood


def sum_codebook(values, y: float, sigma: float):
    """The value codebook ``[V, 1]`` and ``log p(y | q) = log N(y; sum_j q_j, sigma^2)`` of the
    linear-sum observation ``y = sum_j values[x_j] + N(0, sigma^2)``."""
    a = torch.as_tensor(values, dtype=torch.float64)
    if a.dim() != 1 or not sigma > 0:
        raise ValueError(f"values must be [V] and sigma > 0, got {tuple(a.shape)}, {sigma}")

    def log_likelihood(q: Tensor) -> Tensor:
        return -0.5 * ((float(y) - q.sum((-1, -2))) / sigma) ** 2

    return a[:, None], log_likelihood


class AnchoredRemasking(UnmaskPolicy):
    """APS's anchored remasking (see the module docstring); keeps the anchors' confidences
    ``[B, L]`` between steps (``decode`` calls ``reset``).

    Args:
        remask: let decoded tokens drop out of the anchor set (else plain confidence order).
        reward_free: score proposals by the unguided model's probability (``guided.prior_logp``
            of the ``QuantizedExpectation`` passed as ``guided``) instead of the guided law's.
        guided: the ``QuantizedExpectation`` being decoded (needed for ``reward_free``).
    """

    name = "anchored"

    def __init__(self, remask: bool = True, reward_free: bool = False, guided: QuantizedExpectation | None = None):
        if reward_free and guided is None:
            raise ValueError("reward_free anchoring needs the QuantizedExpectation model (guided=)")
        self.remask, self.reward_free, self.guided = bool(remask), bool(reward_free), guided
        self.confidence: Tensor | None = None  # [B, L] the committed tokens' confidence

    def reset(self) -> None:
        self.confidence = None

    def select(self, ctx: StepContext) -> Selection:
        law = ctx.probs
        if self.reward_free:
            law = self.guided.prior_logp.exp()
            if law.shape != ctx.probs.shape:
                raise ValueError("reward_free: the guided model's last call was for another canvas")
        s = law.gather(-1, ctx.x0[..., None])[..., 0]  # [B, L] confidence of this step's proposals
        if self.confidence is None or self.confidence.shape != s.shape:
            self.confidence = torch.zeros_like(s)
        masked = ctx.candidates
        pool = masked | ctx.decoded if self.remask else masked
        count = ctx.decoded.sum(-1) + ctx.k if self.remask else ctx.k
        score = torch.where(masked, s, self.confidence)
        keep = top_k_mask(score, pool, count)
        commit = keep & masked
        self.confidence = torch.where(commit, s, self.confidence)
        return Selection(commit, ctx.decoded & ~keep if self.remask else None)


@torch.no_grad()
def aps_sample(model, codebook, log_likelihood, n: int, length: int | None = None, canvas=None,
               steps: int | None = None, seed: int = 0, step_size: float = 1.0, remask: bool = True,
               reward_free: bool = False, temperature: float = 1.0):
    """``n`` APS samples: ``mdm.decode`` of the ``QuantizedExpectation``-guided model with
    ``AnchoredRemasking`` (``steps``: default one token per step). ``canvas``: ``[L]`` or
    ``[n, L]`` with exact tokens at given positions (e.g. ``posterior.clamped_canvas``).
    Returns the ``DecodeResult``."""
    from .decode import decode  # lazy: decode imports the policy table

    guided = QuantizedExpectation(model, codebook, log_likelihood, step_size)
    policy = AnchoredRemasking(remask=remask, reward_free=reward_free, guided=guided)
    if canvas is not None:
        canvas = torch.as_tensor(canvas).long()
        canvas = canvas.expand(int(n), -1) if canvas.dim() == 1 or canvas.shape[0] == 1 else canvas
        return decode(guided, canvas=canvas, policy=policy, steps=steps, seed=seed, temperature=temperature)
    return decode(guided, length=length, batch=int(n), policy=policy, steps=steps, seed=seed,
                  temperature=temperature)
