"""Discrete posterior sampling with a masked-diffusion prior, for per-position observations.

An observation ``y`` of a token sequence ``x`` with a per-position likelihood
``lik[i, v] = p(y_i | x_i = v)`` (a noisy symmetric channel, exact constraints for
inpainting, or their product; see ``diffinfer.toys.hmm_posterior``) has the posterior
``p(x | y) ~ p(x) prod_i lik[i, x_i]``. Two samplers, both on the masked model's
conditionals ``p(x_j | x_U)`` given the unmasked tokens ``x_U``:

- ``LikelihoodTilt`` (the guided-logits baseline): a masked-model wrapper whose logits add
  ``log lik[j, v]`` to every position's candidates, so ``mdm.decode`` draws each token from
  ``p(x_j | x_U) lik[j, x_j] / Z_j``. This is the per-token likelihood guidance that APS
  (Anchored Posterior Sampling, "Test-Time Anchoring for Discrete Diffusion Posterior
  Sampling", 2025) builds on: for a per-position likelihood its "quantized expectation"
  guidance reduces to this exact per-token tilt, and its anchored remasking to a
  confidence-ranked remasking policy (``decode(..., policy="rcr")``). It is *not* the
  posterior: the right conditional is ``p(x_j | x_U, y)``, in which the observations
  ``y_k`` at the still-masked positions ``k`` inform ``x_j`` through the prior; the tilt
  ignores them, so its law is biased however exact the model is (measured in
  ``bench/mdm_posterior.py``).
- ``posterior_smc``: sequential Monte Carlo with the tilt as proposal (a fully adapted
  particle filter, Pitt & Shephard 1999, on random-order decoding). With
  ``gamma_s(x_U) = p(x_U) prod_{i in U} lik[i, x_i]`` as the target after ``s`` tokens, the
  incremental weight of revealing position ``j`` is ``gamma_{s+1} / (gamma_s q) = Z_j``, the
  tilt's normaliser, which does not depend on the drawn token: particles are weighted and
  resampled *before* the draw. With exact conditionals the weighted particles target
  ``p(x | y)`` exactly as their number grows (the last weights are returned; they are
  uniform after a final resampling). This is FK steering's text SMC
  (``diffinfer.scaling.text_smc``) with the likelihood as the potential, one token a step.
- ``SumPotential``: for an observation that does not factorise over positions, the linear sum
  ``y = sum_i values[x_i] + N(0, sigma^2)``, moment-matched twisting potentials from the same
  conditionals (no extra model call) in ``posterior_smc(..., potential=)``; still exact. With
  the prior covariance of the values (``value_covariance``: two model calls, once) the twist
  accounts for the correlation of the masked tokens (Gaussian conditioning of the masked sum on
  the revealed tokens; see the class).
  ``inflate=`` multiplies the masked tokens' variance in the twist (a defensive, flatter twist:
  on a sticky chain the masked sum is a mixture over hidden regimes, and an overconfident
  Gaussian twist can lose a regime at a resampling, a rare heavy-tailed miss; measured in
  ``bench/mdm_posterior_heldout.py``).
- ``posterior_gibbs``: exact-conditional Gibbs sweeps on complete sequences (the move of
  resample-move SMC), invariant for the posterior.
- ``rao_blackwell_marginals``: posterior marginals from (weighted) samples with each position's
  one-hot replaced by its exact full conditional ``p(x_j | x_{-j}, y)`` (``L`` model calls).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..rng import SampleRNG
from .model import as_masked_model
from .sampling import filter_logits, propose_tokens
from .unmasking import top_k_mask


def _log_likelihood(lik: Tensor, vocab_size: int, mask_id: int) -> Tensor:
    """``log lik`` ``[B|1, L, vocab_size]`` with 0 in the mask column; ``lik`` ``[L, V]`` or
    ``[B, L, V]`` over the ``V = vocab_size - 1`` tokens other than the mask, in vocabulary
    order, or over the whole vocabulary (its mask column is ignored)."""
    lik = torch.as_tensor(lik, dtype=torch.float64)
    lik = lik[None] if lik.dim() == 2 else lik
    if lik.dim() != 3 or lik.shape[-1] not in (vocab_size - 1, vocab_size):
        raise ValueError(f"likelihood must be [L, V] or [B, L, V] with V = {vocab_size - 1} (tokens "
                         f"without the mask) or {vocab_size}, got shape {tuple(lik.shape)}")
    if not torch.isfinite(lik).all() or (lik < 0).any():
        raise ValueError("likelihood values must be finite and >= 0")
    if lik.shape[-1] == vocab_size - 1:  # insert the mask column
        lik = torch.cat([lik[..., :mask_id], torch.ones_like(lik[..., :1]), lik[..., mask_id:]], -1)
    log_lik = torch.log(lik)
    log_lik[..., mask_id] = 0.0
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[mask_id] = False
    if (log_lik[..., keep] == -torch.inf).all(-1).any():
        raise ValueError("the likelihood rules out every token at some position")
    return log_lik


class LikelihoodTilt:
    """A masked model whose conditionals are tilted by a per-position likelihood:
    ``logits(x)[b, j, v] = model.logits(x)[b, j, v] + log lik[b, j, v]`` (decode normalises them).

    Args:
        model: a masked model (``logits(tokens)``, ``mask_id``, ``vocab_size``).
        likelihood: ``[L, V]`` (every row of the batch) or ``[B, L, V]`` per-row
            ``p(y_j | x_j = v)``; see ``_log_likelihood`` for the vocabulary layout.
    """

    takes_time = False
    shift_logits = False
    supports_kv_cache = False

    def __init__(self, model, likelihood):
        self.model = as_masked_model(model)
        if getattr(self.model, "takes_time", False):
            raise ValueError("LikelihoodTilt needs a time-free masked model")
        self.mask_id, self.vocab_size = int(self.model.mask_id), int(self.model.vocab_size)
        self.log_lik = _log_likelihood(likelihood, self.vocab_size, self.mask_id)  # [B|1, L, V+1]

    def logits(self, tokens: Tensor) -> Tensor:
        out = self.model.logits(tokens)  # [B, L, V+1]
        B, L = tokens.shape
        if self.log_lik.shape[1] != L or self.log_lik.shape[0] not in (1, B):
            raise ValueError(f"the likelihood is for [{self.log_lik.shape[0]}, {self.log_lik.shape[1]}] "
                             f"canvases, got a [{B}, {L}] canvas")
        return out.to(torch.float64) + self.log_lik

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.logits(tokens)


def tilt_normalisers(logp: Tensor, log_lik: Tensor) -> tuple[Tensor, Tensor]:
    """For model log-conditionals ``logp`` ``[B, L, V]`` (normalised) and ``log_lik``
    ``[B|1, L, V]``: the tilted log-law ``[B, L, V]`` and ``log Z_j = log sum_v p(v) lik[j, v]``
    ``[B, L]``."""
    joint = logp + log_lik
    log_z = torch.logsumexp(joint, -1)  # [B, L]
    return joint - log_z[..., None], log_z


def clamped_canvas(model, likelihood) -> Tensor:
    """``[B|1, L]``: the token at positions whose likelihood allows exactly one token (exact
    constraints, inpainting), the mask elsewhere. Decoding from this canvas
    (``decode(..., canvas=)``) conditions the prior on those tokens exactly, with no weights."""
    model = as_masked_model(model)
    mask = int(model.mask_id)
    log_lik = _log_likelihood(likelihood, int(model.vocab_size), mask).clone()  # [B|1, L, V+1]
    log_lik[..., mask] = -torch.inf
    exact = (log_lik > -torch.inf).sum(-1) == 1  # [B|1, L]
    return torch.where(exact, log_lik.argmax(-1), torch.full_like(exact, mask, dtype=torch.long))


class SumPotential:
    """Twisting potentials for the linear-sum observation ``y = sum_i values[x_i] + N(0, sigma^2)``
    (a likelihood that is not per-position): with the masked positions' values replaced by their
    means and variances under the model's conditionals (moment-matched),
    ``G(x_U) = N(y; sum_U values + sum_M mean_j, sigma^2 + Var_M)``; on a complete
    sequence it is the exact likelihood. ``step`` also gives each candidate's look-ahead
    ``G(x_U, x_j = v)`` from the same conditionals (the proposal's tilt; no extra model call).

    Without ``covariance``, ``Var_M = sum_M var_j`` treats the masked tokens as independent
    given ``x_U``: on a sequence model with long-range correlation (a sticky chain) this
    underestimates the spread of the masked sum several-fold, and the look-ahead of revealing
    ``x_j = v`` ignores that the other masked tokens move with it; the twist is overconfident
    and the particles' weights carry the correction (high variance). With ``covariance`` (a
    ``[L, L]`` prior covariance of the token values, ``value_covariance(model, values, L)``)
    the masked values are treated as jointly Gaussian with that covariance, conditioned on the
    revealed positions (``K = C_{MM|U}``): ``Var_M = sum_M var_j * (1'K1 / tr K)`` (the model's
    exact per-position variances, inflated by the Gaussian's correlation factor), and the
    look-ahead adds the regression of the rest's sum on ``x_j``,
    ``beta_j (values[v] - mean_j)`` with ``beta_j = (K1)_{j} / K_jj - 1``, and uses the
    conditional variance of the rest (Schur complement). Either way the SMC target stays
    exactly the posterior (only the twist changes).

    Args:
        values: ``[V]`` the value of each token (mask excluded, in vocabulary order).
        y, sigma: the observation and its noise; ``length``: ``L``.
        covariance: optional ``[L, L]`` symmetric positive-definite prior covariance of
            ``values[x_i]`` (see above); ``None`` keeps the independent moment matching.
        inflate: a defensive factor ``c >= 1`` on the masked tokens' variance in the twist and
            the look-ahead (``sigma^2 + c Var_M``): a flatter, heavier-shouldered twist, so that
            particles in a mode the Gaussian judges unlikely (a sticky prior's masked sum is a
            mixture over hidden regimes, not a Gaussian) survive resampling. It vanishes as the
            tokens are revealed (``Var_M = 0`` on a complete sequence: the exact likelihood), so
            the target stays the posterior; 1 (default) is the plain moment matching.
    """

    def __init__(self, values, y: float, sigma: float, length: int, covariance=None, inflate: float = 1.0):
        if not (float(inflate) >= 1.0 and float(inflate) < float("inf")):
            raise ValueError(f"inflate must be a finite factor >= 1, got {inflate}")
        self.inflate = float(inflate)
        self.values = torch.as_tensor(values, dtype=torch.float64)
        if self.values.dim() != 1 or not torch.isfinite(self.values).all():
            raise ValueError("values must be a finite [V] vector")
        if not sigma > 0 or int(length) < 1:
            raise ValueError(f"need sigma > 0 and length >= 1, got {sigma}, {length}")
        self.y, self.sigma, self.length = float(y), float(sigma), int(length)
        self.precision = None
        if covariance is not None:
            cov = torch.as_tensor(covariance, dtype=torch.float64)
            if cov.shape != (self.length, self.length) or not torch.isfinite(cov).all():
                raise ValueError(f"covariance must be a finite [{self.length}, {self.length}] matrix, "
                                 f"got shape {tuple(cov.shape)}")
            cov = 0.5 * (cov + cov.T)
            jitter = 1e-9 * float(torch.diagonal(cov).abs().max().clamp_min(1.0))
            chol, info = torch.linalg.cholesky_ex(cov + jitter * torch.eye(self.length, dtype=torch.float64))
            if int(info) != 0:
                raise ValueError("covariance must be positive definite")
            self.precision = torch.cholesky_inverse(chol)  # [L, L]

    def _full(self, vocab: int, mask: int) -> Tensor:
        if self.values.numel() != vocab - 1:
            raise ValueError(f"values has {self.values.numel()} entries; the model has {vocab - 1} tokens")
        return torch.cat([self.values[:mask], self.values.new_zeros(1), self.values[mask:]])  # [V+1]

    def _log_normal(self, mean: Tensor, var: Tensor) -> Tensor:
        return -0.5 * (torch.log(2 * torch.pi * var) + (self.y - mean) ** 2 / var)

    def _correlation(self, masked: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For the masked sets ``[N, L]``: the Gaussian correlation factor ``1'K1 / tr K`` ``[N]``
        of the masked values given the revealed ones, the same factor for the rest after
        revealing each ``j`` ``[N, L]``, and the regression coefficient ``beta_j`` ``[N, L]``."""
        m = masked.to(torch.float64)  # [N, L]
        mm = m[:, :, None] * m[:, None, :]
        # the conditional covariance of a Gaussian's block M given U is the inverse of the
        # precision's M block; identity rows for the revealed positions keep the batch invertible
        K = torch.linalg.inv(self.precision * mm + torch.diag_embed(1 - m)) * mm  # [N, L, L]
        k1 = K.sum(-1)  # [N, L]
        kjj = torch.diagonal(K, dim1=-2, dim2=-1)  # [N, L]
        tot, tr = k1.sum(-1), kjj.sum(-1)  # [N]
        safe = kjj.clamp_min(1e-300)
        tot_j = tot[:, None] - 2 * k1 + kjj - (k1 - kjj) ** 2 / safe  # 1'K'1 of the rest given x_j
        tr_j = tr[:, None] - kjj
        ones = torch.ones_like(tot)
        factor = torch.where(tr > 1e-12, tot / tr.clamp_min(1e-300), ones).clamp_min(1.0)
        factor_j = torch.where(tr_j > 1e-12, tot_j / tr_j.clamp_min(1e-300), ones[:, None]).clamp_min(1.0)
        beta = torch.where(masked, (k1 / safe - 1.0).clamp_min(0.0), 0.0)
        return factor, factor_j, beta

    def step(self, tokens: Tensor, probs: Tensor, mask: int) -> tuple[Tensor, Tensor]:
        """``log G`` ``[N]`` of the canvas and the look-ahead ``log G`` per candidate ``[N, L, V+1]``."""
        a = self._full(probs.shape[-1], mask)  # [V+1]
        masked = tokens == mask  # [N, L]
        known = torch.where(masked, 0.0, a[tokens]).sum(-1)  # [N]
        mu = probs @ a  # [N, L]
        var = (probs @ (a * a) - mu * mu).clamp_min(0)
        mu, var = torch.where(masked, mu, 0.0), torch.where(masked, var, 0.0)
        M, Vr = mu.sum(-1), var.sum(-1)  # [N]
        if self.precision is None:
            factor, factor_j, beta = torch.ones_like(M), torch.ones_like(mu), torch.zeros_like(mu)
        else:
            factor, factor_j, beta = self._correlation(masked)
        c = self.inflate
        log_g = self._log_normal(known + M, self.sigma ** 2 + c * Vr * factor)  # c = 1: bitwise Vr * factor
        shift = (1.0 + beta)[..., None] * (a - mu[..., None])  # [N, L, V+1]: x_j = v and the rest's regression
        mean_v = (known + M)[:, None, None] + shift
        rest = (Vr[:, None] - var) * factor_j  # [N, L]: the rest's variance after revealing j
        var_v = self.sigma ** 2 + (c * rest)[..., None]
        return log_g, self._log_normal(mean_v, var_v.clamp_min(self.sigma ** 2))

    def leave_one_out_likelihood(self, tokens: Tensor) -> Tensor:
        """``p(y | x_{-j}, x_j = v)`` ``[N, L, V]`` of complete sequences ``[N, L]`` (mask id last),
        up to a factor per position (scaled so its largest entry is 1): the per-sample likelihood
        with which ``rao_blackwell_marginals`` gives this observation's full conditionals."""
        a = self.values
        rest = a[tokens].sum(-1, keepdim=True) - a[tokens]  # [N, L]
        log = self._log_normal(rest[..., None] + a, torch.tensor(self.sigma ** 2, dtype=torch.float64))
        return (log - log.amax(-1, keepdim=True)).exp()

    def final(self, tokens: Tensor, vocab: int, mask: int) -> Tensor:
        """The exact ``log p(y | x)`` ``[N]`` of complete sequences."""
        a = self._full(vocab, mask)
        return self._log_normal(a[tokens].sum(-1), torch.tensor(self.sigma ** 2, dtype=torch.float64))


@torch.no_grad()
def value_covariance(model, values, length: int) -> Tensor:
    """The prior covariance ``[L, L]`` of token values ``values[x_i]`` under a masked model,
    from its conditionals with one token revealed (two batched calls, no sampling):
    ``Cov(a_j, a_k) = sum_v p(x_j = v) (a_v - m_j) (E[a_k | x_j = v] - m_k)`` with ``p(x_j)``
    and ``m`` from the all-mask canvas and ``E[a_k | x_j = v]`` from the ``L V`` canvases
    holding ``v`` at ``j``; diagonal ``Var(a_j)``; symmetrised (a learned model's two
    orderings differ). Exact for an exact model; the input of ``SumPotential(covariance=)``."""
    model = as_masked_model(model)
    mask, vocab = int(model.mask_id), int(model.vocab_size)
    a = torch.as_tensor(values, dtype=torch.float64)
    if a.shape != (vocab - 1,):
        raise ValueError(f"values must be [{vocab - 1}] (one per token without the mask), got {tuple(a.shape)}")
    L = int(length)
    a_full = torch.cat([a[:mask], a.new_zeros(1), a[mask:]])  # [V+1]
    keep = torch.arange(vocab) != mask
    tok = torch.arange(vocab)[keep]  # [V]
    p0 = filter_logits(model.logits(torch.full((1, L), mask, dtype=torch.long)), mask)[0].exp()  # [L, V+1]
    m = p0 @ a_full  # [L]
    var = p0 @ (a_full * a_full) - m * m
    canv = torch.full((L, tok.numel(), L), mask, dtype=torch.long)  # [L(j), V(v), L]
    canv[torch.arange(L)[:, None], torch.arange(tok.numel())[None, :], torch.arange(L)[:, None]] = tok[None, :]
    pc = filter_logits(model.logits(canv.reshape(-1, L)), mask).exp().reshape(L, tok.numel(), L, vocab)
    cond_mean = pc @ a_full  # [L(j), V, L(k)]
    pj = p0[:, keep]  # [L, V]
    cov = torch.einsum("jv,jv,jvk->jk", pj, a[None, :] - m[:, None], cond_mean - m[None, None, :])
    cov = 0.5 * (cov + cov.T)
    cov[torch.arange(L), torch.arange(L)] = var.clamp_min(0)
    return cov


@torch.no_grad()
def posterior_smc(model, likelihood, n_particles: int, seed: int = 0, ess_threshold: float = 0.5,
                  final_resample: bool = False, clamp: bool = True, potential: SumPotential | None = None) -> dict:
    """SMC posterior sampling for one observation (see the module docstring).

    Args:
        model: a masked model; ``likelihood``: ``[L, V]`` per-position likelihood of the one
            observation, or ``None`` (no per-position part; then ``potential`` gives ``L``).
        n_particles: particles ``N``; ``seed``: per-particle streams (``diffinfer.rng``) and the
            resampling stream; ``ess_threshold``: resample when ESS < ``ess_threshold * N``
            (1.0: every step, 0: never, plain sequential importance sampling).
        final_resample: end with one resampling, so the returned weights are uniform.
        clamp: write positions whose likelihood allows one token into the canvas first
            (``clamped_canvas``); ``log_evidence`` then estimates ``log p(y) - log p(clamped tokens)``
            (the masked model has no direct ``p(clamped tokens)``).
        potential: a further observation that does not factorise over positions (``SumPotential``):
            the targets become ``gamma_s = p(x_U) prod_U lik G_s(x_U)``, the proposal is also tilted
            by the potential's look-ahead ``Ghat_s(x_j)``, and the weight of a step is
            ``Z_s G_{s+1} / (G_s Ghat_s(x_j))`` (``G_{s+1}`` from the next call's conditionals; the
            last is the exact likelihood), so the target is still exactly the posterior.
    Returns:
        dict with ``tokens`` ``[N, L]``, ``log_weights`` ``[N]`` (self-normalised use:
        ``softmax(log_weights)``), ``log_evidence`` (the SMC estimate of ``log p(y)``, unbiased
        in ``p(y)``), ``nfe`` (batched model calls, one per decoded token), ``resampled`` (steps).
    """
    from ..scaling.smc import effective_sample_size, systematic_resample  # lazy: scaling imports mdm

    model = as_masked_model(model)
    mask, vocab = int(model.mask_id), int(model.vocab_size)
    if likelihood is None:
        if potential is None:
            raise ValueError("give a likelihood, a potential, or both")
        likelihood = torch.ones(potential.length, vocab - 1, dtype=torch.float64)
        clamp = False
    log_lik = _log_likelihood(likelihood, vocab, mask)  # [1, L, V+1]
    if log_lik.shape[0] != 1:
        raise ValueError("posterior_smc takes one observation: likelihood [L, V]")
    if int(n_particles) < 1 or not 0 <= ess_threshold <= 1:
        raise ValueError(f"need n_particles >= 1 and 0 <= ess_threshold <= 1, got {n_particles}, {ess_threshold}")
    n, L = int(n_particles), log_lik.shape[1]
    if potential is not None and potential.length != L:
        raise ValueError(f"the potential is for length {potential.length}, the likelihood for {L}")
    tokens = torch.full((n, L), mask, dtype=torch.long)
    if clamp:
        tokens = clamped_canvas(model, likelihood).expand(n, L).clone()
    clamped = tokens[0] != mask  # [L]
    n_steps = int((tokens == mask).sum(-1)[0])
    rng = SampleRNG.from_seed(seed, batch=n)
    gen = torch.Generator().manual_seed(int(seed) ^ 0x5EC)
    log_w = torch.zeros(n, dtype=torch.float64)
    log_evidence = float(log_lik[0, clamped, tokens[0, clamped]].sum())  # the clamped tokens' likelihood
    resampled, one = [], torch.ones(n, dtype=torch.long)
    zeros = torch.zeros(n, dtype=torch.float64)
    g_prev, g_hat = zeros, zeros  # log G_{s-1}(x), log Ghat_{s-1}(x_j) of the token drawn last

    def reweight(inc: Tensor) -> None:
        nonlocal log_w, log_evidence
        if torch.isnan(inc).any():
            raise ValueError("NaN in the SMC weights (the model returned NaN?)")
        log_evidence += float(torch.logsumexp(log_w + inc, 0) - torch.logsumexp(log_w, 0))
        log_w = log_w + inc
        if not torch.isfinite(log_w).any():
            raise ValueError("every particle has zero weight: the observation is impossible under the model")

    for step in range(n_steps):
        logp = filter_logits(model.logits(tokens), mask)  # [N, L, V+1]
        tilt = log_lik
        inc = zeros
        if potential is not None:
            log_g, look = potential.step(tokens, logp.exp(), mask)  # [N], [N, L, V+1]
            inc = log_g - g_prev - g_hat
            tilt = log_lik + look
            g_prev = log_g
        tilted, log_z = tilt_normalisers(logp, tilt)
        masked = tokens == mask
        order = rng.rand((L,), dtype=torch.float64)  # random decoding order, per particle
        commit = top_k_mask(order, masked, one)  # [N, L], one position per row
        reweight(inc + torch.where(commit, log_z, torch.zeros_like(log_z)).sum(-1))  # + log Z_j
        if effective_sample_size(log_w) < ess_threshold * n:
            idx = systematic_resample(log_w, n, gen)  # [N]
            tokens, tilted, commit, g_prev = tokens[idx], tilted[idx], commit[idx], g_prev[idx]
            if potential is not None:
                look = look[idx]
            rng = rng.select(idx).fork(step + 1)
            log_w = torch.zeros(n, dtype=torch.float64)
            resampled.append(step)
        x0 = propose_tokens(tilted, rng, greedy=False)  # [N, L]
        tokens = torch.where(commit, x0, tokens)
        if potential is not None:
            g_hat = torch.where(commit, look.gather(-1, x0[..., None])[..., 0], 0.0).sum(-1)  # [N]
    if potential is not None:
        reweight(potential.final(tokens, vocab, mask) - g_prev - g_hat)
    if final_resample:
        idx = systematic_resample(log_w, n, gen)
        tokens, log_w = tokens[idx], torch.zeros(n, dtype=torch.float64)
        resampled.append(n_steps)
    return {"tokens": tokens, "log_weights": log_w, "log_evidence": log_evidence, "nfe": n_steps,
            "resampled": resampled}


def weighted_marginals(tokens: Tensor, n_states: int, log_weights: Tensor | None = None) -> Tensor:
    """Per-position token law ``[L, V]`` of samples ``[N, L]`` (self-normalised weights)."""
    hot = torch.nn.functional.one_hot(tokens, n_states).double()  # [N, L, V]
    if log_weights is None:
        return hot.mean(0)
    w = torch.softmax(log_weights.double(), 0)
    return (w[:, None, None] * hot).sum(0)


def marginal_tv(marginals: Tensor, exact: Tensor) -> Tensor:
    """Total variation per position ``[L]`` between two ``[L, V]`` per-position laws."""
    return 0.5 * (marginals - exact).abs().sum(-1)


def _full_conditional(model, tokens: Tensor, j: int, log_lik: Tensor) -> Tensor:
    """``log p(x_j | x_{-j}, y)`` ``[N, V+1]``: the model's conditional with only ``j`` masked,
    tilted by ``log_lik`` ``[N|1, V+1]`` and normalised (one batched model call)."""
    mask = int(model.mask_id)
    masked = tokens.clone()
    masked[:, j] = mask
    logp = filter_logits(model.logits(masked), mask)[:, j]  # [N, V+1]
    law, _ = tilt_normalisers(logp, log_lik)
    return law


@torch.no_grad()
def rao_blackwell_marginals(model, tokens: Tensor, likelihood, log_weights: Tensor | None = None) -> Tensor:
    """Per-position posterior marginals ``[L, V]`` from samples ``tokens`` ``[N, L]`` (weighted
    by ``log_weights``) with each position's one-hot replaced by its exact conditional
    ``p(x_j | x_{-j}, y) = p(x_j | x_{-j}) lik[j, x_j] / Z`` (the model's conditional with only
    ``j`` masked, tilted): a Rao-Blackwellised estimator of the same marginals, with lower
    variance when the conditionals are exact. ``likelihood``: ``[L, V]``, or per sample
    ``[N, L, V]`` for an observation that does not factorise (the likelihood of each value at
    ``j`` with the rest of that sample fixed, ``SumPotential.leave_one_out_likelihood``). Costs
    one batched model call per position (``L`` NFE); ``V`` counts the tokens other than the mask
    (mask id last)."""
    model = as_masked_model(model)
    mask, vocab = int(model.mask_id), int(model.vocab_size)
    log_lik = _log_likelihood(likelihood, vocab, mask)
    n, L = tokens.shape
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if log_weights is None \
        else torch.softmax(log_weights.double(), 0)
    out = torch.zeros(L, vocab, dtype=torch.float64)
    for j in range(L):
        law = _full_conditional(model, tokens, j, log_lik[:, j])  # [N, V+1]
        out[j] = (w[:, None] * law.exp()).sum(0)
    keep = torch.arange(vocab) != mask
    return out[:, keep]


@torch.no_grad()
def posterior_gibbs(model, tokens: Tensor, likelihood=None, sweeps: int = 1, seed: int = 0,
                    potential: SumPotential | None = None) -> Tensor:
    """``sweeps`` systematic-scan Gibbs sweeps on complete sequences ``tokens`` ``[N, L]``:
    each position in turn redrawn from its exact full conditional ``p(x_j | x_{-j}, y)``
    (the model's conditional with only ``j`` masked, times the per-position likelihood and the
    potential's leave-one-out likelihood given the rest of that sequence). The kernel leaves the
    posterior invariant, so weighted SMC particles stay properly weighted (keep their
    weights): the *move* of resample-move SMC (Gilks & Berzuini 2001), run after the last step,
    which spreads the particles the resampling duplicated. ``L`` batched model calls a sweep."""
    model = as_masked_model(model)
    mask, vocab = int(model.mask_id), int(model.vocab_size)
    tokens = torch.as_tensor(tokens).long()
    if tokens.dim() != 2 or (tokens == mask).any() or (tokens < 0).any() or (tokens >= vocab).any():
        raise ValueError("posterior_gibbs needs complete sequences [N, L] of token ids (no mask)")
    n, L = tokens.shape
    if likelihood is None:
        likelihood = torch.ones(L, vocab - 1, dtype=torch.float64)
    log_lik = _log_likelihood(likelihood, vocab, mask)  # [1|N, L, V+1]
    if potential is not None and potential.length != L:
        raise ValueError(f"the potential is for length {potential.length}, the tokens have length {L}")
    if int(sweeps) < 0:
        raise ValueError(f"sweeps must be >= 0, got {sweeps}")
    tokens = tokens.clone()
    rng = SampleRNG.from_seed(seed, batch=n)
    for sweep in range(int(sweeps)):
        for j in range(L):
            lik_j = log_lik[:, j]  # [1|N, V+1]
            if potential is not None:
                loo = _log_likelihood(potential.leave_one_out_likelihood(tokens)[:, j][:, None], vocab, mask)
                lik_j = lik_j + loo[:, 0]
            law = _full_conditional(model, tokens, j, lik_j)  # [N, V+1]
            tokens[:, j] = propose_tokens(law[:, None], rng.fork(sweep * L + j), greedy=False)[:, 0]
    return tokens
